#include "layers/coupling.hpp"

namespace lowmem {

namespace {

// Channels [first, first + count) of x (N, C, H, W) as a new (N, count, H, W) tensor.
template <class T> Tensor<T> channels(const Tensor<T>& x, index_t first, index_t count) {
  const index_t n = x.dim(0), c = x.dim(1), area = x.dim(2) * x.dim(3);
  Tensor<T> part(Shape{n, count, x.dim(2), x.dim(3)}, MemoryCategory::workspace);
  if (!x.is_dry())
    for (index_t s = 0; s < n; ++s)
      std::copy(x.data() + (s * c + first) * area, x.data() + (s * c + first + count) * area,
                part.data() + s * count * area);
  return part;
}

// [a, b] along channels.
template <class T> Tensor<T> join(const Tensor<T>& a, const Tensor<T>& b) {
  const index_t n = a.dim(0), half = a.dim(1), area = a.dim(2) * a.dim(3);
  Tensor<T> y(Shape{n, 2 * half, a.dim(2), a.dim(3)}, MemoryCategory::workspace);
  if (!a.is_dry())
    for (index_t s = 0; s < n; ++s) {
      std::copy(a.data() + s * half * area, a.data() + (s + 1) * half * area, y.data() + 2 * s * half * area);
      std::copy(b.data() + s * half * area, b.data() + (s + 1) * half * area, y.data() + (2 * s + 1) * half * area);
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

}  // namespace

template <class T>
AdditiveCoupling<T>::AdditiveCoupling(std::string label, Sequential<T> f, Sequential<T> g)
    : Layer<T>(std::move(label)), f_(std::move(f)), g_(std::move(g)) {}

template <class T> Shape AdditiveCoupling<T>::output_shape(const Shape& in) const {
  expect_rank(this->label(), in, 3);
  if (in[0] % 2 != 0) shape_error(this->label(), "splits its channels in halves and needs an even count, got " + in.str());
  const Shape half{in[0] / 2, in[1], in[2]};
  if (f_.input_shape() != half || f_.output_shape() != half || g_.input_shape() != half || g_.output_shape() != half)
    shape_error(this->label(), "F and G must map " + half.str() + " to itself (F: " + f_.input_shape().str() + " -> " +
                                   f_.output_shape().str() + ", G: " + g_.input_shape().str() + " -> " +
                                   g_.output_shape().str() + ")");
  return in;
}

template <class T> void AdditiveCoupling<T>::initialize(Rng& rng) {
  for (std::size_t i = 0; i < f_.size(); ++i) f_.layer(i).initialize(rng);
  for (std::size_t i = 0; i < g_.size(); ++i) g_.layer(i).initialize(rng);
}

template <class T> std::vector<Param<T>*> AdditiveCoupling<T>::params() {
  std::vector<Param<T>*> all = f_.params();
  for (Param<T>* p : g_.params()) all.push_back(p);
  return all;
}

template <class T> std::vector<std::pair<std::string, Layer<T>*>> AdditiveCoupling<T>::children() {
  std::vector<std::pair<std::string, Layer<T>*>> c;
  for (std::size_t i = 0; i < f_.size(); ++i) c.emplace_back("f/" + std::to_string(i), &f_.layer(i));
  for (std::size_t i = 0; i < g_.size(); ++i) c.emplace_back("g/" + std::to_string(i), &g_.layer(i));
  return c;
}

template <class T> Tensor<T> AdditiveCoupling<T>::forward(const Tensor<T>& x, const RunContext& ctx) {
  accumulate_ = ctx.accumulate;
  RunContext inner = ctx;  // F and G are recomputed, never inverted, if this block is rebuilt
  if (ctx.keep != RunContext::Keep::all) inner.keep = RunContext::Keep::nothing;
  const index_t half = x.dim(1) / 2;
  const Tensor<T> x2 = channels(x, half, half);
  const Tensor<T> y1 = combine(channels(x, 0, half), f_.forward(x2, inner), +1);
  const Tensor<T> y2 = combine(x2, g_.forward(y1, inner), +1);
  return join(y1, y2);
}

template <class T> Tensor<T> AdditiveCoupling<T>::backward(const Tensor<T>& dy, const RunContext& ctx, bool) {
  const index_t half = dy.dim(1) / 2;
  const Tensor<T> dy2 = channels(dy, half, half);
  const Tensor<T> g1 = combine(channels(dy, 0, half), g_.backward(dy2, ctx, true), +1);
  const Tensor<T> dx2 = combine(dy2, f_.backward(g1, ctx, true), +1);
  return join(g1, dx2);
}

template <class T> Tensor<T> AdditiveCoupling<T>::inverse(const Tensor<T>& y) {
  // F and G are recomputed in training mode on the rebuilt inputs: batch norm inside them then uses batch
  // statistics that equal the forward's in exact arithmetic, and must not update its running statistics twice.
  const index_t half = y.dim(1) / 2;
  const RunContext replay{true, accumulate_, /*update_statistics=*/false, RunContext::Keep::nothing};
  const Tensor<T> y1 = channels(y, 0, half);
  const Tensor<T> x2 = combine(channels(y, half, half), g_.forward(y1, replay), -1);
  const Tensor<T> x1 = combine(y1, f_.forward(x2, replay), -1);
  return join(x1, x2);
}

template <class T>
Reconstructed<T> AdditiveCoupling<T>::backward_from_output(const Tensor<T>& y, const Tensor<T>& dy,
                                                           const RunContext& ctx, bool) {
  const index_t half = y.dim(1) / 2;
  RunContext replay = ctx;
  replay.update_statistics = false;
  replay.keep = RunContext::Keep::all;
  const Tensor<T> y1 = channels(y, 0, half), dy2 = channels(dy, half, half);
  const Tensor<T> x2 = combine(channels(y, half, half), g_.forward(y1, replay), -1);
  const Tensor<T> g1 = combine(channels(dy, 0, half), g_.backward(dy2, replay, true), +1);
  const Tensor<T> x1 = combine(y1, f_.forward(x2, replay), -1);
  const Tensor<T> dx2 = combine(dy2, f_.backward(g1, replay, true), +1);
  return {join(x1, x2), join(g1, dx2)};
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(AdditiveCoupling)

}  // namespace lowmem
