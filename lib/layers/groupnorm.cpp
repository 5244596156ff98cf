#include "layers/groupnorm.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

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
  if (area == 1 && affine_ && !x.is_dry()) {
    param_grads_one_value_per_channel(x, dy, mean, inv_std, ctx.accumulate);
  } else
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
    if (area == 1 && !x.is_dry()) input_grad_one_value_per_channel(x, dy, dx, mean, inv_std, ctx.accumulate);
    else
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

namespace {
// a b + c rounded once where W has a hardware FMA (float, double: what GCC's contraction does), else twice.
template <class W> W multiply_add(const W& a, const W& b, const W& c) {
  if constexpr (std::is_floating_point_v<W>) return std::fma(a, b, c);
  else return W(W(a * b) + c);
}
}  // namespace

// With one value per channel and sample (area 1: a layer norm over the features of each position), each sample
// adds one value to a channel's LaneSum, into its first lane: the sums run over the samples in order, and the
// other lanes add zeros. The same sums here, formed for a block of channels at once, so that they vectorise
// across channels instead of walking each channel's values C apart: the same bits (test
// GroupNorm.OneValuePerChannelSumsTheSamplesInOrder; lane + dy x^ fused as GCC fuses the LaneSum's).
template <class T>
void GroupNorm<T>::param_grads_one_value_per_channel(const Tensor<T>& x, const Tensor<T>& dy, const Tensor<W>& mean,
                                                     const Tensor<W>& inv_std, Accumulate mode) {
  const index_t n = x.dim(0), per_group = channels_ / groups_;
  constexpr index_t block = 64;  // channels a task sums: two rows of partial sums stay in L1
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t c0 = 0; c0 < channels_; c0 += block) {
    const index_t c1 = std::min(channels_, c0 + block);
    W sum_dy[block], sum_dy_xhat[block];
    std::fill(sum_dy, sum_dy + block, W(0));
    std::fill(sum_dy_xhat, sum_dy_xhat + block, W(0));
    for (index_t s = 0; s < n; ++s) {
      const T* xs = x.data() + s * channels_;
      const T* dys = dy.data() + s * channels_;
      for (index_t g0 = c0; g0 < c1;) {  // the channels of one group share its statistics
        const index_t sg = s * groups_ + g0 / per_group, g1 = std::min(c1, (g0 / per_group + 1) * per_group);
        const W m = mean[sg], inv = inv_std[sg];
        for (index_t c = g0; c < g1; ++c) {
          const W d = round_to<W>(dys[c]), xhat = W((round_to<W>(xs[c]) - m) * inv);
          sum_dy[c - c0] = accumulate_round<T>(W(sum_dy[c - c0] + d), mode);
          sum_dy_xhat[c - c0] = accumulate_round<T>(multiply_add(d, xhat, sum_dy_xhat[c - c0]), mode);
        }
        g0 = g1;
      }
    }
    for (index_t c = c0; c < c1; ++c) {
      gamma_.grad[c] = round_to<T>(W(round_to<W>(gamma_.grad[c]) + sum_dy_xhat[c - c0]));
      beta_.grad[c] = round_to<T>(W(round_to<W>(beta_.grad[c]) + sum_dy[c - c0]));
    }
  }
}

// dx with one value per channel and sample: a group's sums over its channels run in channel order (each channel
// adds one value to the first lane of the LaneSum above), a chain of dependent additions each; eight groups'
// chains side by side keep the adder busy. The same bits (test GroupNorm.OneValuePerChannelSumsTheSamplesInOrder),
// including where GCC fuses the LaneSum's lane + g dy and lane + (g dy) x^ into FMAs (it contracts a * b + c,
// -ffp-contract=fast being its default for C++): written out here as multiply_add, since g dy has two uses here
// and the compiler would not fuse it. (Built by a compiler that does not contract across statements, clang by
// default, the generic path's sums were not fused, and there these bits differ from that path's.)
template <class T>
void GroupNorm<T>::input_grad_one_value_per_channel(const Tensor<T>& x, const Tensor<T>& dy, Tensor<T>& dx,
                                                    const Tensor<W>& mean, const Tensor<W>& inv_std, Accumulate mode) {
  const index_t per_group = channels_ / groups_, groups = x.dim(0) * groups_;
  const W count = round_to<W>(static_cast<double>(per_group));
  constexpr index_t block = 8;
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t sg0 = 0; sg0 < groups; sg0 += block) {
    const index_t m = std::min(block, groups - sg0);
    // Group sg = sample s, group g holds the values [s C + g C/G, s C + (g + 1) C/G). Without affine x holds x^:
    // (v - 0) * 1 gives v's bits, so one expression serves both.
    index_t first[block], c0[block];
    W shift[block], scale[block], sum[block], sum_xhat[block];  // sums of dx^ and dx^ x^ over each group
    for (index_t b = 0; b < m; ++b) {
      const index_t sg = sg0 + b;
      c0[b] = (sg % groups_) * per_group;
      first[b] = (sg / groups_) * channels_ + c0[b];
      shift[b] = affine_ ? mean[sg] : W(0);
      scale[b] = affine_ ? inv_std[sg] : W(1);
      sum[b] = sum_xhat[b] = W(0);
    }
    for (index_t k = 0; k < per_group; ++k) {
      for (index_t b = 0; b < m; ++b) {
        const index_t at = first[b] + k;
        const W g = gamma(c0[b] + k), dyv = round_to<W>(dy[at]), d = W(g * dyv);
        const W xhat = W((round_to<W>(x[at]) - shift[b]) * scale[b]);
        sum[b] = accumulate_round<T>(multiply_add(g, dyv, sum[b]), mode);
        sum_xhat[b] = accumulate_round<T>(multiply_add(d, xhat, sum_xhat[b]), mode);
      }
    }
    for (index_t b = 0; b < m; ++b) {
      const W mean_d = sum[b] / count, mean_d_xhat = sum_xhat[b] / count, inv = inv_std[sg0 + b];
      for (index_t k = 0; k < per_group; ++k) {
        const index_t at = first[b] + k;
        const W xhat = W((round_to<W>(x[at]) - shift[b]) * scale[b]);
        // (g dy - mean_d - x^ mean_d_xhat) / sigma, fused twice as GCC fuses the generic path's expression
        const W r = multiply_add(W(-xhat), mean_d_xhat, multiply_add(gamma(c0[b] + k), round_to<W>(dy[at]), W(-mean_d)));
        dx[at] = round_to<T>(W(r * inv));
      }
    }
  }
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(GroupNorm)

}  // namespace lowmem
