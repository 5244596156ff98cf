#pragma once
// The named architectures of "model": {"arch": ...}: each reads its own keys from the model object and expands into
// the plain layer list that "layers" would give, so everything downstream sees one kind of model.
//   cnn      conv 3x3 [+ norm] + relu per entry of "channels", a max pool every "pool_every" convs, linear head
//   resnet   Wide ResNet (Zagoruyko & Komodakis), depth 6 n + 4
//   revnet, hybrid, flat   reversible networks (Gomez et al.; Hascoet et al.)
//   transformer    a GPT-style character model of pre-norm Transformer blocks (text data)
//   dynamic_conv   the same with causal dynamic or lightweight convolutions for attention (Wu et al.; text data)
#include <string>
#include <vector>

#include "training/run_config.hpp"

namespace lowmem {

class ConfigReader;

// A model's normalisation: "norm": batchnorm | groupnorm | layernorm | instancenorm, "groups" (groupnorm only),
// "proxy": true for Proxy Norm after each group, layer or instance norm that an activation follows. Layer and
// instance norm are read as groupnorm with groups 1 and 0 (one group per channel).
struct NormChoice {
  std::string type = "batchnorm";  // batchnorm | groupnorm | none (the cnn's older "batchnorm": false)
  index_t groups = 0;
  bool proxy = false;
};
NormChoice read_norm(ConfigReader& r);
// Refuses a group count that does not divide `channels`, naming the key "groups" of r.
void check_norm_channels(const ConfigReader& r, const NormChoice& norm, std::int64_t channels);

std::vector<std::string> architecture_names();
// Expands m.arch (one of architecture_names()) into m.layers, reading its keys from r (the model object).
void expand_architecture(ConfigReader& r, ModelSpec& m);
// Refuses a model of more than limits().layers layers (nested ones included) before any is built, naming `key`.
void check_layer_limit(const ConfigReader& r, const std::string& key, std::int64_t layers);

}  // namespace lowmem
