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

// Group norm without affine keeps its output x^, which Proxy Norm keeps as its input: one buffer for both, so
// GN + PN keeps no more than GN + ReLU (whose ReLU output is the next conv's kept input).
TEST(Normalisation, ProxyNormSharesWhatTheNormBeforeItKeeps) {
  const json gn = {{"type", "groupnorm"}, {"groups", 2}};
  const auto with_relu = testing::technique_step(config_with(plain(gn)), 7);
  const auto with_proxy = testing::technique_step(config_with(proxied(gn)), 7);
  EXPECT_LE(with_proxy.saved_peak, with_relu.saved_peak);
  std::printf("    saved activations: GN + ReLU %zu B, GN + PN %zu B\n", with_relu.saved_peak, with_proxy.saved_peak);
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

// The named architectures take "norm", "groups" and "proxy".
json arch_config(const json& model, const json& technique = {{"type", "store_all"}}) {
  json config = config_with(plain({{"type", "layernorm"}}), technique);
  config["model"] = model;
  config["model"]["input"] = {2, 6, 6}, config["model"]["classes"] = 3;
  return config;
}

std::vector<std::string> layer_types(const json& model) {
  std::vector<std::string> types;
  for (const LayerSpec& s : parse_run_config(arch_config(model), "cfg.json").model.layers)
    types.push_back(s.type + (s.type == "groupnorm" ? "(" + std::to_string(s.groups) + (s.affine ? "" : ", no affine") + ")"
                                                    : s.type == "residual" ? "(" + s.norm + (s.proxy ? " + proxy" : "") + ")"
                                                                           : ""));
  return types;
}

TEST(Normalisation, ArchitecturesTakeANormAndProxyNorm) {
  const json cnn = {{"arch", "cnn"}, {"channels", {4, 6}}, {"pool_every", 0}};
  using V = std::vector<std::string>;
  json gn = cnn;
  gn["norm"] = "groupnorm", gn["groups"] = 2, gn["proxy"] = true;
  EXPECT_EQ(layer_types(gn), (V{"conv", "groupnorm(2, no affine)", "proxy_norm", "conv", "groupnorm(2, no affine)",
                                "proxy_norm", "flatten", "linear"}));
  json ln = cnn;
  ln["norm"] = "layernorm";
  EXPECT_EQ(layer_types(ln), (V{"conv", "groupnorm(1)", "relu", "conv", "groupnorm(1)", "relu", "flatten", "linear"}));
  json in = cnn;
  in["norm"] = "instancenorm";  // groups 0: one per channel, whatever the channel count
  EXPECT_EQ(layer_types(in), (V{"conv", "groupnorm(0)", "relu", "conv", "groupnorm(0)", "relu", "flatten", "linear"}));
  EXPECT_EQ(layer_types(cnn), (V{"conv", "batchnorm", "relu", "conv", "batchnorm", "relu", "flatten", "linear"}));
  // The older key gives the same model as the new spelling.
  json legacy = cnn, spelled = cnn;
  legacy["groupnorm"] = 2, spelled["norm"] = "groupnorm", spelled["groups"] = 2;
  EXPECT_EQ(layer_types(legacy), layer_types(spelled));
  EXPECT_EQ(testing::technique_step(arch_config(legacy), 5).gradients,
            testing::technique_step(arch_config(spelled), 5).gradients);

  const json resnet = {{"arch", "resnet"}, {"depth", 10}, {"base_width", 2}};
  json rn = resnet;
  rn["norm"] = "layernorm", rn["proxy"] = true;
  EXPECT_EQ(layer_types(rn), (V{"conv", "groupnorm(1, no affine)", "proxy_norm", "residual(groupnorm + proxy)",
                                "residual(groupnorm + proxy)", "residual(groupnorm + proxy)", "global_avgpool",
                                "linear"}));
}

// A ResNet with group norm and Proxy Norm inside its blocks is batch-independent too; with batch norm it is not.
TEST(Normalisation, ResNetBlocksFollowTheirNorm) {
  json resnet = {{"arch", "resnet"}, {"depth", 10}, {"base_width", 2}, {"norm", "groupnorm"}, {"groups", 2},
                 {"proxy", true}};
  const auto whole = testing::technique_step(arch_config(resnet), 9);
  const auto sliced = testing::technique_step(arch_config(resnet, {{"type", "microbatch"}, {"count", 8}}), 9);
  const double d = testing::relative_difference(sliced.gradients, whole.gradients);
  EXPECT_LT(d, 1e-12);
  resnet.erase("norm"), resnet.erase("groups"), resnet.erase("proxy");
  const double bn = testing::relative_difference(
      testing::technique_step(arch_config(resnet, {{"type", "microbatch"}, {"count", 8}}), 9).gradients,
      testing::technique_step(arch_config(resnet), 9).gradients);
  EXPECT_GT(bn, 1e-3);
  std::printf("    resnet GN+PN 8 microbatches: %.2e; BN: %.2e\n", d, bn);
}

TEST(Normalisation, ArchitectureNormsRefuseBadInput) {
  const json cnn = {{"arch", "cnn"}, {"channels", {4, 6}}};
  auto with = [&](json model, const json& extra) {
    for (const auto& [key, value] : extra.items()) model[key] = value;
    return arch_config(model);
  };
  expect_refused(with(cnn, {{"proxy", true}}), "cfg.json: /model/proxy: Proxy Norm follows a group, layer or "
                                               "instance norm, not batch norm");
  expect_refused(with(cnn, {{"norm", "groupnorm"}, {"groups", 4}}),
                 "cfg.json: /model/groups: 4 groups do not split 6 channels evenly");
  expect_refused(with(cnn, {{"groupnorm", 4}}), "cfg.json: /model/groupnorm: 4 groups do not split 6 channels evenly");
  expect_refused(with(cnn, {{"norm", "rmsnorm"}}), "cfg.json: /model/norm: expected one of \"batchnorm\"");
  expect_refused(with(cnn, {{"norm", "groupnorm"}}), "cfg.json: /model/groups");
  expect_refused(with(cnn, {{"norm", "layernorm"}, {"groups", 2}}), "cfg.json: /model/groups: applies to \"norm\": "
                                                                    "\"groupnorm\" only");
  expect_refused(with(cnn, {{"norm", "layernorm"}, {"groupnorm", 2}}), "cfg.json: /model/norm: give either");
  const json resnet = {{"arch", "resnet"}, {"depth", 10}, {"base_width", 2}};
  expect_refused(with(resnet, {{"norm", "batchnorm"}, {"proxy", true}}), "cfg.json: /model/proxy: Proxy Norm");
  expect_refused(with(resnet, {{"norm", "groupnorm"}, {"groups", 3}}),
                 "cfg.json: /model/groups: 3 groups do not split 2 channels evenly");
  // A residual block in a layer list takes the same keys.
  json listed = config_with(plain({{"type", "layernorm"}}));
  listed["model"]["layers"][0] = {{"type", "residual"}, {"out", 4}, {"norm", "groupnorm"}, {"groups", 3}};
  expect_refused(listed, "cfg.json: /model/layers/0/groups: 3 groups do not split 4 channels evenly");
  listed["model"]["layers"][0] = {{"type", "residual"}, {"out", 4}, {"norm", "layernorm"}, {"momentum", 0.1}};
  expect_refused(listed, "/model/layers/0/momentum");
}

}  // namespace
}  // namespace lowmem
