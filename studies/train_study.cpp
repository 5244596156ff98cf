// Study "train": the reference trainer on the config's data; train loss per step, test accuracy per epoch.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "numerics/error.hpp"

#include "study.hpp"

namespace lowmem {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

template <class T>
void train(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress,
           const StudyOptions& options) {
  const TrainSpec& spec = config.train;
  MemoryLedger ledger;
  ledger.record_timeline(options.timeline);  // the trainer stops it when the second step starts
  Trainer<T> trainer(config, ledger);
  const std::int64_t total_steps = trainer.total_steps(data.train);
  record.scalars["parameters"] = static_cast<double>(trainer.model().parameter_count());

  std::vector<double> steps, losses, rates, step_seconds, epochs, test_steps, accuracies, test_losses;
  record.status = "complete";
  std::int64_t step = 0;  // the next step to take
  // A run in flight is the trainer's state, the next step and the curves so far.
  const auto archive = [&](StateArchive& a) {
    trainer.archive(a);
    a.value("study/next_step", step);
    for (auto [name, curve] : {std::pair{"step", &steps}, {"train_loss", &losses}, {"learning_rate", &rates},
                               {"step_seconds", &step_seconds}, {"epoch", &epochs}, {"test_step", &test_steps},
                               {"test_accuracy", &accuracies}, {"test_loss", &test_losses}})
      a.values(std::string("study/curves/") + name, *curve);
  };
  if (options.resume_from) {
    StateArchive load(StateArchive::Mode::load);
    load.blocks = options.resume_from->blocks;
    archive(load);
  }
  const std::int64_t per_epoch = std::max<std::int64_t>(1, data.train.count / spec.batch);
  const int epochs_to_run = trainer.epochs_to_run(data.train);
  // A resumed run goes on in the epoch of its last step (whose evaluation may still be due).
  for (int epoch = static_cast<int>(step == 0 ? 0 : (step - 1) / per_epoch); epoch < epochs_to_run && step < total_steps; ++epoch) {
    step = trainer.train_epoch(data.train, epoch, step, total_steps, [&](std::int64_t s, double loss, double lr, double seconds) {
      step_seconds.push_back(seconds);
      steps.push_back(static_cast<double>(s));
      losses.push_back(loss);
      rates.push_back(lr);
      if (!std::isfinite(loss) || (spec.diverge_loss > 0 && loss > spec.diverge_loss)) {
        record.status = "diverged";
        char value[64];
        std::snprintf(value, sizeof value, "%.6g", loss);
        record.message = "training loss became " + std::string(value) + " at step " + std::to_string(s) + " (curves/step)" +
                         (std::isfinite(loss) ? " (above train.diverge_loss)" : "");
        return false;
      }
      if (options.save_state && spec.checkpoint_every > 0 && (s + 1) % spec.checkpoint_every == 0 && s + 1 < total_steps) {
        step = s + 1;
        StateArchive save(StateArchive::Mode::save);
        archive(save);
        options.save_state(save);
      }
      if (progress) {  // every step: the harness throttles what it prints, and stops here on Ctrl-C
        // Counts, not indices: "3/100 steps done" after curves/step 2 (results and messages give step indices).
        char line[160];
        std::snprintf(line, sizeof line, "epoch %d/%d, %lld/%lld steps done, loss %.4f", epoch + 1, epochs_to_run,
                      static_cast<long long>(s + 1), static_cast<long long>(total_steps), loss);
        progress(line);
      }
      return true;
    });
    if (record.status != "complete") break;
    const auto evaluation = trainer.evaluate(data.test, spec.eval_batch);
    epochs.push_back(epoch + 1);
    test_steps.push_back(static_cast<double>(step - 1));  // the last step before this evaluation
    accuracies.push_back(evaluation.accuracy);
    test_losses.push_back(evaluation.loss);
  }

  record.arrays["curves/step"] = {steps, {}};
  record.arrays["curves/train_loss"] = {losses, {}};
  record.arrays["curves/learning_rate"] = {rates, {}};
  record.arrays["curves/step_seconds"] = {step_seconds, {}};
  record.arrays["curves/epoch"] = {epochs, {}};
  record.arrays["curves/test_step"] = {test_steps, {}};  // where each epoch's evaluation falls on curves/step
  record.arrays["curves/test_accuracy"] = {accuracies, {}};
  record.arrays["curves/test_loss"] = {test_losses, {}};
  record.scalars["steps"] = static_cast<double>(steps.size());
  record.scalars["step_seconds"] = median(step_seconds);
  // The mean of the last (up to) 20 steps: one step's loss is too noisy to compare precisions by.
  const std::size_t tail = std::min<std::size_t>(20, losses.size());
  double sum = 0;
  for (std::size_t i = losses.size() - tail; i < losses.size(); ++i) sum += losses[i];
  record.scalars["final_train_loss"] = tail ? sum / static_cast<double>(tail) : NAN;
  record.scalars["test_accuracy"] = accuracies.empty() ? NAN : accuracies.back();
  record.scalars["test_loss"] = test_losses.empty() ? NAN : test_losses.back();
  // A text model's validation loss in bits per token (character or byte), the unit language models are compared in.
  if (config.model.tokens) record.scalars["val_bits_per_char"] = record.scalars["test_loss"] / std::log(2.0);
  record.scalars["recomputed_evaluations_per_step"] = static_cast<double>(trainer.recomputed_evaluations());
  for (const auto& [name, value] : trainer.technique_report()) record.scalars[name] = value;
  record_memory(ledger, record);
  if (options.timeline) record_timeline(ledger, record);
  if (config.save_weights) {
    // As the PyTorch twin's state_dict: "weights/3/conv1/weight" is "3.conv1.weight". With a check for whoever
    // loads them: the first test batch as the model takes it, and the logits it gives in evaluation mode.
    for (auto& [name, array] : model_tensors(trainer.model(), "weights", 0, true).arrays) record.arrays[name] = std::move(array);
    const Tensor<T> x = trainer.first_batch(data.test);
    record.arrays["weights_check/input"] = widen(x);
    record.arrays["weights_check/logits"] = widen(trainer.predict(x));
  }
}

}  // namespace

void run_train_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress,
                     const StudyOptions& options) {
  dispatch_precision(config.precision, [&]<class T>() { train<T>(config, data, record, progress, options); });
}

}  // namespace lowmem
