#include "technique_step.hpp"

#include <cmath>
#include <nlohmann/json.hpp>

#include "layers/batchnorm.hpp"
#include "training/trainer.hpp"

namespace lowmem::testing {

TechniqueStep technique_step(const nlohmann::json& config, std::uint64_t seed) {
  const RunConfig run = parse_run_config(config, "test");
  MemoryLedger ledger;
  Trainer<double> trainer(run, ledger);
  const index_t n = run.train.batch;
  Tensor<double> x = trainer.empty_batch(n);
  Rng rng(seed);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  std::vector<std::int32_t> labels;
  for (index_t i = 0; i < n; ++i) labels.push_back(static_cast<std::int32_t>(i % run.model.classes));
  TechniqueStep s;
  Tensor<double> logits;
  s.loss = trainer.forward_backward(x, labels, &logits);
  for (Param<double>* p : trainer.model().params())
    s.gradients.insert(s.gradients.end(), p->grad.data(), p->grad.data() + p->grad.numel());
  s.logits.assign(logits.data(), logits.data() + logits.numel());
  s.saved_peak = ledger.peak(MemoryCategory::saved_activations);
  s.peak = ledger.peak_total();
  return s;
}

void collect_running_statistics(Layer<double>& layer, std::vector<double>& out) {
  if (auto* bn = dynamic_cast<BatchNorm<double>*>(&layer))
    for (const Tensor<double>* t : {&bn->running_mean(), &bn->running_var()})
      out.insert(out.end(), t->data(), t->data() + t->numel());
  for (auto& [name, child] : layer.children()) collect_running_statistics(*child, out);
}

double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]), norm += b[i] * b[i];
  return std::sqrt(diff / norm);
}

}  // namespace lowmem::testing
