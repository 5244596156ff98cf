#include "layers/batchnorm.hpp"

#include "numerics/error.hpp"
#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {

template <class T>
BatchNorm<T>::BatchNorm(std::string label, index_t channels, double momentum, double eps, double scale_eps)
    : Layer<T>(std::move(label)),
      channels_(channels),
      momentum_(momentum),
      eps_(eps),
      scale_eps_(scale_eps),
      gamma_(make_param<T>("weight", Shape{channels})),
      beta_(make_param<T>("bias", Shape{channels})),
      running_mean_(Shape{channels}, MemoryCategory::weights),
      running_var_(Shape{channels}, MemoryCategory::weights) {}

template <class T> Shape BatchNorm<T>::output_shape(const Shape& in) const {
  expect_channels(this->label(), in, channels_);
  return in;
}

template <class T> void BatchNorm<T>::initialize(Rng&) {
  gamma_.value.fill(T(1));
  beta_.value.fill(T(0));
  running_mean_.fill(T(0));
  running_var_.fill(T(1));
}

template <class T> typename BatchNorm<T>::W BatchNorm<T>::scale(index_t c) const {
  const W g = round_to<W>(gamma_.value[c]);
  if (scale_eps_ < 0) return g;
  return W((g < W(0) ? W(-g) : g) + round_to<W>(scale_eps_));
}

template <class T> typename BatchNorm<T>::W BatchNorm<T>::scale_slope(index_t c) const {
  if (scale_eps_ < 0) return W(1);
  return round_to<W>(gamma_.value[c]) < W(0) ? W(-1) : W(1);
}

template <class T> Tensor<T> BatchNorm<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), area = x.numel() / (n * channels_), count = n * area;
  auto at = [&](index_t s, index_t c, index_t i) { return (s * channels_ + c) * area + i; };
  if (ctx.keeps()) input_.keep(x);  // first: y takes x's buffer only if nothing keeps x
  Tensor<T> y = x.overwritable(MemoryCategory::workspace);  // per channel: statistics of x, then y over x
  Tensor<W> mean(Shape{channels_}, MemoryCategory::workspace), inv_std(Shape{channels_}, MemoryCategory::workspace);
  const W eps = round_to<W>(eps_);
  last_forward_training_ = ctx.training;
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t c = 0; c < (x.is_dry() ? 0 : channels_); ++c) {
    if (ctx.training) {
      LaneSum<T> sum, sum_squares;
      for (index_t s = 0; s < n; ++s)
        widened(x.data() + at(s, c, 0), area, [&](index_t, const W* xs, index_t len) {
          sum.add(len, ctx.accumulate, [&](index_t i) { return xs[i]; });
        });
      const W m = sum.total(ctx.accumulate) / round_to<W>(static_cast<double>(count));
      for (index_t s = 0; s < n; ++s)
        widened(x.data() + at(s, c, 0), area, [&](index_t, const W* xs, index_t len) {
          sum_squares.add(len, ctx.accumulate, [&](index_t i) {
            const W d = xs[i] - m;
            return W(d * d);
          });
        });
      const W squares = sum_squares.total(ctx.accumulate);
      const W var = squares / round_to<W>(static_cast<double>(count));
      mean[c] = m;
      inv_std[c] = W(1) / sqrt_of(W(var + eps));
      const W keep = round_to<W>(1.0 - momentum_), take = round_to<W>(momentum_);
      const W unbiased = count > 1 ? W(squares / round_to<W>(static_cast<double>(count - 1))) : var;
      if (ctx.update_statistics) {
        running_mean_[c] = round_to<T>(W(keep * round_to<W>(running_mean_[c]) + take * m));
        running_var_[c] = round_to<T>(W(keep * round_to<W>(running_var_[c]) + take * unbiased));
      }
    } else {
      mean[c] = round_to<W>(running_mean_[c]);
      inv_std[c] = W(1) / sqrt_of(W(round_to<W>(running_var_[c]) + eps));
    }
    const W g = scale(c), b = round_to<W>(beta_.value[c]), mean_c = mean[c], inv_std_c = inv_std[c];
    for (index_t s = 0; s < n; ++s)  // (y may be x's buffer: each value is read before it is written)
      widened(x.data() + at(s, c, 0), area, [&](index_t first, const W* xs, index_t len) {
        narrowed(y.data() + at(s, c, first), len, [&](index_t i) { return W(g * ((xs[i] - mean_c) * inv_std_c) + b); });
      });
  }
  if (ctx.keeps() || (ctx.keeps_for_inverse() && invertible())) {  // the inverse needs the batch's statistics
    mean_.keep(mean);
    inv_std_.keep(inv_std);
  } else {  // never let a later inverse use an older forward's statistics
    mean_.release();
    inv_std_.release();
  }
  return y;
}

// With x^ = (x - mean) / sigma over M = N H W values per channel:
//   dbeta = sum dy,  dgamma = sum dy x^,  dx = gamma / sigma (dy - dbeta / M - x^ dgamma / M).
template <class T> Tensor<T> BatchNorm<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<T> x = input_.get();
  input_.release();
  return backward_from_input(x, std::move(dy), ctx, want_input_grad);
}

template <class T>
Reconstructed<T> BatchNorm<T>::backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                                    bool want_input_grad) {
  const Tensor<T> x = rebuild_input(std::move(y));  // in y's buffer if nothing else holds it
  return {x, backward_from_input(x, std::move(dy), ctx, want_input_grad)};
}

template <class T> std::string BatchNorm<T>::why_not_invertible() const {
  return invertible() ? "" : "ordinary batch norm scales by gamma, which may reach 0: use inv_batchnorm";
}

template <class T>
Tensor<T> BatchNorm<T>::backward_from_input(const Tensor<T>& x, Tensor<T> dy, const RunContext& ctx,
                                            bool want_input_grad) {
  const Tensor<W>&mean = mean_.get(), &inv_std = inv_std_.get();
  const index_t n = x.dim(0), area = x.numel() / (n * channels_);
  const W count = round_to<W>(static_cast<double>(n * area));
  auto at = [&](index_t s, index_t c, index_t i) { return (s * channels_ + c) * area + i; };
  Tensor<T> dx;
  if (want_input_grad) dx = dy.overwritable(MemoryCategory::workspace);  // per channel: sums of dy, then dx over dy
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t c = 0; c < (x.is_dry() ? 0 : channels_); ++c) {
    LaneSum<T> sum_dy, sum_dy_xhat;
    const W mean_c = mean[c], inv_std_c = inv_std[c];
    for (index_t s = 0; s < n; ++s)
      widened2(x.data() + at(s, c, 0), dy.data() + at(s, c, 0), area,
               [&](index_t, const W* xs, const W* dys, index_t len) {
                 sum_dy.add(len, ctx.accumulate, [&](index_t i) { return dys[i]; });
                 sum_dy_xhat.add(len, ctx.accumulate, [&](index_t i) { return W(dys[i] * W((xs[i] - mean_c) * inv_std_c)); });
               });
    const W dbeta = sum_dy.total(ctx.accumulate), dgamma = sum_dy_xhat.total(ctx.accumulate);
    gamma_.grad[c] = round_to<T>(W(round_to<W>(gamma_.grad[c]) + scale_slope(c) * dgamma));
    beta_.grad[c] = round_to<T>(W(round_to<W>(beta_.grad[c]) + dbeta));
    if (!want_input_grad) continue;  // (each channel is independent: safe inside the parallel loop)
    const W factor = scale(c) * inv_std[c];
    const W mean_dy = dbeta / count, mean_dy_xhat = dgamma / count;
    for (index_t s = 0; s < n; ++s)  // (dx may be dy's buffer: each value is read before it is written)
      widened2(x.data() + at(s, c, 0), dy.data() + at(s, c, 0), area,
               [&](index_t first, const W* xs, const W* dys, index_t len) {
                 narrowed(dx.data() + at(s, c, first), len, [&](index_t i) {
                   const W xhat = (xs[i] - mean_c) * inv_std_c;
                   return W(factor * (dys[i] - mean_dy - xhat * mean_dy_xhat));
                 });
               });
  }
  mean_.release();
  inv_std_.release();
  return dx;
}

// x = (y - beta) / scale * sigma + mean, with the statistics the last forward used: the batch's (kept until
// backward) after a training forward, the running ones after an evaluation forward.
template <class T> Tensor<T> BatchNorm<T>::inverse(const Tensor<T>& y) { return rebuild_input(y); }

template <class T> Tensor<T> BatchNorm<T>::rebuild_input(Tensor<T> y) {
  if (last_forward_training_ && !mean_.held())
    throw Error("layer " + this->label() +
                ": inverse needs the batch statistics of the last training forward, and backward has released them");
  const index_t n = y.dim(0), area = y.numel() / (n * channels_);
  Tensor<T> x = y.overwritable(MemoryCategory::workspace);
  for (index_t c = 0; c < (y.is_dry() ? 0 : channels_); ++c) {
    const W mean_c = last_forward_training_ ? mean_.get()[c] : round_to<W>(running_mean_[c]);
    const W inv_std_c = last_forward_training_
                            ? inv_std_.get()[c]
                            : W(W(1) / sqrt_of(W(round_to<W>(running_var_[c]) + round_to<W>(eps_))));
    const W s = scale(c), b = round_to<W>(beta_.value[c]);
    for (index_t k = 0; k < n; ++k)
      for (index_t i = 0; i < area; ++i) {
        const index_t at = (k * channels_ + c) * area + i;
        x[at] = round_to<T>(W((round_to<W>(y[at]) - b) / s / inv_std_c + mean_c));
      }
  }
  return x;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(BatchNorm)

}  // namespace lowmem
