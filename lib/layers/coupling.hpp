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

}  // namespace lowmem
