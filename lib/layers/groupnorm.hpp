#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Group normalisation (Wu & He 2018), for x (N, C, H, W) or (N, C): the C channels of each sample are split into
// `groups` groups of C / groups consecutive channels, and each group is normalised by its own mean and biased
// variance over (C / groups) x H x W values, then y = gamma_c x^ + beta_c per channel. No batch statistics, so
// training and evaluation compute the same thing and microbatches of any size see the same layer (the point of
// batch-independent normalisation). groups = 1 is layer norm over (C, H, W); groups = C is instance norm.
// Backward keeps x and each group's mean and 1/sqrt(var + eps) (wide type) and recomputes x^; without affine it
// keeps its output x^ and 1/sqrt(var + eps) instead (x^ is shared with the next layer, a Proxy Norm, which keeps
// its input), so in f16 and bf16 backward reads x^ rounded to the storage type rather than recomputed in f32.
template <class T> class GroupNorm : public Layer<T> {
 public:
  // affine false: no gamma and beta (y = x^), for a Proxy Norm after it, which applies its own.
  GroupNorm(std::string label, index_t channels, index_t groups, double eps, bool affine = true);
  const char* kind() const override { return "groupnorm"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override {
    return affine_ ? std::vector<Param<T>*>{&gamma_, &beta_} : std::vector<Param<T>*>{};
  }

 private:
  using W = wide_t<T>;
  W gamma(index_t c) const { return affine_ ? round_to<W>(gamma_.value[c]) : W(1); }
  // dgamma and dbeta added into the gradients when each (sample, channel) holds one value (area 1).
  void param_grads_one_value_per_channel(const Tensor<T>& x, const Tensor<T>& dy, const Tensor<W>& mean,
                                         const Tensor<W>& inv_std, Accumulate mode);
  // dL/dx into dx (dy's buffer, or its own) in the same case.
  void input_grad_one_value_per_channel(const Tensor<T>& x, const Tensor<T>& dy, Tensor<T>& dx, const Tensor<W>& mean,
                                        const Tensor<W>& inv_std, Accumulate mode);
  index_t channels_, groups_;
  double eps_;
  bool affine_;
  Param<T> gamma_, beta_;  // without affine: empty, and gamma = 1, beta = 0 in the arithmetic
  Saved<T> kept_;  // x; without affine, y = x^
  Saved<W> mean_, inv_std_;  // (N groups), flat: statistics are never compressed
};

}  // namespace lowmem
