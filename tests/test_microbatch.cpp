// Microbatching with gradient accumulation: with batch-independent layers the k slices' gradients add up to the
// whole batch's (to rounding), saved-activation memory falls with k, and a count that does not divide the batch is
// refused before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "technique_step.hpp"
#include "techniques/microbatch.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

// groupnorm 0: no normalisation; G > 0: group norm with G groups, which is batch-independent too.
nlohmann::json config_with(const nlohmann::json& technique, int groupnorm = 0) {
  return {{"precision", "f64"},
          {"model", {{"arch", "cnn"}, {"channels", {6, 6}}, {"batchnorm", groupnorm > 0}, {"groupnorm", groupnorm},
                     {"input", {1, 8, 8}}, {"classes", 4}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"classes", 4}}}}},
          {"train", {{"batch", 16}, {"optimizer", {{"lr", 0.1}}}}}};
}

testing::TechniqueStep step(const nlohmann::json& technique, int groupnorm = 0) {
  return testing::technique_step(config_with(technique, groupnorm), 51);
}
using testing::relative_difference;

TEST(Microbatch, SlicesAddUpToTheWholeBatchGradientAndKeepLess) {
  const testing::TechniqueStep whole = step({{"type", "store_all"}});
  std::size_t previous = whole.saved_peak;
  for (int count : {2, 4, 16}) {
    const testing::TechniqueStep sliced = step({{"type", "microbatch"}, {"count", count}});
    EXPECT_LT(relative_difference(sliced.gradients, whole.gradients), 1e-14) << count;
    EXPECT_NEAR(sliced.loss, whole.loss, 1e-15 * std::fabs(whole.loss)) << count;
    // Each row's forward is the same arithmetic, up to how the matrix product blocks a smaller batch.
    EXPECT_LT(relative_difference(sliced.logits, whole.logits), 1e-15) << count;
    EXPECT_LT(sliced.saved_peak, previous) << count;
    previous = sliced.saved_peak;
  }
}

// Group norm normalises each sample on its own, so microbatches keep the full-batch gradient (batch norm would not).
TEST(Microbatch, GroupNormIsBatchIndependent) {
  const testing::TechniqueStep whole = step({{"type", "store_all"}}, 3);
  for (int count : {2, 16}) {
    const testing::TechniqueStep sliced = step({{"type", "microbatch"}, {"count", count}}, 3);
    EXPECT_LT(relative_difference(sliced.gradients, whole.gradients), 1e-13) << count;
    EXPECT_LT(sliced.saved_peak, whole.saved_peak) << count;
  }
}

// A training step makes its microbatches one at a time from the data set, with the batch's augmentation: the
// same weights after two steps as a step on the whole batch made first and then sliced, and only a slice's input
// in memory at a time.
TEST(Microbatch, SlicesMadeOneAtATimeEqualSlicesOfTheWholeBatch) {
  nlohmann::json config = config_with({{"type", "microbatch"}, {"count", 4}}, 3);
  config["data"]["augment"] = {{"flip", true}, {"crop_pad", 2}};
  config["data"]["synthetic"]["count"] = 32;
  const RunConfig run = parse_run_config(config, "test");
  const DataSplit data = load_data(run.data, run.seed);
  std::vector<std::int64_t> order(32);
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int64_t>(31 - i);
  std::vector<std::vector<double>> weights;
  std::vector<std::size_t> batch_peaks;
  for (const bool streamed : {false, true}) {
    MemoryLedger ledger;
    Trainer<double> trainer(run, ledger);
    Rng rng(5);
    for (int b = 0; b < 2; ++b) {
      const std::int64_t* indices = order.data() + b * 16;
      const std::size_t before = ledger.peak_total();
      if (streamed) {
        trainer.train_step(Trainer<double>::StepExamples{&data.train, indices, 16, run.data.augment, &rng}, 0.1);
      } else {
        std::vector<std::int32_t> labels;
        const Tensor<double> x = trainer.make_batch(data.train, indices, 16, run.data.augment, rng, labels);
        trainer.train_step(x, labels, 0.1);
      }
      batch_peaks.push_back(ledger.peak_total() - before);
    }
    weights.emplace_back();
    for (Param<double>* p : trainer.model().params())
      for (index_t i = 0; i < p->value.numel(); ++i) weights.back().push_back(p->value[i]);
  }
  EXPECT_EQ(weights[0], weights[1]);  // bit for bit
  // The first step sets the peak: the whole batch (16 images of 8 x 8 doubles) against one slice of 4.
  EXPECT_EQ(batch_peaks[0] - batch_peaks[2], static_cast<std::size_t>(16 - 4) * 64 * sizeof(double));
}

// A slice that starts on a 64-byte boundary is a view of the batch: nothing charged, the same values in place, and
// a layer that receives it copies before writing (shared). One that does not start there is a copy, so a
// vectorised reduction over a slice never rounds differently for where the slice sits.
TEST(Microbatch, AnAlignedSliceIsAViewAndAnyOtherACopy) {
  MemoryLedger ledger;
  const MemoryLedger::Scope scope(ledger);
  Tensor<float> batch(Shape{4, 16}, MemoryCategory::workspace);  // rows of 64 bytes
  for (index_t i = 0; i < batch.numel(); ++i) batch[i] = static_cast<float>(i);
  const std::size_t before = ledger.current(MemoryCategory::workspace);
  Tensor<float> view = batch_rows(batch, 2, 2);
  EXPECT_EQ(ledger.current(MemoryCategory::workspace), before);
  EXPECT_EQ(view.shape(), (Shape{2, 16}));
  EXPECT_EQ(view.data(), batch.data() + 32);
  EXPECT_TRUE(view.is_view());
  EXPECT_TRUE(view.shared());
  EXPECT_THROW(view.set_category(MemoryCategory::saved_activations), std::logic_error);
  Tensor<float>& own = view.make_own(MemoryCategory::workspace);  // a copy: the batch keeps its values
  own[0] = -1.0f;
  EXPECT_EQ(batch[32], 32.0f);
  EXPECT_EQ(ledger.current(MemoryCategory::workspace), before + 2 * 16 * sizeof(float));

  Tensor<f16> narrow(Shape{4, 8}, MemoryCategory::workspace);  // rows of 16 bytes: only every fourth is aligned
  EXPECT_TRUE(batch_rows(narrow, 0, 1).is_view());
    const Tensor<f16> copied = batch_rows(narrow, 1, 2);
  EXPECT_FALSE(copied.is_view());
  EXPECT_NE(copied.data(), narrow.data() + 8);
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
