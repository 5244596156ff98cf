#pragma once
// One forward and backward pass of a config's model in f64 on a fixed random batch (labels 0, 1, ..., classes - 1
// repeated), as the technique tests compare them.
#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "layers/layer.hpp"

namespace lowmem::testing {

struct TechniqueStep {
  double loss = 0;
  std::vector<double> gradients, logits;  // every parameter gradient in model order; the logits
  std::size_t saved_peak = 0, peak = 0;   // ledger peaks: saved activations, total
};

TechniqueStep technique_step(const nlohmann::json& config, std::uint64_t seed);

// Every batch norm's running mean and variance under `layer`, appended to out (composites walked by children).
void collect_running_statistics(Layer<double>& layer, std::vector<double>& out);

// ||a - b|| / ||b||
double relative_difference(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace lowmem::testing
