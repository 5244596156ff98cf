#pragma once
#include <memory>

#include "layers/layer.hpp"

namespace lowmem {

// The pre-norm Transformer block (GPT-2's order): x (N, T, F) ->
//   h = x + attn(ln1(x)),   y = h + fc2(gelu(fc1(ln2(h)))),
// attn multi-head causal self-attention with `heads` heads, ln1 and ln2 layer norms over each position's F
// features, fc1 F -> mlp F and fc2 mlp F -> F linear at each position. Children, named as the PyTorch twin's
// modules: ln1, attn, ln2, fc1, gelu, fc2. The residual sums keep nothing; each branch keeps what its layers keep.
template <class T> class TransformerBlock : public Layer<T> {
 public:
  TransformerBlock(std::string label, index_t width, index_t heads, index_t mlp_ratio, double eps);
  const char* kind() const override { return "transformer_block"; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;
  double forward_flops(const Shape& input) const override;

 private:
  std::unique_ptr<Layer<T>> ln1_, attn_, ln2_, fc1_, gelu_, fc2_;
};

}  // namespace lowmem
