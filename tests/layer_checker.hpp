#pragma once
// The one generic layer checker: any Layer<T> against central finite differences of L = sum(r * forward(x)),
// for a fixed random projection r. Checks dL/dx and every parameter gradient, element by element.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layer_cases.hpp"

namespace lowmem::testing {

struct GradientReport {
  std::string tensor;  // "input", "weight", "bias", ...
  double max_relative_error;  // max_i |numeric_i - analytic_i| / max_i |analytic_i|
};

// Runs the check on a batch of shape `input` (with N first) and returns one report per checked tensor. vocab > 0:
// the input is token ids (LayerCase::vocab), with no input gradient to check.
// step: the finite-difference step h (central differences: error O(h^2) + O(eps / h)).
template <class T>
std::vector<GradientReport> check_layer_gradients(const LayerFactory<T>& make, const Shape& input, double step,
                                                  std::uint64_t seed = 1, index_t vocab = 0);

// The same layer in T and in mp on the same perturbed parameters, input and output gradient (drawn in T, then
// widened exactly into mp): one report for the output, the input gradient and each parameter gradient, each the
// largest difference relative to the largest mp value. What is left is T's arithmetic alone.
template <class T>
std::vector<GradientReport> compare_with_multiprecision(const LayerFactory<T>& make, const LayerFactory<mp>& reference,
                                                        const Shape& input, std::uint64_t seed = 1,
                                                        index_t vocab = 0);

}  // namespace lowmem::testing
