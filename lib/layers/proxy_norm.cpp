#include "layers/proxy_norm.hpp"

#include <cmath>

#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {

namespace {

// sqrt(2) erfinv(p) for p in (-1, 1), by bisection on std::erf: exact to double, and done once per layer.
double gaussian_quantile(double p) {
  double lo = -10.0, hi = 10.0;
  for (int k = 0; k < 200 && hi - lo > 0.0; ++k) {
    const double mid = 0.5 * (lo + hi);
    if (mid == lo || mid == hi) break;
    (std::erf(mid) < p ? lo : hi) = mid;
  }
  return std::sqrt(2.0) * 0.5 * (lo + hi);
}

}  // namespace

template <class T>
ProxyNorm<T>::ProxyNorm(std::string label, index_t channels, double slope, double eps)
    : Layer<T>(std::move(label)),
      channels_(channels),
      slope_(round_to<W>(slope)),
      eps_(round_to<W>(eps)),
      gamma_(make_param<T>("weight", Shape{channels})),
      beta_(make_param<T>("bias", Shape{channels})),
      proxy_gamma_(make_param<T>("proxy_weight", Shape{channels})),
      proxy_beta_(make_param<T>("proxy_bias", Shape{channels})) {
  for (int i = 0; i < proxy_points; ++i)
    quantiles_.push_back(round_to<W>(gaussian_quantile(2.0 * (i + 0.5) / proxy_points - 1.0)));
}

template <class T> Shape ProxyNorm<T>::output_shape(const Shape& in) const {
  expect_channels(this->label(), in, channels_);
  return in;
}

// As in the paper: the affine starts as the identity, and the proxy as a standard Gaussian.
template <class T> void ProxyNorm<T>::initialize(Rng&) {
  gamma_.value.fill(T(1));
  beta_.value.fill(T(0));
  proxy_gamma_.value.fill(T(0));
  proxy_beta_.value.fill(T(0));
}

template <class T> typename ProxyNorm<T>::Stats ProxyNorm<T>::stats(index_t c, Accumulate accumulate) const {
  const W g = round_to<W>(gamma_.value[c]), b = round_to<W>(beta_.value[c]);
  const W pg = round_to<W>(proxy_gamma_.value[c]), pb = round_to<W>(proxy_beta_.value[c]);
  const W count = round_to<W>(static_cast<double>(proxy_points));
  auto activated = [&](const W& q) { return act(W(g * W(pb + W(W(1) + pg) * q) + b)); };  // act(gamma Y_i + beta)
  W sum(0);
  for (const W& q : quantiles_) sum = accumulate_round<T>(sum + activated(q), accumulate);
  const W mean = sum / count;
  W squares(0);
  for (const W& q : quantiles_) {
    const W d = activated(q) - mean;
    squares = accumulate_round<T>(squares + d * d, accumulate);
  }
  return {mean, W(1) / sqrt_of(W(squares / count + eps_))};
}

template <class T> Tensor<T> ProxyNorm<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), area = x.numel() / (n * channels_);
  if (ctx.keeps()) input_.keep(x);  // first: y takes x's buffer only if nothing keeps x
  Tensor<T> y = x.overwritable(MemoryCategory::workspace);
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t c = 0; c < (x.is_dry() ? 0 : channels_); ++c) {
    const Stats s = stats(c, ctx.accumulate);
    const W g = round_to<W>(gamma_.value[c]), b = round_to<W>(beta_.value[c]);
    for (index_t k = 0; k < n; ++k)
      for (index_t i = 0; i < area; ++i) {
        const index_t at = (k * channels_ + c) * area + i;
        y[at] = round_to<T>(W((act(W(g * round_to<W>(x[at]) + b)) - s.mean) * s.inv_std));
      }
  }
  return y;
}

// Per channel, with a = act(z), s = 1 / sqrt(var + eps) and the sums S1 = sum dy, S2 = sum dy (a - mu) over the
// batch: dL/dz = dy s act'(z) (into dx = gamma dL/dz, dgamma += dL/dz x, dbeta += dL/dz), dL/dmu = -s S1 and
// dL/dvar = -s^3 S2 / 2. Each proxy point then gets dL/da_i = (dL/dmu + 2 dL/dvar (a_i - mu)) / n, through
// act'(z_i) into gamma and beta, and through gamma into proxy_beta and (times q_i) proxy_gamma.
template <class T> Tensor<T> ProxyNorm<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<T> x = input_.take();
  const index_t n = x.dim(0), area = x.numel() / (n * channels_);
  Tensor<T> dx;
  if (want_input_grad) dx = dy.overwritable(MemoryCategory::workspace);  // read dy at an index, then write dx there
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t c = 0; c < (x.is_dry() ? 0 : channels_); ++c) {
    const Stats s = stats(c, ctx.accumulate);
    const W g = round_to<W>(gamma_.value[c]), b = round_to<W>(beta_.value[c]);
    W dgamma(0), dbeta(0), s1(0), s2(0);
    for (index_t k = 0; k < n; ++k)
      for (index_t i = 0; i < area; ++i) {
        const index_t at = (k * channels_ + c) * area + i;
        const W xi = round_to<W>(x[at]), d = round_to<W>(dy[at]), z = W(g * xi + b);
        const W dz = W(d * s.inv_std) * act_slope(z);
        dgamma = accumulate_round<T>(dgamma + dz * xi, ctx.accumulate);
        dbeta = accumulate_round<T>(dbeta + dz, ctx.accumulate);
        s1 = accumulate_round<T>(s1 + d, ctx.accumulate);
        s2 = accumulate_round<T>(s2 + d * W(act(z) - s.mean), ctx.accumulate);
        if (want_input_grad) dx[at] = round_to<T>(W(g * dz));
      }
    const W dmean = -s.inv_std * s1, dvar = W(-0.5) * s.inv_std * s.inv_std * s.inv_std * s2;
    const W pg = round_to<W>(proxy_gamma_.value[c]), pb = round_to<W>(proxy_beta_.value[c]);
    const W count = round_to<W>(static_cast<double>(proxy_points));
    W dpg(0), dpb(0);
    for (const W& q : quantiles_) {
      const W yq = W(pb + W(W(1) + pg) * q), z = W(g * yq + b);
      const W dz = W(W(dmean + W(2) * dvar * W(act(z) - s.mean)) / count) * act_slope(z);
      dgamma = accumulate_round<T>(dgamma + dz * yq, ctx.accumulate);
      dbeta = accumulate_round<T>(dbeta + dz, ctx.accumulate);
      dpb = accumulate_round<T>(dpb + dz * g, ctx.accumulate);
      dpg = accumulate_round<T>(dpg + dz * g * q, ctx.accumulate);
    }
    for (auto [param, grad] : {std::pair{&gamma_, dgamma}, std::pair{&beta_, dbeta}, std::pair{&proxy_gamma_, dpg},
                               std::pair{&proxy_beta_, dpb}})
      param->grad[c] = round_to<T>(W(round_to<W>(param->grad[c]) + grad));
  }
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(ProxyNorm)

}  // namespace lowmem
