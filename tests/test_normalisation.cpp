// Batch-independent normalisation: group, layer and instance norm, with and without Proxy Norm. Their accumulated
// gradient over k microbatches is the whole batch's to rounding (batch norm's is not); their config spellings and
// the placement rule of proxy_norm are checked before any run.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "technique_step.hpp"
#include "training/run_config.hpp"

namespace lowmem {
namespace {

using nlohmann::json;

// conv -> norm -> activation, twice, then a linear head, on 2 x 6 x 6 inputs in f64. `norm` is a list of layer
// specs put where a normalisation goes (and its activation, for Proxy Norm, which applies it itself).
json config_with(const json& norm, const json& technique = {{"type", "store_all"}}) {
  json layers = json::array();
  for (int out : {4, 6}) {
    layers.push_back({{"type", "conv"}, {"out", out}, {"pad", 1}});
    for (const json& layer : norm) layers.push_back(layer);
  }
  layers.push_back({{"type", "flatten"}});
  layers.push_back({{"type", "linear"}, {"out", 3}});
  return {{"precision", "f64"},
          {"model", {{"input", {2, 6, 6}}, {"classes", 3}, {"layers", layers}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {2, 6, 6}}, {"classes", 3}}}}},
          {"train", {{"batch", 64}, {"optimizer", {{"lr", 0.1}}}}}};
}

const json relu = {{"type", "relu"}};
json plain(const json& norm) { return json::array({norm, relu}); }
json proxied(json norm) {
  norm["affine"] = false;
  return json::array({norm, {{"type", "proxy_norm"}}});
}

struct Normalisation {
  const char* name;
  json layers;
};

std::vector<Normalisation> batch_independent() {
  const json gn = {{"type", "groupnorm"}, {"groups", 2}}, ln = {{"type", "layernorm"}}, in = {{"type", "instancenorm"}};
  return {{"GN", plain(gn)},          {"LN", plain(ln)},          {"IN", plain(in)},
          {"GN+PN", proxied(gn)},     {"LN+PN", proxied(ln)},     {"IN+PN", proxied(in)}};
}

double microbatch_difference(const json& norm, int count) {
  const auto whole = testing::technique_step(config_with(norm), 7);
  const auto sliced = testing::technique_step(config_with(norm, {{"type", "microbatch"}, {"count", count}}), 7);
  return testing::relative_difference(sliced.gradients, whole.gradients);
}

TEST(Normalisation, BatchIndependentNormsGiveTheWholeBatchGradientOverMicrobatches) {
  for (const Normalisation& n : batch_independent())
    for (int count : {1, 2, 4, 8, 64}) {
      const double d = microbatch_difference(n.layers, count);
      EXPECT_LT(d, 1e-12) << n.name << ", " << count << " microbatches";
      std::printf("    %-6s %2d microbatches: gradient relative difference %.2e\n", n.name, count, d);
    }
}

TEST(Normalisation, BatchNormDoesNot) {
  for (int count : {2, 64}) {
    const double d = microbatch_difference(plain({{"type", "batchnorm"}}), count);
    EXPECT_GT(d, 1e-3) << count << " microbatches";
    std::printf("    BN     %2d microbatches: gradient relative difference %.2e\n", count, d);
  }
}

// layernorm and instancenorm are group norm with one group and with one group per channel.
TEST(Normalisation, LayerAndInstanceNormAreGroupNormSpellings) {
  const auto as = [](const json& norm) { return testing::technique_step(config_with(plain(norm)), 3).gradients; };
  EXPECT_EQ(as({{"type", "layernorm"}}), as({{"type", "groupnorm"}, {"groups", 1}}));
  const auto instance = as({{"type", "instancenorm"}});
  // channel counts 4 and 6 differ, so instance norm is not one groupnorm spec: compare with the layer list
  json by_hand = config_with(plain({{"type", "groupnorm"}, {"groups", 4}}));
  by_hand["model"]["layers"][4]["groups"] = 6;
  EXPECT_EQ(instance, testing::technique_step(by_hand, 3).gradients);
}

void expect_refused(const json& config, const std::string& words) {
  try {
    parse_run_config(config, "cfg.json");
    FAIL() << "accepted; expected: " << words;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(Normalisation, ProxyNormOnlyAfterANormWithoutAffine) {
  const std::string rule = "proxy_norm must follow a groupnorm, layernorm or instancenorm with \"affine\": false";
  const json proxy = {{"type", "proxy_norm"}};
  expect_refused(config_with({{{"type", "groupnorm"}, {"groups", 2}}, proxy}), "cfg.json: /model/layers/2: " + rule);
  expect_refused(config_with({{{"type", "batchnorm"}}, proxy}), "cfg.json: /model/layers/2: " + rule);
  json first = config_with(proxied({{"type", "layernorm"}}));
  first["model"]["layers"].erase(0);  // the conv
  first["model"]["layers"].erase(0);  // the layernorm: proxy_norm is now the first layer
  expect_refused(first, "cfg.json: /model/layers/0: " + rule);
  expect_refused(config_with({{{"type", "layernorm"}, {"affine", false}}, {{"type", "proxy_norm"}, {"activation", "tanh"}}}),
                 "/model/layers/2/activation: expected one of \"relu\", \"leaky_relu\"");
  // Inside a coupling's F as well.
  json coupled = config_with(plain({{"type", "layernorm"}}));
  coupled["model"]["layers"][1] = {{"type", "coupling"}, {"f", {{{"type", "relu"}}, proxy}}, {"g", {relu}}};
  expect_refused(coupled, "cfg.json: /model/layers/1/f/1: " + rule);
}

}  // namespace
}  // namespace lowmem
