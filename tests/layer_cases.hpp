#pragma once
// The table of layers every generic check runs over: one entry per layer type and configuration, each able to
// build its layer in any of the six precisions.
#include <functional>
#include <ostream>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "layers/layer.hpp"

namespace lowmem::testing {

template <class T> using LayerFactory = std::function<std::unique_ptr<Layer<T>>()>;

struct LayerCase {
  std::string name;
  Shape input;  // with the batch dimension first
  std::tuple<LayerFactory<float>, LayerFactory<double>, LayerFactory<f16>, LayerFactory<bf16>, LayerFactory<mp>,
             LayerFactory<dd>>
      makers;
  // > 0: the input is token ids in [0, vocab) (an embedding), which have no gradient: the checkers draw ids and
  // check every parameter gradient but not an input gradient.
  index_t vocab = 0;

  template <class T> std::unique_ptr<Layer<T>> make() const { return std::get<LayerFactory<T>>(makers)(); }
  template <class T> const LayerFactory<T>& factory() const { return std::get<LayerFactory<T>>(makers); }
};

std::vector<LayerCase> all_layer_cases();

// A case's input: values drawn N(0, 1) and rounded into T, or token ids in [0, vocab) where the case takes them.
template <class T> Tensor<T> draw_input(const Shape& shape, index_t vocab, Rng& rng) {
  Tensor<T> x(shape, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i)
    x[i] = vocab > 0 ? round_to<T>(static_cast<double>(rng.below(static_cast<std::uint64_t>(vocab))))
                     : round_to<T>(rng.normal());
  return x;
}

// How GoogleTest prints a case in test names and failures: by its name, not as bytes.
inline void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

// gtest-friendly name: letters and digits only.
std::string test_name(const std::string& s);

}  // namespace lowmem::testing
