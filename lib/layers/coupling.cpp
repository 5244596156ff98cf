#include "layers/coupling.hpp"

namespace lowmem {

namespace {

// A batch seen along the axis a coupling splits, as (blocks, count, inner): an image batch (N, C, H, W) splits its
// channels (N blocks of C x H W), a sequence batch (N, T, F) the features of each position (N T blocks of F x 1).
struct SplitView {
  index_t blocks, count, inner;
};
SplitView split_view(const Shape& x) {
  if (x.rank() == 4) return {x[0], x[1], x[2] * x[3]};
  return {x[0] * x[1], x[2], 1};
}
// x's shape with `count` along the split axis.
Shape with_split(const Shape& x, index_t count) {
  std::vector<index_t> dims = x.dims();
  dims[x.rank() == 4 ? 1 : 2] = count;
  return Shape(std::move(dims));
}
template <class T> index_t split_size(const Tensor<T>& x) { return split_view(x.shape()).count; }

// Entries [first, first + count) along x's split axis, as a new tensor.
template <class T> Tensor<T> channels(const Tensor<T>& x, index_t first, index_t count) {
  const SplitView v = split_view(x.shape());
  Tensor<T> part(with_split(x.shape(), count), MemoryCategory::workspace);
  if (!x.is_dry())
    for (index_t b = 0; b < v.blocks; ++b)
      std::copy(x.data() + (b * v.count + first) * v.inner, x.data() + (b * v.count + first + count) * v.inner,
                part.data() + b * count * v.inner);
  return part;
}

// x[first : first + part's count] += sign * part along the split axis, in place, one rounding per element (x must
// be the caller's own buffer: Tensor::make_own).
template <class T> void add_channels(Tensor<T>& x, index_t first, const Tensor<T>& part, int sign) {
  const SplitView v = split_view(x.shape());
  const index_t count = split_size(part);
  if (x.is_dry()) return;
  for (index_t b = 0; b < v.blocks; ++b) {
    T* to = x.data() + (b * v.count + first) * v.inner;
    const T* from = part.data() + b * count * v.inner;
    for (index_t i = 0; i < count * v.inner; ++i) to[i] = sign > 0 ? T(to[i] + from[i]) : T(to[i] - from[i]);
  }
}

// [a, b] along the split axis (a and b of equal shape).
template <class T> Tensor<T> join(const Tensor<T>& a, const Tensor<T>& b) {
  const SplitView v = split_view(a.shape());
  const index_t part = v.count * v.inner;
  Tensor<T> y(with_split(a.shape(), 2 * v.count), MemoryCategory::workspace);
  if (!a.is_dry())
    for (index_t k = 0; k < v.blocks; ++k) {
      std::copy(a.data() + k * part, a.data() + (k + 1) * part, y.data() + 2 * k * part);
      std::copy(b.data() + k * part, b.data() + (k + 1) * part, y.data() + (2 * k + 1) * part);
    }
  return y;
}

// a + sign * b elementwise, one rounding per element.
template <class T> Tensor<T> combine(const Tensor<T>& a, const Tensor<T>& b, int sign) {
  Tensor<T> r(a.shape(), MemoryCategory::workspace);
  if (!a.is_dry())
    for (index_t i = 0; i < a.numel(); ++i) r[i] = sign > 0 ? T(a[i] + b[i]) : T(a[i] - b[i]);
  return r;
}

// ---- Affine coupling's elementwise parts. x a half (N, C/2, H, W) or (N, T, F/2); st = [scale logits a, shifts t]
// along the split axis, twice x's count. ----
template <class W> W glow_scale(const W& a) { return sigmoid_of(W(a + W(2))); }

// Calls op(k, j, shift): k indexes x, j the scale logit in st of the same block; t is at j + shift.
template <class F> void for_each_pair(const Shape& x, F&& op) {
  const SplitView v = split_view(x);
  const index_t part = v.count * v.inner;
  for (index_t b = 0; b < v.blocks; ++b)
    for (index_t i = 0; i < part; ++i) op(b * part + i, 2 * b * part + i, part);
}

// y = s(a) x + t, one rounding.
template <class T> Tensor<T> scale_shift(const Tensor<T>& x, const Tensor<T>& st) {
  using W = wide_t<T>;
  Tensor<T> y(x.shape(), MemoryCategory::workspace);
  if (!x.is_dry())
    for_each_pair(x.shape(), [&](index_t k, index_t j, index_t shift) {
      y[k] = round_to<T>(W(glow_scale(round_to<W>(st[j])) * round_to<W>(x[k]) + round_to<W>(st[j + shift])));
    });
  return y;
}

// x = (y - t) / s(a), one rounding.
template <class T> Tensor<T> unscale_shift(const Tensor<T>& y, const Tensor<T>& st) {
  using W = wide_t<T>;
  Tensor<T> x(y.shape(), MemoryCategory::workspace);
  if (!y.is_dry())
    for_each_pair(y.shape(), [&](index_t k, index_t j, index_t shift) {
      x[k] = round_to<T>(W((round_to<W>(y[k]) - round_to<W>(st[j + shift])) / glow_scale(round_to<W>(st[j]))));
    });
  return x;
}

// For y = s(a) x + t and its gradient dy: dx = dy s(a), and dst = [dy x s(a) (1 - s(a)), dy], F's or G's gradient.
template <class T> std::pair<Tensor<T>, Tensor<T>> scale_shift_grads(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>& st) {
  using W = wide_t<T>;
  Tensor<T> dx(x.shape(), MemoryCategory::workspace), dst(st.shape(), MemoryCategory::workspace);
  if (!x.is_dry())
    for_each_pair(x.shape(), [&](index_t k, index_t j, index_t shift) {
      const W s = glow_scale(round_to<W>(st[j])), g = round_to<W>(dy[k]);
      dx[k] = round_to<T>(W(g * s));
      dst[j] = round_to<T>(W(g * round_to<W>(x[k]) * s * (W(1) - s)));
      dst[j + shift] = dy[k];
    });
  return {dx, dst};
}

}  // namespace

template <class T>
Coupling<T>::Coupling(std::string label, Sequential<T> f, Sequential<T> g)
    : Layer<T>(std::move(label)), f_(std::move(f)), g_(std::move(g)) {}

template <class T> void Coupling<T>::initialize(Rng& rng) {
  for (std::size_t i = 0; i < f_.size(); ++i) f_.layer(i).initialize(rng);
  for (std::size_t i = 0; i < g_.size(); ++i) g_.layer(i).initialize(rng);
}

template <class T> std::vector<Param<T>*> Coupling<T>::params() {
  std::vector<Param<T>*> all = f_.params();
  for (Param<T>* p : g_.params()) all.push_back(p);
  return all;
}

template <class T> std::vector<std::pair<std::string, Layer<T>*>> Coupling<T>::children() {
  std::vector<std::pair<std::string, Layer<T>*>> c;
  for (std::size_t i = 0; i < f_.size(); ++i) c.emplace_back("f/" + std::to_string(i), &f_.layer(i));
  for (std::size_t i = 0; i < g_.size(); ++i) c.emplace_back("g/" + std::to_string(i), &g_.layer(i));
  return c;
}

Shape coupling_half(const std::string& label, const Shape& in, index_t factor) {
  if (in.rank() != 2 && in.rank() != 3)
    shape_error(label, "splits the channels of an image (C, H, W) or the features of a sequence (T, F), got " + in.str());
  const std::size_t axis = in.rank() == 3 ? 0 : 1;
  if (in[axis] % 2 != 0)
    shape_error(label, std::string("splits its ") + (axis == 0 ? "channels" : "features") +
                           " in halves and needs an even count, got " + in.str());
  std::vector<index_t> dims = in.dims();
  dims[axis] = in[axis] / 2 * factor;
  return Shape(std::move(dims));
}

template <class T>
Shape Coupling<T>::coupling_shape(const Shape& in, index_t out_factor, const std::string& what) const {
  const Shape half = coupling_half(this->label(), in, 1), out = coupling_half(this->label(), in, out_factor);
  if (f_.input_shape() != half || f_.output_shape() != out || g_.input_shape() != half || g_.output_shape() != out)
    shape_error(this->label(), "F and G must map " + half.str() + " to " + out.str() + what + " (F: " +
                                   f_.input_shape().str() + " -> " + f_.output_shape().str() + ", G: " +
                                   g_.input_shape().str() + " -> " + g_.output_shape().str() + ")");
  return in;
}

template <class T> RunContext Coupling<T>::forward_context(const RunContext& ctx) {
  forward_ = ctx;
  RunContext inner = ctx;
  if (ctx.keep != RunContext::Keep::all) inner.keep = RunContext::Keep::nothing;
  return inner;
}

template <class T> RunContext Coupling<T>::backprop_context(const RunContext& ctx) {
  RunContext replay = ctx;
  replay.update_statistics = false;
  replay.keep = RunContext::Keep::all;
  replay.recompute_between_runs = false;  // F and G are being recomputed already: once is enough
  return replay;
}

template <class T> Shape AdditiveCoupling<T>::output_shape(const Shape& in) const {
  return this->coupling_shape(in, 1, "");
}

// Every step below overwrites one half of a single buffer (x's, or dy's, or y's: Tensor::make_own), so a block
// holds its input or output once, plus one half for F's or G's input; F and G see contiguous copies of a half.
template <class T> Tensor<T> AdditiveCoupling<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const RunContext inner = this->forward_context(ctx);
  const index_t half = split_size(x) / 2;
  Tensor<T>& y = x.make_own(MemoryCategory::workspace);
  add_channels(y, 0, this->f_.forward(channels(y, half, half), inner), +1);     // y1 = x1 + F(x2)
  add_channels(y, half, this->g_.forward(channels(y, 0, half), inner), +1);     // y2 = x2 + G(y1)
  return std::move(y);
}

template <class T> Tensor<T> AdditiveCoupling<T>::backward(Tensor<T> dy, const RunContext& ctx, bool) {
  const index_t half = split_size(dy) / 2;
  Tensor<T>& dx = dy.make_own(MemoryCategory::workspace);
  add_channels(dx, 0, this->g_.backward(channels(dx, half, half), ctx, true), +1);  // g1 = dy1 + G'^T dy2
  add_channels(dx, half, this->f_.backward(channels(dx, 0, half), ctx, true), +1);  // dx2 = dy2 + F'^T g1
  return std::move(dx);
}

template <class T> Tensor<T> AdditiveCoupling<T>::inverse(const Tensor<T>& y) {
  // F and G are recomputed in training mode on the rebuilt inputs: batch norm inside them then uses batch
  // statistics that equal the forward's in exact arithmetic, and must not update its running statistics twice.
  const index_t half = split_size(y) / 2;
  const RunContext replay = this->inverse_context();
  Tensor<T> x = y.clone(MemoryCategory::workspace);  // the caller keeps y
  add_channels(x, half, this->g_.forward(channels(x, 0, half), replay), -1);  // x2 = y2 - G(y1)
  add_channels(x, 0, this->f_.forward(channels(x, half, half), replay), -1);  // x1 = y1 - F(x2)
  return x;
}

// x is rebuilt over y's buffer and dL/dx over dy's (when nothing else holds them), half by half.
template <class T>
Reconstructed<T> AdditiveCoupling<T>::backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx, bool) {
  const index_t half = split_size(y) / 2;
  const RunContext replay = this->backprop_context(ctx);
  Tensor<T>& x = y.make_own(MemoryCategory::workspace);
  Tensor<T>& dx = dy.make_own(MemoryCategory::workspace);
  add_channels(x, half, this->g_.forward(channels(x, 0, half), replay), -1);          // x2 = y2 - G(y1)
  add_channels(dx, 0, this->g_.backward(channels(dx, half, half), replay, true), +1);  // g1 = dy1 + G'^T dy2
  add_channels(x, 0, this->f_.forward(channels(x, half, half), replay), -1);          // x1 = y1 - F(x2)
  add_channels(dx, half, this->f_.backward(channels(dx, 0, half), replay, true), +1);  // dx2 = dy2 + F'^T g1
  return {std::move(x), std::move(dx)};
}

template <class T> Shape AffineCoupling<T>::output_shape(const Shape& in) const {
  return this->coupling_shape(in, 2, " (scale logits and shifts)");
}

template <class T> Tensor<T> AffineCoupling<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const RunContext inner = this->forward_context(ctx);
  const index_t half = split_size(x) / 2;
  const Tensor<T> x1 = channels(x, 0, half), x2 = channels(x, half, half);
  const Tensor<T> f = this->f_.forward(x2, inner);
  const Tensor<T> y1 = scale_shift(x1, f);
  const Tensor<T> g = this->g_.forward(y1, inner);
  const Tensor<T> y2 = scale_shift(x2, g);
  if (ctx.keeps()) {
    x1_.keep(x1);
    x2_.keep(x2);
    f_out_.keep(f);
    g_out_.keep(g);
  }
  return join(y1, y2);
}

template <class T> Tensor<T> AffineCoupling<T>::backward(Tensor<T> dy, const RunContext& ctx, bool) {
  const index_t half = split_size(dy) / 2;
  const auto [dx2_direct, dg] = scale_shift_grads(channels(dy, half, half), x2_.get(), g_out_.get());
  const Tensor<T> u1 = combine(channels(dy, 0, half), this->g_.backward(dg, ctx, true), +1);
  const auto [dx1, df] = scale_shift_grads(u1, x1_.get(), f_out_.get());
  const Tensor<T> dx2 = combine(dx2_direct, this->f_.backward(df, ctx, true), +1);
  for (Saved<T>* saved : {&x1_, &x2_, &f_out_, &g_out_}) saved->release();
  return join(dx1, dx2);
}

template <class T> Tensor<T> AffineCoupling<T>::inverse(const Tensor<T>& y) {
  const index_t half = split_size(y) / 2;
  const RunContext replay = this->inverse_context();
  const Tensor<T> y1 = channels(y, 0, half);
  const Tensor<T> x2 = unscale_shift(channels(y, half, half), this->g_.forward(y1, replay));
  return join(unscale_shift(y1, this->f_.forward(x2, replay)), x2);
}

// RevNet's order, as in the additive block: G recomputed and backpropagated, then F on the rebuilt x2.
template <class T>
Reconstructed<T> AffineCoupling<T>::backward_from_output(Tensor<T> y, Tensor<T> dy,
                                                         const RunContext& ctx, bool) {
  const index_t half = split_size(y) / 2;
  const RunContext replay = this->backprop_context(ctx);
  const Tensor<T> y1 = channels(y, 0, half);
  const Tensor<T> g = this->g_.forward(y1, replay);
  const Tensor<T> x2 = unscale_shift(channels(y, half, half), g);
  const auto [dx2_direct, dg] = scale_shift_grads(channels(dy, half, half), x2, g);
  const Tensor<T> u1 = combine(channels(dy, 0, half), this->g_.backward(dg, replay, true), +1);
  const Tensor<T> f = this->f_.forward(x2, replay);
  const Tensor<T> x1 = unscale_shift(y1, f);
  const auto [dx1, df] = scale_shift_grads(u1, x1, f);
  const Tensor<T> dx2 = combine(dx2_direct, this->f_.backward(df, replay, true), +1);
  return {join(x1, x2), join(dx1, dx2)};
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Coupling)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(AdditiveCoupling)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(AffineCoupling)

}  // namespace lowmem
