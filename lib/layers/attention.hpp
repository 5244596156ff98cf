#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Multi-head causal self-attention (Vaswani et al. 2017), for sequences x (N, T, F): N samples, T positions, F =
// width features. qkv = x W_in^T + b_in (W_in (3F, F): rows q, then k, then v, as PyTorch's in_proj_weight); each of
// the H heads takes d = F / H consecutive features of q, k and v: S = Q K^T / sqrt(d), position t sees positions
// <= t only (causal), P = softmax(S) over the last axis (sums in the wide type), O = P V; the heads side by side,
// (N, T, F), give y = O W_out^T + b_out (W_out (F, F)).
// Parameters are named as nn.MultiheadAttention's state_dict: in_proj_weight, in_proj_bias, out_proj.weight,
// out_proj.bias. Initialisation, as PyTorch's: in_proj_weight xavier uniform (bound sqrt(6 / (F + 3F))),
// out_proj.weight uniform(-1/sqrt(F), 1/sqrt(F)), both biases 0.
// Backward keeps x, qkv (N, T, 3F), P (N, H, T, T) and O (N, T, F) (P's T^2 per head dominates for long sequences);
// a forward that keeps nothing (evaluation, recomputation) holds P for one (sample, head) per thread only.
template <class T> class Attention : public Layer<T> {
 public:
  Attention(std::string label, index_t width, index_t heads);
  const char* kind() const override { return "attention"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return {&in_weight_, &in_bias_, &out_weight_, &out_bias_}; }
  // The projections (3F^2 + F^2 multiply-adds a position) and Q K^T, P V (T F each a position, over all T
  // positions: the products are formed whole, masked entries included).
  double forward_flops(const Shape& input) const override;

 private:
  index_t width_, heads_;
  Param<T> in_weight_, in_bias_, out_weight_, out_bias_;
  Saved<T> input_, qkv_, probs_, heads_out_;  // x, qkv, P, O
};

}  // namespace lowmem
