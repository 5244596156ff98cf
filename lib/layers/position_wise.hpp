#pragma once
#include <memory>

#include "layers/layer.hpp"

namespace lowmem {

// A layer defined on feature vectors (F) -> (F') applied at every position of a sequence: x (N, T, F) is seen as
// N T rows (N T, F) (the same buffer, another shape), as PyTorch's nn.Linear and nn.LayerNorm act on the last
// dimension. Transparent: kind, parameters, buffers and flops are the inner layer's, so that a sequence model's
// linear and layer norm are the image models' classes, checked once.
template <class T> class PositionWise : public Layer<T> {
 public:
  explicit PositionWise(std::unique_ptr<Layer<T>> inner);
  const char* kind() const override { return inner_->kind(); }
  Shape output_shape(const Shape& input) const override;  // (T, F) -> (T, F')
  void initialize(Rng& rng) override { inner_->initialize(rng); }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return inner_->params(); }
  std::vector<std::pair<std::string, Tensor<T>*>> buffers() override { return inner_->buffers(); }
  double forward_flops(const Shape& input) const override;
  Layer<T>& inner() { return *inner_; }

 private:
  std::unique_ptr<Layer<T>> inner_;
};

}  // namespace lowmem
