#pragma once
#include <memory>

#include "layers/sequential.hpp"

namespace lowmem {

// Additive coupling (RevNet, Gomez et al. 2017): the channels of x (N, C, H, W) are split into halves x1, x2 and
//   y1 = x1 + F(x2),   y2 = x2 + G(y1),   y = [y1, y2];
// inverse: x2 = y2 - G(y1), x1 = y1 - F(x2). F and G are any chains of layers mapping (C/2, H, W) to itself.
// Backward with dy = [dy1, dy2]: g1 = dy1 + G'(y1)^T dy2, dx1 = g1, dx2 = dy2 + F'(x2)^T g1.
// Backprop by reconstruction (RevNet's algorithm) interleaves the two: G is recomputed on y1 and backpropagated,
// then F on the rebuilt x2, so only one of F's and G's activations is held at a time; inside F and G the run's
// policy applies again (hybrid networks rebuild F's and G's own activations layer by layer).
template <class T> class AdditiveCoupling : public Layer<T>, public Invertible<T> {
 public:
  AdditiveCoupling(std::string label, Sequential<T> f, Sequential<T> g);
  const char* kind() const override { return "coupling"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(const Tensor<T>& x, const RunContext& ctx) override;
  Tensor<T> backward(const Tensor<T>& dy, const RunContext& ctx, bool want_input_grad) override;
  Tensor<T> inverse(const Tensor<T>& y) override;
  Reconstructed<T> backward_from_output(const Tensor<T>& y, const Tensor<T>& dy, const RunContext& ctx,
                                        bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;

 private:
  Sequential<T> f_, g_;
  Accumulate accumulate_ = Accumulate::f32;  // of the last forward, which inverse replays
};

// Affine coupling (Dinh et al. Real NVP; scale as in Glow, Kingma & Dhariwal 2018): x = [x1, x2] split by channels,
//   [a1, t1] = F(x2),  y1 = s(a1) x1 + t1,    [a2, t2] = G(y1),  y2 = s(a2) x2 + t2,   s(a) = sigmoid(a + 2),
// F and G map (C/2, H, W) to (C, H, W): the first C/2 output channels are scale logits a, the rest shifts t.
// Inverse: x2 = (y2 - t2) / s(a2), x1 = (y1 - t1) / s(a1): a small scale amplifies the error of y (PAPERS.md 3).
// Backward, with u = y's gradient: dx1 = u1 s(a1) after u1 = dy1 + G'^T [dy2 x2 s'(a2), dy2];
//   dx2 = dy2 s(a2) + F'^T [u1 x1 s'(a1), u1],  s'(a) = s (1 - s).
template <class T> class AffineCoupling : public Layer<T>, public Invertible<T> {
 public:
  AffineCoupling(std::string label, Sequential<T> f, Sequential<T> g);
  const char* kind() const override { return "affine_coupling"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(const Tensor<T>& x, const RunContext& ctx) override;
  Tensor<T> backward(const Tensor<T>& dy, const RunContext& ctx, bool want_input_grad) override;
  Tensor<T> inverse(const Tensor<T>& y) override;
  Reconstructed<T> backward_from_output(const Tensor<T>& y, const Tensor<T>& dy, const RunContext& ctx,
                                        bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;

 private:
  Sequential<T> f_, g_;
  Accumulate accumulate_ = Accumulate::f32;
  Saved<T> x1_, x2_, f_out_, g_out_;  // stored-activation backward: the halves and F's and G's outputs
};

}  // namespace lowmem
