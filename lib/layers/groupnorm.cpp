#include "layers/groupnorm.hpp"

#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {

template <class T>
GroupNorm<T>::GroupNorm(std::string label, index_t channels, index_t groups, double eps, bool affine)
    : Layer<T>(std::move(label)),
      channels_(channels),
      groups_(groups),
      eps_(eps),
      affine_(affine),
      gamma_(affine ? make_param<T>("weight", Shape{channels}) : Param<T>{}),
      beta_(affine ? make_param<T>("bias", Shape{channels}) : Param<T>{}) {
  if (groups < 1 || channels % groups != 0)
    shape_error(this->label(), std::to_string(groups) + " groups do not split " + std::to_string(channels) +
                                   " channels evenly");
}

template <class T> Shape GroupNorm<T>::output_shape(const Shape& in) const {
  expect_channels(this->label(), in, channels_);
  return in;
}

template <class T> void GroupNorm<T>::initialize(Rng&) {
  if (!affine_) return;
  gamma_.value.fill(T(1));
  beta_.value.fill(T(0));
}

// Sample s, group g holds the values [(s C + g C/G) area, (s C + (g + 1) C/G) area): contiguous in NCHW.
template <class T> Tensor<T> GroupNorm<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), area = x.numel() / (n * channels_), per_group = channels_ / groups_;
  const index_t size = per_group * area;  // values per group
  // With affine, x is kept (first: y takes x's buffer only if nothing keeps x). Without, y = x^ itself is kept
  // (below): it is the next layer's input, which a Proxy Norm there keeps too, so the two share one buffer.
  if (ctx.keeps() && affine_) kept_.keep(x);
  Tensor<T> y = x.overwritable(MemoryCategory::workspace);  // per group: statistics of x, then y over x
  // Statistics as flat vectors (N groups): Saved compresses only rank >= 2 tensors, and these must stay exact.
  Tensor<W> mean(Shape{n * groups_}, MemoryCategory::workspace), inv_std(Shape{n * groups_}, MemoryCategory::workspace);
  const W eps = round_to<W>(eps_), count = round_to<W>(static_cast<double>(size));
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t sg = 0; sg < (x.is_dry() ? 0 : n * groups_); ++sg) {
    const index_t first = sg * size;  // (s C + g C/G) area
    const T* xg = x.data() + first;
    LaneSum<T> sum, sum_squares;
    sum.add(size, ctx.accumulate, [&](index_t i) { return round_to<W>(xg[i]); });
    const W m = sum.total(ctx.accumulate) / count;
    sum_squares.add(size, ctx.accumulate, [&](index_t i) {
      const W d = round_to<W>(xg[i]) - m;
      return W(d * d);
    });
    const W squares = sum_squares.total(ctx.accumulate);
    mean[sg] = m;
    inv_std[sg] = W(1) / sqrt_of(W(squares / count + eps));
    const index_t c0 = (sg % groups_) * per_group;
    for (index_t k = 0; k < per_group; ++k) {
      const W g = gamma(c0 + k), b = affine_ ? round_to<W>(beta_.value[c0 + k]) : W(0);
      for (index_t i = 0; i < area; ++i) {
        const index_t at = first + k * area + i;
        y[at] = round_to<T>(W(g * ((round_to<W>(x[at]) - m) * inv_std[sg]) + b));
      }
    }
  }
  if (ctx.keeps()) {
    if (!affine_) kept_.keep(y);
    else mean_.keep(mean);  // (without affine, backward reads x^ itself)
    inv_std_.keep(inv_std);
  }
  return y;
}

// Per group, with x^ = (x - mean) / sigma over its M values and dx^ = gamma_c dy:
//   dx = (dx^ - mean(dx^) - x^ mean(dx^ x^)) / sigma;  per channel: dbeta = sum dy, dgamma = sum dy x^.
template <class T> Tensor<T> GroupNorm<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<T> x = kept_.take();  // without affine: x^
  const Tensor<W>& inv_std = inv_std_.get();
  const Tensor<W> mean = affine_ ? mean_.get() : Tensor<W>();
  const index_t n = x.dim(0), area = x.numel() / (n * channels_), per_group = channels_ / groups_;
  const index_t size = per_group * area;
  const W count = round_to<W>(static_cast<double>(size));
  auto xhat = [&](index_t s, index_t c, index_t i) {
    const W v = round_to<W>(x[(s * channels_ + c) * area + i]);
    if (!affine_) return v;
    const index_t sg = s * groups_ + c / per_group;
    return W((v - mean[sg]) * inv_std[sg]);
  };
  // Parameter gradients, channel by channel (each thread owns its channels; samples summed in order).
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t c = 0; c < (x.is_dry() || !affine_ ? 0 : channels_); ++c) {
    LaneSum<T> sum_dy, sum_dy_xhat;
    for (index_t s = 0; s < n; ++s) {
      const T* dys = dy.data() + (s * channels_ + c) * area;
      sum_dy.add(area, ctx.accumulate, [&](index_t i) { return round_to<W>(dys[i]); });
      sum_dy_xhat.add(area, ctx.accumulate, [&](index_t i) { return W(round_to<W>(dys[i]) * xhat(s, c, i)); });
    }
    const W dbeta = sum_dy.total(ctx.accumulate), dgamma = sum_dy_xhat.total(ctx.accumulate);
    gamma_.grad[c] = round_to<T>(W(round_to<W>(gamma_.grad[c]) + dgamma));
    beta_.grad[c] = round_to<T>(W(round_to<W>(beta_.grad[c]) + dbeta));
  }
  Tensor<T> dx;
  if (want_input_grad) {
    dx = dy.overwritable(MemoryCategory::workspace);  // per group: sums of dy, then dx over dy
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
    for (index_t sg = 0; sg < (x.is_dry() ? 0 : n * groups_); ++sg) {
      const index_t s = sg / groups_, c0 = (sg % groups_) * per_group;
      LaneSum<T> sum, sum_xhat;  // of dx^ and dx^ x^ over the group
      for (index_t k = 0; k < per_group; ++k) {
        const W g = gamma(c0 + k);
        const T* dys = dy.data() + (s * channels_ + c0 + k) * area;
        sum.add(area, ctx.accumulate, [&](index_t i) { return W(g * round_to<W>(dys[i])); });
        sum_xhat.add(area, ctx.accumulate, [&](index_t i) { return W(g * round_to<W>(dys[i]) * xhat(s, c0 + k, i)); });
      }
      const W mean_d = sum.total(ctx.accumulate) / count, mean_d_xhat = sum_xhat.total(ctx.accumulate) / count;
      for (index_t k = 0; k < per_group; ++k) {
        const W g = gamma(c0 + k);
        for (index_t i = 0; i < area; ++i) {
          const index_t at = (s * channels_ + c0 + k) * area + i;
          const W d = g * round_to<W>(dy[at]);
          dx[at] = round_to<T>(W((d - mean_d - xhat(s, c0 + k, i) * mean_d_xhat) * inv_std[sg]));
        }
      }
    }
  }
  if (affine_) mean_.release();
  inv_std_.release();
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(GroupNorm)

}  // namespace lowmem
