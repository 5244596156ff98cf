// Microbatching with gradient accumulation: with batch-independent layers the k slices' gradients add up to the
// whole batch's (to rounding), saved-activation memory falls with k, and a count that does not divide the batch is
// refused before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "io/error.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

nlohmann::json config_with(const nlohmann::json& technique) {
  return {{"precision", "f64"},
          {"model", {{"arch", "cnn"}, {"channels", {6, 6}}, {"batchnorm", false}, {"input", {1, 8, 8}}, {"classes", 4}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"classes", 4}}}}},
          {"train", {{"batch", 16}, {"optimizer", {{"lr", 0.1}}}}}};
}

struct Step {
  double loss = 0;
  std::vector<double> gradients, logits;
  std::size_t saved_peak = 0;
};

Step step(const nlohmann::json& technique) {
  const RunConfig run = parse_run_config(config_with(technique), "test");
  MemoryLedger ledger;
  Trainer<double> trainer(run, ledger);
  Tensor<double> x = trainer.empty_batch(16);
  Rng rng(51);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  std::vector<std::int32_t> labels;
  for (int i = 0; i < 16; ++i) labels.push_back(i % 4);
  Step s;
  Tensor<double> logits;
  s.loss = trainer.forward_backward(x, labels, &logits);
  for (Param<double>* p : trainer.model().params()) s.gradients.insert(s.gradients.end(), p->grad.data(), p->grad.data() + p->grad.numel());
  s.logits.assign(logits.data(), logits.data() + logits.numel());
  s.saved_peak = ledger.peak(MemoryCategory::saved_activations);
  return s;
}

double relative(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]), norm += b[i] * b[i];
  return std::sqrt(diff / norm);
}

TEST(Microbatch, SlicesAddUpToTheWholeBatchGradientAndKeepLess) {
  const Step whole = step({{"type", "store_all"}});
  std::size_t previous = whole.saved_peak;
  for (int count : {2, 4, 16}) {
    const Step sliced = step({{"type", "microbatch"}, {"count", count}});
    EXPECT_LT(relative(sliced.gradients, whole.gradients), 1e-14) << count;
    EXPECT_NEAR(sliced.loss, whole.loss, 1e-15 * std::fabs(whole.loss)) << count;
    // Each row's forward is the same arithmetic, up to how the matrix product blocks a smaller batch.
    EXPECT_LT(relative(sliced.logits, whole.logits), 1e-15) << count;
    EXPECT_LT(sliced.saved_peak, previous) << count;
    previous = sliced.saved_peak;
  }
}

TEST(Microbatch, ACountThatDoesNotDivideTheBatchIsRefused) {
  try {
    parse_run_config(config_with({{"type", "microbatch"}, {"count", 3}}), "cfg.json");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: /technique"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("count 3 does not divide train.batch 16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowmem
