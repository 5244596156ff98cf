// Backprop by reconstruction at the model level (technique "reversible"): the same gradients as stored
// activations, saved-activation memory that no longer grows with depth, and the bad inputs named before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "technique_step.hpp"
#include "plan.hpp"
#include "runner.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

nlohmann::json config_for(const nlohmann::json& model, const std::string& technique) {
  return {{"precision", "f64"},
          {"model", model},
          {"technique", {{"type", technique}}},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", model.at("input")}}}}},
          {"train", {{"batch", 4}, {"optimizer", {{"lr", 0.1}}}}}};
}

// Every parameter gradient of one forward and backward pass on a fixed random batch; then (last entry) every
// running statistic of batch norm after it.
std::vector<std::vector<double>> gradients(const nlohmann::json& config) {
  const RunConfig run = parse_run_config(config, "test");
  MemoryLedger ledger;
  Trainer<double> trainer(run, ledger);
  Tensor<double> x = trainer.empty_batch(run.train.batch);
  Rng rng(21);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  std::vector<std::int32_t> labels = {0, 3, 7, 9};
  EXPECT_TRUE(std::isfinite(trainer.forward_backward(x, labels)));
  std::vector<std::vector<double>> grads;
  for (Param<double>* p : trainer.model().params()) grads.emplace_back(p->grad.data(), p->grad.data() + p->grad.numel());
  grads.emplace_back();
  for (std::size_t i = 0; i < trainer.model().size(); ++i) testing::collect_running_statistics(trainer.model().layer(i), grads.back());
  return grads;
}

double worst_relative_difference(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  double worst = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < a[k].size(); ++i) {
      diff += (a[k][i] - b[k][i]) * (a[k][i] - b[k][i]);
      norm += b[k][i] * b[k][i];
    }
    worst = std::max(worst, norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff));
  }
  return worst;
}

TEST(Reversible, TenBlockNetworksGiveTheStoredActivationGradientsTo1e10InDouble) {
  for (const std::string arch : {"revnet", "hybrid"}) {
    const nlohmann::json model = {{"arch", arch}, {"stages", 2}, {"blocks", 5}, {"width", 8}, {"input", {1, 12, 12}}};
    const auto stored = gradients(config_for(model, "store_all"));
    const auto rebuilt = gradients(config_for(model, "reversible"));
    ASSERT_EQ(stored.size(), rebuilt.size());
    // Running statistics: updated once, in the forward, never again when F and G are recomputed (a known pain of
    // reversible libraries): bit for bit those of stored activations.
    EXPECT_FALSE(stored.back().empty());
    EXPECT_EQ(rebuilt.back(), stored.back()) << arch << ": running statistics";
    const double difference = worst_relative_difference(rebuilt, stored);
    EXPECT_LT(difference, 1e-10) << arch;
    EXPECT_GT(difference, 0.0) << arch << ": the rebuilt activations carry rounding error; exact equality would "
                                          "mean nothing was rebuilt";
    std::printf("    %s, 10 blocks, f64: worst relative gradient difference %.2e\n", arch.c_str(), difference);
  }
}

std::size_t saved_activation_peak(const std::string& arch, int blocks, const std::string& technique) {
  const nlohmann::json model = {{"arch", arch}, {"stages", 2}, {"blocks", blocks}, {"width", 8}, {"input", {1, 12, 12}}};
  return predict_memory(parse_run_config(config_for(model, technique), "test")).saved_activations;
}

TEST(Reversible, SavedActivationMemoryNoLongerGrowsWithDepth) {
  for (const std::string arch : {"revnet", "hybrid"}) {
    EXPECT_EQ(saved_activation_peak(arch, 2, "reversible"), saved_activation_peak(arch, 10, "reversible")) << arch;
    EXPECT_GT(saved_activation_peak(arch, 10, "store_all"), 3 * saved_activation_peak(arch, 2, "store_all")) << arch;
  }
  // Flat: only the per-channel statistics of each invertible batch norm (mean and 1/std in double), which its
  // inverse needs: 8 more blocks in each stage, at 8 and 32 channels.
  EXPECT_EQ(saved_activation_peak("flat", 10, "reversible") - saved_activation_peak("flat", 2, "reversible"),
            8u * (8 + 32) * 2 * sizeof(double));
}

std::string error_of(const nlohmann::json& config) {
  try {
    const RunConfig run = parse_run_config(config, "cfg.json");
    validate_model(run, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(Reversible, BadInputIsNamedBeforeAnyWork) {
  auto chain = [](nlohmann::json layer) {
    return nlohmann::json{{"input", {2, 4, 4}},
                          {"layers",
                           {{{"type", "invertible"}, {"layers", {{{"type", "inv_batchnorm"}}, layer}}},
                            {{"type", "flatten"}},
                            {{"type", "linear"}, {"out", 10}}}}};
  };
  // A non-invertible layer inside a chain declared invertible: the layer, the chain and the reason.
  std::string e = error_of(config_for(chain({{"type", "relu"}}), "reversible"));
  EXPECT_NE(e.find("/model/layers/0/layers/1 (relu)"), std::string::npos) << e;
  EXPECT_NE(e.find("slope 0"), std::string::npos) << e;
  e = error_of(config_for(chain({{"type", "leaky_relu"}, {"slope", 0}}), "reversible"));
  EXPECT_NE(e.find("/model/layers/0/layers/1 (leaky_relu)"), std::string::npos) << e;
  e = error_of(config_for(chain({{"type", "batchnorm"}}), "reversible"));
  EXPECT_NE(e.find("use inv_batchnorm"), std::string::npos) << e;
  e = error_of(config_for(chain({{"type", "maxpool"}}), "reversible"));
  EXPECT_NE(e.find("maxpool has no inverse"), std::string::npos) << e;
  // Odd channel counts for a coupling split, and spatial sizes a pixel shuffle cannot halve.
  e = error_of(config_for({{"input", {3, 4, 4}}, {"layers", {{{"type", "coupling"}, {"f", {{{"type", "relu"}}}},
                                                              {"g", {{{"type", "relu"}}}}}}}}, "reversible"));
  EXPECT_NE(e.find("/model/layers/0 (coupling)"), std::string::npos) << e;
  EXPECT_NE(e.find("even"), std::string::npos) << e;
  e = error_of(config_for({{"arch", "hybrid"}, {"width", 6}, {"input", {1, 8, 8}}}, "reversible"));
  EXPECT_NE(e.find("/model/width"), std::string::npos) << e;
  e = error_of(config_for({{"arch", "flat"}, {"stages", 3}, {"input", {1, 6, 6}}}, "reversible"));
  EXPECT_NE(e.find("pixel_shuffle"), std::string::npos) << e;
  e = error_of(config_for({{"arch", "revnet"}, {"slope", 0}, {"input", {1, 8, 8}}}, "reversible"));
  EXPECT_NE(e.find("/model/slope"), std::string::npos) << e;
  // The technique on a model with nothing to rebuild; store_all composed with it.
  e = error_of(config_for({{"arch", "cnn"}, {"input", {1, 8, 8}}}, "reversible"));
  EXPECT_NE(e.find("/technique"), std::string::npos) << e;
  nlohmann::json study = config_for({{"arch", "cnn"}, {"input", {1, 8, 8}}}, "store_all");
  study["study"] = "reconstruction";
  e = error_of(study);
  EXPECT_NE(e.find("cfg.json: /study"), std::string::npos) << e;
  nlohmann::json both = config_for({{"arch", "revnet"}, {"input", {1, 8, 8}}}, "reversible");
  both["technique"] = {{{"type", "store_all"}}, {{"type", "reversible"}}};
  e = error_of(both);
  EXPECT_NE(e.find("cfg.json: /technique"), std::string::npos) << e;
}

// Checkpoint composed with reversible: the runs of non-invertible layers between invertible runs keep only their
// inputs and are recomputed in backward. The arithmetic is the same, so gradients and running statistics are those
// of reversible alone, bit for bit; saved activations fall.
TEST(Reversible, CheckpointRecomputesTheNonInvertibleRunsBitForBit) {
  const nlohmann::json conv = {{"type", "conv"}, {"out", 4}, {"pad", 1}}, half = {{"type", "conv"}, {"out", 2}, {"pad", 1}};
  const nlohmann::json bn = {{"type", "batchnorm"}}, relu = {{"type", "relu"}};
  const nlohmann::json coupling = {{"type", "coupling"}, {"f", {half, bn, relu}}, {"g", {half, bn, relu}}};
  const nlohmann::json model = {
      {"input", {2, 8, 8}},
      {"layers", {conv, bn, relu, conv, bn, relu,                                    // 6 non-invertible
                  coupling, {{"type", "inv_batchnorm"}}, {{"type", "leaky_relu"}, {"slope", 0.2}},
                  {{"type", "conv"}, {"out", 4}, {"pad", 1}, {"stride", 2}}, bn, relu,  // 3 non-invertible
                  coupling, {{"type", "global_avgpool"}}, {{"type", "flatten"}}, {{"type", "linear"}, {"out", 10}}}}};
  const nlohmann::json reversible = config_for(model, "reversible");
  nlohmann::json composed = reversible;
  composed["technique"] = {{{"type", "reversible"}}, {{"type", "checkpoint"}}};
  EXPECT_EQ(gradients(composed), gradients(reversible));
  const testing::TechniqueStep alone = testing::technique_step(reversible, 5), both = testing::technique_step(composed, 5);
  EXPECT_EQ(both.gradients, alone.gradients);
  EXPECT_LT(both.saved_peak, alone.saved_peak);
  const RunConfig run = parse_run_config(composed, "test");
  std::int64_t recomputed = -1;
  dry_step<double>(run, nullptr, &recomputed);
  EXPECT_EQ(recomputed, 6 + 3 + 3);  // every non-invertible layer once more
}

}  // namespace
}  // namespace lowmem
