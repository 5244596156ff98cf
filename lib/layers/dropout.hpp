#pragma once
#include <cstdint>

#include "layers/layer.hpp"

namespace lowmem {

// Inverted dropout (Srivastava et al. 2014), any shape: in training, y = x m / (1 - p) with m = 0 (probability p) or
// 1 per value; in evaluation y = x. The mask is never stored: it is a function of the layer's key (drawn from the
// seed at initialize, like a weight), the training step and each value's position (RunContext::step, the sample's
// index in the whole batch, RunContext::first_sample + s, and the index in the sample), so backward, and any
// forward a technique recomputes (checkpoint, reversible), regenerate the very same mask, and a microbatched step
// drops what the whole batch would. Draw: u = SplitMix64 value number i of Rng(Rng(key, step).next_u64(), sample)
// (numerics/random.hpp), as (u >> 11) 2^-53; the value is dropped if that is < p. Nothing is kept for backward.
template <class T> class Dropout : public Layer<T> {
 public:
  Dropout(std::string label, double p);
  const char* kind() const override { return "dropout"; }
  Shape output_shape(const Shape& input) const override { return input; }
  void initialize(Rng& rng) override { key_ = rng.next_u64(); }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::uint64_t key() const { return key_; }  // drawn from the seed at initialize, as the weights are

 private:
  // v m / (1 - p) over t's values (in place on t's own buffer), the mask of ctx's step and samples.
  Tensor<T> apply(Tensor<T> t, const RunContext& ctx) const;
  double p_;
  std::uint64_t key_ = 0;
};

}  // namespace lowmem
