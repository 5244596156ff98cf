#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// ReLU (slope 0) and leaky ReLU: y = x if x > 0 else slope * x, any shape. slope >= 0, so y > 0 exactly when
// x > 0 and backward needs only the output y (shared with the next layer's saved input, so usually free).
// dx = dy where y > 0, else slope * dy (PyTorch's convention at 0).
// Invertible when slope > 0: x = y where y > 0, else y / slope (one rounding).
template <class T> class LeakyRelu : public Layer<T>, public Invertible<T> {
 public:
  LeakyRelu(std::string label, double slope);  // slope 0 is ReLU
  const char* kind() const override { return slope_ == 0.0 ? "relu" : "leaky_relu"; }
  Shape output_shape(const Shape& input) const override { return input; }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  bool invertible() const override { return slope_ > 0.0; }
  std::string why_not_invertible() const override;
  Tensor<T> inverse(const Tensor<T>& y) override;  // throws lowmem::Error for slope 0 (ReLU loses its negatives)
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                        bool want_input_grad) override;

 private:
  // dL/dx from the output alone (or from the mask of where it is positive), written over dy's buffer if free.
  Tensor<T> input_grad(const Tensor<T>& y, Tensor<T> dy) const;
  Tensor<T> input_grad_from_mask(const Tensor<std::uint8_t>& mask, Tensor<T> dy) const;
  Tensor<T> rebuild_input(Tensor<T> y) const;  // the inverse, written over y's buffer if free
  double slope_;
  T slope_t_;
  Saved<T> output_;
  Saved<std::uint8_t> mask_;  // approximate activations: 1 bit per value, y > 0, exact
};

// GELU (Hendrycks & Gimpel), exact as PyTorch's default: y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, any
// shape; dx = dy (Phi(x) + x phi(x)), phi the standard normal density. Backward keeps the input x. Each output is
// rounded once from double for float and 16-bit storage (Phi and phi from numerics/normal.hpp, about 1e-15
// relative: close to correctly rounded, where PyTorch's 1 + erf loses the negative tail), from the type itself for
// f64, dd and mp (their erf and exp).
template <class T> class Gelu : public Layer<T> {
 public:
  explicit Gelu(std::string label) : Layer<T>(std::move(label)) {}
  const char* kind() const override { return "gelu"; }
  Shape output_shape(const Shape& input) const override { return input; }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  double forward_flops(const Shape& input) const override { return 20.0 * static_cast<double>(input.numel()); }

 private:
  Saved<T> input_;
};

// Pixel shuffle, space to channel (lossless downsampling of reversible networks): x (N, C, H, W) ->
// y (N, 4C, H/2, W/2), y[n][4c + 2a + b][i][j] = x[n][c][2i + a][2j + b]. A permutation: backward and inverse
// apply the reverse permutation. H and W must be even.
template <class T> class PixelShuffle : public Layer<T>, public Invertible<T> {
 public:
  explicit PixelShuffle(std::string label) : Layer<T>(std::move(label)) {}
  const char* kind() const override { return "pixel_shuffle"; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  Tensor<T> inverse(const Tensor<T>& y) override;
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                        bool want_input_grad) override;
};

// Flatten (N, C, H, W) -> (N, C H W): the same buffer seen with another shape.
template <class T> class Flatten : public Layer<T> {
 public:
  explicit Flatten(std::string label) : Layer<T>(std::move(label)) {}
  const char* kind() const override { return "flatten"; }
  Shape output_shape(const Shape& input) const override { return Shape{input.numel()}; }
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;

 private:
  Shape input_shape_;
};

}  // namespace lowmem
