#include "plan.hpp"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "study.hpp"
#include "training/trainer.hpp"

namespace lowmem {

namespace {

// One dry step of the run's study, in its own precision: the trainer is built and the step is taken with tensors
// that have sizes but no values (MemoryLedger::set_dry_run), so the ledger sees every allocation a real step
// makes, in the same order, at no arithmetic cost.
template <class T> MemoryLedger dry_step(const RunConfig& run, std::int64_t& recomputed) {
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  Trainer<T> trainer(run, ledger);
  const Dataset none;  // a dry batch reads no data
  Rng rng(0);
  std::vector<std::int32_t> labels;
  if (run.study == "train") {
    {
      const Tensor<T> x = trainer.make_batch(none, nullptr, run.train.batch, Augment{}, rng, labels);
      trainer.train_step(x, labels, run.train.optimizer.lr);
    }  // a step's batch is freed before the evaluation, as in the train study
    const Tensor<T> x = trainer.make_batch(none, nullptr, run.train.eval_batch, Augment{}, rng, labels);
    trainer.evaluate_batch(x, labels);
  } else {
    const Tensor<T> x = trainer.make_batch(none, nullptr, run.train.batch, Augment{}, rng, labels);
    Tensor<T> logits;  // the gradient study keeps the logits for its dump, through backward
    trainer.forward_backward(x, labels, &logits);
  }
  recomputed = trainer.recomputed_evaluations();
  return ledger;
}

}  // namespace

MemoryPrediction predict_memory(const RunConfig& run) {
  MemoryPrediction p;
  const MemoryLedger ledger =
      run.study == "reconstruction"
          ? reconstruction_memory(run)
          : dispatch_precision(run.precision, [&]<class T>() { return dry_step<T>(run, p.recomputed_evaluations); });
  p.weights = ledger.peak(MemoryCategory::weights);
  p.gradients = ledger.peak(MemoryCategory::gradients);
  p.optimizer_state = ledger.peak(MemoryCategory::optimizer_state);
  p.saved_activations = ledger.peak(MemoryCategory::saved_activations);
  p.workspace = ledger.peak(MemoryCategory::workspace);
  p.peak = ledger.peak_total();
  return p;
}

std::string plan_table(const std::vector<PlannedRun>& runs) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-4s %-16s %-8s %-5s %-7s %6s %12s %12s %12s %12s %12s %12s %10s\n", "#", "run_id",
                "study", "prec", "model", "batch", "weights", "gradients", "optimizer", "saved_act", "workspace", "peak",
                "recompute");
  out += line;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const RunConfig& r = runs[i].parsed;
    const MemoryPrediction p = predict_memory(r);
    std::snprintf(line, sizeof line, "%-4zu %-16s %-8s %-5s %-7s %6d %12zu %12zu %12zu %12zu %12zu %12zu %10lld\n",
                  i + 1, runs[i].id.c_str(), r.study.c_str(), to_string(r.precision).c_str(), r.model.arch.c_str(),
                  r.train.batch, p.weights, p.gradients, p.optimizer_state, p.saved_activations, p.workspace, p.peak,
                  static_cast<long long>(p.recomputed_evaluations));
    out += line;
  }
  out += "memory in bytes: peak of each category and of the total over one step (train: and one evaluation batch);\n"
         "recompute: forward layer evaluations per step beyond one per layer (checkpointing)\n";
  return out;
}

std::string plan_json(const std::vector<PlannedRun>& runs) {
  nlohmann::json list = nlohmann::json::array();
  for (const PlannedRun& run : runs) {
    const MemoryPrediction p = predict_memory(run.parsed);
    list.push_back({{"run_id", run.id},
                    {"study", run.parsed.study},
                    {"precision", to_string(run.parsed.precision)},
                    {"config", run.config},
                    {"predicted_peak_bytes", p.peak},
                    {"recomputed_evaluations_per_step", p.recomputed_evaluations},
                    {"predicted_bytes",
                     {{"weights", p.weights},
                      {"gradients", p.gradients},
                      {"optimizer_state", p.optimizer_state},
                      {"saved_activations", p.saved_activations},
                      {"workspace", p.workspace}}}});
  }
  return list.dump(2) + "\n";
}

}  // namespace lowmem
