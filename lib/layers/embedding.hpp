#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Token embedding: ids (N, T) -> vectors (N, T, width), y[s, t] = weight[id(s, t)]; weight (vocab, width) as
// PyTorch's nn.Embedding, initialised N(0, 1) as there. The ids arrive as values of T (the data set's token ids,
// exact: lowmem refuses vocabularies larger than T holds exactly) and are not differentiable: backward returns no
// input gradient. Backward keeps the ids as int32 (4 bytes each) and adds each position's output gradient to its
// token's row, positions in order.
template <class T> class Embedding : public Layer<T> {
 public:
  Embedding(std::string label, index_t vocab, index_t width);
  const char* kind() const override { return "embedding"; }
  Shape output_shape(const Shape& input) const override;  // (T) ids -> (T, width)
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return {&weight_}; }
  double forward_flops(const Shape& input) const override { return static_cast<double>(input.numel() * width_); }

 private:
  index_t vocab_, width_;
  Param<T> weight_;
  Saved<std::int32_t> ids_;  // (N T)
};

// Learned positional embedding: x (N, T, width) -> x + weight[t] at position t; weight (positions, width),
// positions >= T (PyTorch: an nn.Embedding of the positions, added), initialised N(0, 1). Keeps nothing:
// dweight[t] = sum over samples of dy[s, t], and dx = dy.
template <class T> class PositionalEmbedding : public Layer<T> {
 public:
  PositionalEmbedding(std::string label, index_t positions, index_t width);
  const char* kind() const override { return "positional"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return {&weight_}; }

 private:
  index_t positions_, width_;
  Param<T> weight_;
};

}  // namespace lowmem
