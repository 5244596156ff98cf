// Study "train": the reference trainer on the config's data; train loss per step, test accuracy per epoch.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "io/error.hpp"

#include "study.hpp"

namespace lowmem {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

template <class T>
void train(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress) {
  const TrainSpec& spec = config.train;
  const std::int64_t batch = std::min<std::int64_t>(spec.batch, data.train.count);
  if (batch < 1) throw Error("data: the training set is empty");
  const std::int64_t steps_per_epoch = data.train.count / batch;  // the last incomplete batch is dropped
  std::int64_t total_steps = steps_per_epoch * spec.epochs;
  if (spec.steps > 0) total_steps = std::min(total_steps, spec.steps);

  MemoryLedger ledger;
  Trainer<T> trainer(config, ledger);
  record.scalars["parameters"] = static_cast<double>(trainer.model().parameter_count());

  std::vector<double> steps, losses, rates, step_seconds, epochs, accuracies, test_losses;
  record.status = "complete";
  std::int64_t step = 0;
  std::vector<std::int32_t> labels;
  for (int epoch = 0; epoch < spec.epochs && step < total_steps && record.status == "complete"; ++epoch) {
    const std::vector<std::int64_t> order = epoch_order(data.train.count, config.seed, epoch);
    Rng augment_rng(config.seed, 2000 + static_cast<std::uint64_t>(epoch));
    for (std::int64_t b = 0; b < steps_per_epoch && step < total_steps; ++b, ++step) {
      const auto t0 = std::chrono::steady_clock::now();
      const double lr = learning_rate(spec.optimizer, spec.schedule, step, steps_per_epoch, total_steps);
      const Tensor<T> x = trainer.make_batch(data.train, order.data() + b * batch, batch, config.data.augment,
                                             augment_rng, labels);
      const double loss = to_double(trainer.train_step(x, labels, lr));
      step_seconds.push_back(seconds_since(t0));
      steps.push_back(static_cast<double>(step));
      losses.push_back(loss);
      rates.push_back(lr);
      if (!std::isfinite(loss) || (spec.diverge_loss > 0 && loss > spec.diverge_loss)) {
        record.status = "diverged";
        char value[64];
        std::snprintf(value, sizeof value, "%.6g", loss);
        record.message = "training loss became " + std::string(value) + " at step " + std::to_string(step) +
                         (std::isfinite(loss) ? " (above train.diverge_loss)" : "");
        ++step;
        break;
      }
      if (progress && (step % 20 == 0 || step + 1 == total_steps)) {
        char line[160];
        std::snprintf(line, sizeof line, "epoch %d/%d step %lld/%lld loss %.4f", epoch + 1, spec.epochs,
                      static_cast<long long>(step + 1), static_cast<long long>(total_steps), loss);
        progress(line);
      }
    }
    if (record.status != "complete") break;
    const auto evaluation = trainer.evaluate(data.test, spec.eval_batch);
    epochs.push_back(epoch + 1);
    accuracies.push_back(evaluation.accuracy);
    test_losses.push_back(evaluation.loss);
  }

  record.arrays["curves/step"] = {steps, {}};
  record.arrays["curves/train_loss"] = {losses, {}};
  record.arrays["curves/learning_rate"] = {rates, {}};
  record.arrays["curves/step_seconds"] = {step_seconds, {}};
  record.arrays["curves/epoch"] = {epochs, {}};
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
  record_memory(ledger, record);
}

}  // namespace

void run_train_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress) {
  dispatch_precision(config.precision, [&]<class T>() { train<T>(config, data, record, progress); });
}

}  // namespace lowmem
