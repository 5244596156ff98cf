#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Max and average pooling over k x k windows with stride s (default k), no padding:
// x (N, C, H, W) -> y (N, C, (H - k) / s + 1, (W - k) / s + 1). The window geometry is shared here.
template <class T> class Pool2d : public Layer<T> {
 public:
  Pool2d(std::string label, index_t kernel, index_t stride)
      : Layer<T>(std::move(label)), kernel_(kernel), stride_(stride) {}
  Shape output_shape(const Shape& input) const override;

 protected:
  index_t kernel_, stride_;
  Shape input_shape_;  // (N, C, H, W) of the last forward
};

// Max pooling keeps, for backward, only the position of each maximum (int32, first maximum on ties, as PyTorch).
template <class T> class MaxPool : public Pool2d<T> {
 public:
  using Pool2d<T>::Pool2d;
  const char* kind() const override { return "maxpool"; }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;

 private:
  using Pool2d<T>::kernel_, Pool2d<T>::stride_, Pool2d<T>::input_shape_;
  Saved<std::int32_t> argmax_;  // per output: index of the maximum within its input plane
};

// Average pooling: y = mean over the window (sum in the compute type, divided once). Backward needs only shapes.
template <class T> class AvgPool : public Pool2d<T> {
 public:
  using Pool2d<T>::Pool2d;
  const char* kind() const override { return "avgpool"; }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;

 private:
  using Pool2d<T>::kernel_, Pool2d<T>::stride_, Pool2d<T>::input_shape_;
};

// Global average pooling: x (N, C, H, W) -> y (N, C), the mean over H W.
template <class T> class GlobalAvgPool : public Layer<T> {
 public:
  explicit GlobalAvgPool(std::string label) : Layer<T>(std::move(label)) {}
  const char* kind() const override { return "global_avgpool"; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;

 private:
  Shape input_shape_;
};

}  // namespace lowmem
