// The reconstruction study end to end on synthetic data: what it records, and that the error it measures grows
// with depth and is ordered by precision.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "study.hpp"

namespace lowmem {
namespace {

RunRecord reconstruction(const std::string& arch, int blocks, const std::string& precision,
                          const std::string& weights = "random") {
  const nlohmann::json config = {
      {"reconstruction", {{"weights", weights}}},
      {"study", "reconstruction"},
      {"seed", 3},
      {"precision", precision},
      {"model", {{"arch", arch}, {"stages", 1}, {"blocks", blocks}, {"width", 8}, {"input", {1, 8, 8}}}},
      {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"count", 8}}}}},
      {"train", {{"batch", 4}, {"steps", 2}, {"optimizer", {{"lr", 0.1}}}}}};
  nlohmann::json effective;
  const RunConfig run = parse_run_config(config, "test", &effective);
  const DataSplit data = load_data(run.data, run.seed);
  RunRecord record;
  record.config_json = effective.dump();
  run_study(run, data, record, nullptr);
  return record;
}

TEST(ReconstructionStudy, RecordsOneValuePerInvertedLayerInForwardOrder) {
  const RunRecord r = reconstruction("flat", 3, "f32");
  EXPECT_EQ(r.status, "complete");
  const auto& names = r.string_arrays.at("reconstruction/layer_names");
  // Stem inv BN and leaky ReLU, then 3 x (invertible conv, inv BN, leaky ReLU).
  ASSERT_EQ(names.size(), 2u + 9u);
  EXPECT_EQ(names.front(), "/model (flat stem: inv_batchnorm)");
  EXPECT_EQ(names.back(), "/model (flat stage 0 block 2: leaky_relu)");
  const auto& snr = r.arrays.at("reconstruction/snr").values;
  const auto& alpha = r.arrays.at("reconstruction/alpha").values;
  for (const char* key : {"snr", "rel_error_self", "rel_error_reference", "forward_rel_error_reference", "alpha"})
    EXPECT_EQ(r.arrays.at(std::string("reconstruction/") + key).values.size(), names.size()) << key;
  EXPECT_TRUE(std::isnan(alpha.back()));  // the last layer's output is the forward's own: no SNR to divide by
  // alpha = SNR of a layer's rebuilt input / SNR of its rebuilt output: below 1 where the inverse amplifies error.
  // In the chain the leaky ReLUs' error comes mostly from the sums of the couplings after them, near the closed
  // form's noise model (same variance everywhere), which they match within 30 % (Invertible.* tests the 10 %
  // case on exact noise). Slope 0.2: 4 / ((1 + 0.04) (1 + 25)) = 0.148.
  for (std::size_t i = 0; i + 1 < names.size(); ++i) {
    EXPECT_DOUBLE_EQ(alpha[i], snr[i] / snr[i + 1]);
    if (names[i].find("leaky_relu") != std::string::npos) { EXPECT_NEAR(alpha[i], 0.148, 0.3 * 0.148) << names[i]; }
  }
  // The mp run is its own reference: both relative errors are the same numbers.
  const RunRecord exact = reconstruction("flat", 3, "mp");
  EXPECT_EQ(exact.arrays.at("reconstruction/rel_error_reference").values,
            exact.arrays.at("reconstruction/rel_error_self").values);
  EXPECT_EQ(r.scalars.at("input_snr"), snr.front());
  EXPECT_EQ(r.labels.at("reference"), "mp");
}

TEST(ReconstructionStudy, ErrorGrowsWithDepthAndIsOrderedByPrecision) {
  for (const std::string arch : {"hybrid", "flat"}) {
    std::map<std::string, std::map<int, double>> error;  // precision -> blocks -> input relative error vs mp
    for (const std::string precision : {"mp", "f64", "f32", "bf16", "f16"})
      for (int blocks : {1, 4}) {
        const RunRecord r = reconstruction(arch, blocks, precision);
        error[precision][blocks] = r.scalars.at("input_rel_error_reference");
        std::printf("    %-6s %-4s %d blocks: input relative error against mp %.3g, SNR %.3g\n", arch.c_str(),
                    precision.c_str(), blocks, error[precision][blocks], r.scalars.at("input_snr"));
      }
    for (const auto& [precision, by_depth] : error)
      EXPECT_GT(by_depth.at(4), by_depth.at(1)) << arch << " " << precision << ": error must grow with depth";
    for (int blocks : {1, 4}) {
      EXPECT_LT(error["mp"][blocks], error["f64"][blocks]) << arch << " " << blocks;
      EXPECT_LT(error["f64"][blocks], error["f32"][blocks]) << arch << " " << blocks;
      EXPECT_LT(error["f32"][blocks], std::min(error["f16"][blocks], error["bf16"][blocks])) << arch << " " << blocks;
    }
  }
}

// Trained weights: trained once in f32, then the same network (rounded once) in every precision and in the mp
// reference. Were the networks different, the f64 forward would be O(1) away from the reference, not 1e-16.
TEST(ReconstructionStudy, TrainedWeightsAreTheSameNetworkInEveryPrecision) {
  const RunRecord random = reconstruction("hybrid", 2, "f64");
  const RunRecord trained = reconstruction("hybrid", 2, "f64", "trained");
  EXPECT_EQ(trained.labels.at("weights"), "trained");
  EXPECT_EQ(trained.scalars.at("training_steps"), 2);
  const auto& forward = trained.arrays.at("reconstruction/forward_rel_error_reference").values;
  for (double e : forward) EXPECT_LT(e, 1e-13);
  EXPECT_NE(trained.scalars.at("input_snr"), random.scalars.at("input_snr"));  // the weights did change
}

}  // namespace
}  // namespace lowmem
