#pragma once
#include "layers/sequential.hpp"
#include "training/run_config.hpp"

namespace lowmem {

// Builds the network in precision T, checking every layer's input shape (errors name the layer). Channel and
// feature counts are taken from the shape flowing into each layer. Parameters are left unset: call
// Sequential::initialize(seed), which draws them in double and rounds once into T.
template <class T> Sequential<T> build_model(const ModelSpec& spec);

}  // namespace lowmem
