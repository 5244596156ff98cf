#pragma once
#include "layers/sequential.hpp"
#include "training/run_config.hpp"

namespace lowmem {

// Builds the network in precision T, checking every layer's input shape (errors name the layer). Channel and
// feature counts are taken from the shape flowing into each layer. Parameters are left unset: call
// Sequential::initialize(seed), which draws them in double and rounds once into T.
template <class T> Sequential<T> build_model(const ModelSpec& spec);

// Draws the parameters of a model build_model made: Sequential::initialize(seed) (each layer's own scheme), then,
// for spec.init "gpt2", GPT-2's (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): the
// weights of embeddings, learned positions, linear maps and attention projections N(0, init_std), their biases 0,
// and the last projection of each residual branch (attention's out_proj, a block's fc2, the last linear map of a
// coupling's G) N(0, init_std / sqrt(2 blocks)), so the residual stream's variance does not grow with depth. Norms,
// convolutions and the LSTM keep their own. Drawn in double and rounded once into T: every precision starts alike.
template <class T> void initialize_model(Sequential<T>& model, const ModelSpec& spec, std::uint64_t seed);

}  // namespace lowmem
