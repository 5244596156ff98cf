#pragma once
// The named architectures of "model": {"arch": ...}: each reads its own keys from the model object and expands into
// the plain layer list that "layers" would give, so everything downstream sees one kind of model.
//   cnn      conv 3x3 [+ norm] + relu per entry of "channels", a max pool every "pool_every" convs, linear head
//   resnet   Wide ResNet (Zagoruyko & Komodakis), depth 6 n + 4
//   revnet, hybrid, flat   reversible networks (Gomez et al.; Hascoet et al.)
#include <string>
#include <vector>

#include "training/run_config.hpp"

namespace lowmem {

class ConfigReader;

std::vector<std::string> architecture_names();
// Expands m.arch (one of architecture_names()) into m.layers, reading its keys from r (the model object).
void expand_architecture(ConfigReader& r, ModelSpec& m);
// Refuses a model of more than limits().layers layers (nested ones included) before any is built, naming `key`.
void check_layer_limit(const ConfigReader& r, const std::string& key, std::int64_t layers);

}  // namespace lowmem
