#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Fully connected: x (N, in) -> y (N, out) = x W^T + b; weight (out, in) as in PyTorch, bias (out).
// Backward needs x. Initialisation: uniform(-1/sqrt(in), 1/sqrt(in)) for weight and bias (PyTorch's default).
template <class T> class Linear : public Layer<T> {
 public:
  Linear(std::string label, index_t in_features, index_t out_features, bool bias);
  const char* kind() const override { return "linear"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  double forward_flops(const Shape&) const override { return 2.0 * static_cast<double>(in_ * out_); }

 private:
  index_t in_, out_;
  bool has_bias_;
  Param<T> weight_, bias_;
  Saved<T> input_;
};

}  // namespace lowmem
