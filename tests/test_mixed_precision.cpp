// Mixed precision: a 16-bit model with f32 master weights and loss scaling. An injected overflow is survived by
// lowering the scale and skipping steps, never by writing NaN into a weight; the masters are counted in the ledger.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "plan.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

nlohmann::json config_with(const nlohmann::json& technique, const std::string& precision = "f32") {
  return {{"precision", precision},
          {"model", {{"arch", "cnn"}, {"channels", {4, 4}}, {"input", {1, 8, 8}}, {"classes", 4}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"classes", 4}}}}},
          {"train", {{"batch", 8}, {"optimizer", {{"lr", 0.05}, {"momentum", 0.9}}}}}};
}

template <class T> void recovers_from_an_injected_overflow(const std::string& compute) {
  const RunConfig run = parse_run_config(config_with({{"type", "mixed_precision"}, {"compute", compute}}), "test");
  ASSERT_EQ(run.precision, precision_of<T>());
  MemoryLedger ledger;
  Trainer<T> trainer(run, ledger);
  Tensor<T> x = trainer.empty_batch(8);
  Rng rng(61);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = round_to<T>(rng.normal());
  const std::vector<std::int32_t> labels = {0, 1, 2, 3, 0, 1, 2, 3};
  const double injected = compute == "f16" ? 1e30 : 1e60;  // far above what the format can hold times a gradient
  trainer.set_loss_scale(injected);
  const std::vector<T> before(trainer.model().params()[0]->value.data(),
                              trainer.model().params()[0]->value.data() + trainer.model().params()[0]->value.numel());
  std::int64_t applied = 0;  // steps whose gradients were finite and reached the masters
  for (int i = 0; i < 400 && applied < 5; ++i) {
    const std::int64_t skipped = trainer.skipped_steps();
    trainer.train_step(x, labels, 0.05);
    applied += trainer.skipped_steps() == skipped;
  }
  EXPECT_GE(trainer.skipped_steps(), 1) << compute << ": the overflow was not detected";
  EXPECT_EQ(applied, 5) << compute << ": the scale never came down far enough";
  EXPECT_LT(trainer.loss_scale(), injected) << compute;
  for (Param<T>* p : trainer.model().params())
    for (index_t i = 0; i < p->value.numel(); ++i) ASSERT_TRUE(is_finite(p->value[i])) << compute << " " << p->name;
  bool changed = false;
  for (std::size_t i = 0; i < before.size(); ++i) changed = changed || !(before[i] == trainer.model().params()[0]->value[i]);
  EXPECT_TRUE(changed) << compute << ": the applied steps must move the weights";
  std::printf("    %s: injected scale %.0e, %lld steps skipped, scale now %.3g\n", compute.c_str(), injected,
              static_cast<long long>(trainer.skipped_steps()), trainer.loss_scale());
}

TEST(MixedPrecision, RecoversFromAnInjectedOverflowWithoutANaNInTheWeights) {
  recovers_from_an_injected_overflow<f16>("f16");
  recovers_from_an_injected_overflow<bf16>("bf16");
}

TEST(MixedPrecision, MastersAreCountedInTheLedger) {
  const nlohmann::json mixed = config_with({{"type", "mixed_precision"}, {"compute", "f16"}});
  const RunConfig pure16 = parse_run_config(config_with({{"type", "store_all"}}, "f16"), "test");
  const RunConfig masters = parse_run_config(mixed, "test");
  const MemoryPrediction a = predict_memory(pure16), b = predict_memory(masters);
  // f16 weights (2 bytes) plus f32 masters (4 bytes); f16 gradients plus f32 master gradients; f32 momentum
  // instead of f16. Batch-norm running statistics stay f16 model state without masters.
  std::size_t parameters = 0;
  {
    MemoryLedger dry;
    dry.set_dry_run(true);
    Trainer<f16> trainer(masters, dry);
    for (Param<f16>* p : trainer.model().params()) parameters += static_cast<std::size_t>(p->value.numel());
  }
  EXPECT_EQ(b.weights - a.weights, 4 * parameters);
  EXPECT_EQ(b.gradients - a.gradients, 4 * parameters);
  EXPECT_EQ(b.optimizer_state - a.optimizer_state, 2 * parameters);
  EXPECT_EQ(b.saved_activations, a.saved_activations);  // activations are the 16-bit model's either way
}

TEST(MixedPrecision, BadInputIsNamed) {
  try {
    parse_run_config(config_with({{"type", "mixed_precision"}}, "f64"), "cfg.json");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: /precision"), std::string::npos) << e.what();
  }
  try {
    parse_run_config(config_with({{"type", "mixed_precision"}, {"compute", "f8"}}), "cfg.json");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/technique/compute"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowmem
