#pragma once
#include <functional>
#include <memory>

#include "layers/dynamic_conv.hpp"
#include "layers/layer.hpp"

namespace lowmem {

// The pre-norm residual block of a sequence model (GPT-2's order): x (N, T, F) ->
//   h = x + mix(ln1(x)),   y = h + fc2(gelu(fc1(ln2(h)))),
// ln1 and ln2 layer norms over each position's F features, fc1 F -> mlp F and fc2 mlp F -> F linear at each
// position, and mix the token mixer, (N, T, F) -> (N, T, F), the one child that sees other positions:
//   transformer_block: multi-head causal self-attention with `heads` heads, child "attn";
//   conv_block: a causal lightweight or dynamic convolution (Wu et al. 2019, "Pay Less Attention with Lightweight
//     and Dynamic Convolutions"), child "conv". (The paper's blocks also wrap the convolution in an input
//     projection with a GLU and an output projection; this block is the Transformer's with attention swapped out.)
// Children, named as the PyTorch twin's modules: ln1, attn or conv, ln2, fc1, gelu, fc2. The residual sums keep
// nothing; each branch keeps what its layers keep.
template <class T> class TransformerBlock : public Layer<T> {
 public:
  // transformer_block: attention with `heads` heads.
  TransformerBlock(std::string label, index_t width, index_t heads, index_t mlp_ratio, double eps);
  // conv_block: the convolution `conv` (its width is the block's).
  TransformerBlock(std::string label, DynamicConvSpec conv, index_t mlp_ratio, double eps);
  const char* kind() const override { return kind_; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;
  double forward_flops(const Shape& input) const override;

 private:
  void make_layers(const std::function<std::unique_ptr<Layer<T>>()>& make_mixer, index_t width, index_t mlp_ratio,
                   double eps);
  const char* kind_;
  const char* mixer_name_;  // "attn" or "conv"
  std::unique_ptr<Layer<T>> ln1_, mix_, ln2_, fc1_, gelu_, fc2_;
};

}  // namespace lowmem
