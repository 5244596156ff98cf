#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Lightweight and dynamic convolutions (Wu, Fan, Baevski, Dauphin & Auli 2019, "Pay Less Attention with
// Lightweight and Dynamic Convolutions"), causal, for sequences x (N, T, F): N samples, T positions, F = width
// features. The F features are split into H heads of d = F / H consecutive channels; channel c belongs to head
// h(c) = c / d. Position t sees positions t - K + 1 .. t only (x at negative positions is 0):
//   y[t, c] = sum_{j=0}^{K-1} W_{t, h(c), j} x[t - (K - 1) + j, c]  (+ bias[c]),
// where the K taps of every head are softmax-normalised:
//   lightweight_conv: W_{t, h} = softmax(w_h) for every t, w (H, K) learned. Parameter "weight" (H, K) (fairseq's
//     LightweightConv1d stores it as (H, 1, K)); initialised xavier uniform as that (H, 1, K) tensor: bound
//     sqrt(6 / (K + H K)).
//   dynamic_conv: W_{t, h} = softmax over j of logits[t, h K + j], logits[t] = x[t] W_k^T + b_k, predicted from
//     the position's own input. Parameters "weight_linear.weight" W_k (H K, F) and "weight_linear.bias" b_k (H K)
//     (a linear layer named as fairseq's DynamicConv1dTBC names it); W_k xavier uniform, bound
//     sqrt(6 / (F + H K)), b_k 0.
// Optional "bias" (F), added to every position, initialised 0. Sums run in the compute type G
// (tensor/compute.hpp): each output and each input gradient is one sum of at most K products (plus, for dynamic,
// the projection's), rounded once; the softmax in the wide type, as attention's.
// Backward keeps x (N, T, F) and the normalised kernels W: lightweight (H K), flat (parameters, not an
// activation: a save hook leaves it exact, as group norm's statistics), dynamic (N, T, H, K), as attention keeps
// its probabilities. x gives dL/dW_{t,h,j} = sum_{c in h} dy[t, c] x[t - K + 1 + j, c] (and the projection's
// weight gradient), W gives dx and the softmax's backward dw_j = W_j (dW_j - sum_k W_k dW_k); the logits are not
// kept. A forward that keeps nothing holds the same buffers while it runs and frees them.
// The kernel of configs that give none (lightweight_conv, dynamic_conv, conv_block, arch dynamic_conv): 7 taps, the
// paper's second-layer size (its models grow the kernel with depth, 3, 7, 15, 31, ...; one size here).
constexpr index_t default_sequence_kernel = 7;

struct DynamicConvSpec {
  index_t width = 0, heads = 1, kernel = 1;
  bool dynamic = true;  // false: lightweight (one learned kernel per head)
  bool bias = false;
};

template <class T> class DynamicConv : public Layer<T> {
 public:
  DynamicConv(std::string label, DynamicConvSpec spec);
  const char* kind() const override { return dynamic_ ? "dynamic_conv" : "lightweight_conv"; }
  Shape output_shape(const Shape& input) const override;  // (T, F) -> (T, F)
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  // The convolution (K multiply-adds a value); dynamic adds the kernel projection (F H K multiply-adds a position)
  // and the softmax (exponential, sum and division: 3 a tap).
  double forward_flops(const Shape& input) const override;

 private:
  index_t width_, heads_, kernel_;
  bool dynamic_, has_bias_;
  Param<T> weight_;       // lightweight: "weight" (H, K); dynamic: "weight_linear.weight" (H K, F)
  Param<T> kernel_bias_;  // dynamic: "weight_linear.bias" (H K); lightweight: empty
  Param<T> bias_;         // "bias" (F), or empty
  Saved<T> input_, kernels_;  // x (N, T, F); W: (H K) or (N, T, H, K)
};

}  // namespace lowmem
