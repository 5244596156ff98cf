#pragma once
#include "layers/sequential.hpp"

namespace lowmem {

// A chain declared invertible layer by layer (config {"type": "invertible", "layers": [...]}): every layer in it
// must be invertible, which is checked when it is built (an error names the first layer that is not). It is then
// one invertible layer: inverse and backprop by reconstruction go through its layers from the last to the first.
template <class T> class InvertibleChain : public Layer<T>, public Invertible<T> {
 public:
  InvertibleChain(std::string label, Sequential<T> chain);  // throws lowmem::Error naming a non-invertible layer
  const char* kind() const override { return "invertible"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override { return chain_.forward(std::move(x), ctx); }
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override {
    return chain_.backward(std::move(dy), ctx, want_input_grad);
  }
  Tensor<T> inverse(const Tensor<T>& y) override { return chain_.inverse(y); }
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                        bool want_input_grad) override {
    return chain_.backward_from_output(std::move(y), std::move(dy), ctx, want_input_grad);
  }
  std::vector<Param<T>*> params() override { return chain_.params(); }
  double forward_flops(const Shape& in) const override { return chain_.forward_flops(in); }
  std::vector<std::pair<std::string, Layer<T>*>> children() override;

 private:
  Sequential<T> chain_;
};

}  // namespace lowmem
