#pragma once
#include <memory>

#include "layers/sequential.hpp"

namespace lowmem {

// The per-sample shape of one half of a coupling's input, times `factor` along the split axis: an image (C, H, W)
// splits its channels, a sequence (T, F) the features of each position (Reformer's reversible Transformer block,
// Kitaev et al. 2020, with the two streams as halves of the width). Throws SizeError naming `label` on any other
// shape or an odd count.
Shape coupling_half(const std::string& label, const Shape& in, index_t factor = 1);

// What both coupling blocks share: x split into halves x1, x2 along its channels or features; sub-networks F (on x2) and G (on
// y1); their parameters; and the contexts in which F and G are recomputed.
template <class T> class Coupling : public Layer<T>, public Invertible<T> {
 public:
  Coupling(std::string label, Sequential<T> f, Sequential<T> g);
  void initialize(Rng& rng) override;
  std::vector<Param<T>*> params() override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;  // "f/<i>", "g/<i>"
  double forward_flops(const Shape& in) const override {  // F, G and the elementwise combinations
    const Shape half = coupling_half(this->label(), in);
    return f_.forward_flops(half) + g_.forward_flops(half) + 2.0 * static_cast<double>(in.numel());
  }

 protected:
  // Checks x's shape and that F and G map (C/2, H, W) to (C/2 * out_factor, H, W); returns x's shape.
  Shape coupling_shape(const Shape& in, index_t out_factor, const std::string& what) const;
  // F's and G's context in this block's forward: if the block is rebuilt later, they are recomputed, never
  // inverted, and keep nothing. Records the context for the inverse to replay.
  RunContext forward_context(const RunContext& ctx);
  // F and G recomputed on rebuilt values: training mode, running statistics untouched; for inverse (keep
  // nothing) or for backprop by reconstruction (keep what their backward needs, under ctx's own policy).
  RunContext inverse_context() const {
    RunContext ctx = forward_;
    ctx.training = true;
    ctx.update_statistics = false;
    ctx.keep = RunContext::Keep::nothing;
    ctx.reconstruct = ctx.recompute_between_runs = false;
    ctx.time_schedule = nullptr;
    return ctx;
  }
  static RunContext backprop_context(const RunContext& ctx);

  Sequential<T> f_, g_;
  RunContext forward_;  // of the last forward, whose settings (accumulation, bands, step) inverse replays
};

// Additive coupling (RevNet, Gomez et al. 2017): the channels of x (N, C, H, W), or the features of each position of
// a sequence (N, T, F), are split into halves x1, x2 and
//   y1 = x1 + F(x2),   y2 = x2 + G(y1),   y = [y1, y2];
// inverse: x2 = y2 - G(y1), x1 = y1 - F(x2). F and G are any chains of layers mapping (C/2, H, W) (or (T, F/2))
// to itself: in a reversible Transformer F is layer norm + attention and G layer norm + MLP.
// Backward with dy = [dy1, dy2]: g1 = dy1 + G'(y1)^T dy2, dx1 = g1, dx2 = dy2 + F'(x2)^T g1.
// Backprop by reconstruction (RevNet's algorithm) interleaves the two: G is recomputed on y1 and backpropagated,
// then F on the rebuilt x2, so only one of F's and G's activations is held at a time; inside F and G the run's
// policy applies again (hybrid networks rebuild F's and G's own activations layer by layer).
template <class T> class AdditiveCoupling : public Coupling<T> {
 public:
  using Coupling<T>::Coupling;
  const char* kind() const override { return "coupling"; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  Tensor<T> inverse(const Tensor<T>& y) override;
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                        bool want_input_grad) override;
};

// Affine coupling (Dinh et al. Real NVP; scale as in Glow, Kingma & Dhariwal 2018): x = [x1, x2] split by channels,
//   [a1, t1] = F(x2),  y1 = s(a1) x1 + t1,    [a2, t2] = G(y1),  y2 = s(a2) x2 + t2,   s(a) = sigmoid(a + 2),
// F and G map (C/2, H, W) to (C, H, W) (or (T, F/2) to (T, F)): the first half of the output channels (features)
// are scale logits a, the rest shifts t.
// Inverse: x2 = (y2 - t2) / s(a2), x1 = (y1 - t1) / s(a1): a small scale amplifies the error of y (PAPERS.md 3).
// Backward, with u = y's gradient: dx1 = u1 s(a1) after u1 = dy1 + G'^T [dy2 x2 s'(a2), dy2];
//   dx2 = dy2 s(a2) + F'^T [u1 x1 s'(a1), u1],  s'(a) = s (1 - s).
template <class T> class AffineCoupling : public Coupling<T> {
 public:
  using Coupling<T>::Coupling;
  const char* kind() const override { return "affine_coupling"; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  Tensor<T> inverse(const Tensor<T>& y) override;
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                        bool want_input_grad) override;

 private:
  Saved<T> x1_, x2_, f_out_, g_out_;  // stored-activation backward: the halves and F's and G's outputs
};

}  // namespace lowmem
