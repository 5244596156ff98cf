#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Proxy Norm (Labatie et al., "Proxy-Normalizing Activations to Match Batch Normalization while Removing Batch
// Dependence", 2021), after a group or layer norm that runs without its own affine, for x (N, C, H, W) or (N, C):
//   z = gamma_c x + beta_c,  a = act(z),  y = (a - mu_c) / sqrt(var_c + eps),
// where mu_c and var_c are the mean and (biased) variance of act(gamma_c Y_i + beta_c) over a per-channel Gaussian
// proxy Y_i = proxy_beta_c + (1 + proxy_gamma_c) q_i, q_i the n = 200 fixed quantiles sqrt(2) erfinv(2 (i + 0.5)
// / n - 1). The statistics depend on the parameters only, never on the batch: microbatches of any size see the
// same layer. act is ReLU (slope 0) or leaky ReLU. Backward keeps x and recomputes the proxy statistics; the
// gradient reaches the parameters through z and through mu_c and var_c.
constexpr double proxy_norm_eps = 0.03;  // the paper's default

template <class T> class ProxyNorm : public Layer<T> {
 public:
  static constexpr int proxy_points = 200;
  ProxyNorm(std::string label, index_t channels, double slope, double eps);
  const char* kind() const override { return "proxy_norm"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return {&gamma_, &beta_, &proxy_gamma_, &proxy_beta_}; }

 private:
  using W = wide_t<T>;
  struct Stats {
    W mean, inv_std;  // of the activated proxy; inv_std = 1 / sqrt(var + eps)
  };
  Stats stats(index_t c, Accumulate accumulate) const;
  W act(const W& z) const { return z > W(0) ? z : W(slope_ * z); }
  W act_slope(const W& z) const { return z > W(0) ? W(1) : slope_; }
  index_t channels_;
  W slope_, eps_;
  std::vector<W> quantiles_;
  Param<T> gamma_, beta_, proxy_gamma_, proxy_beta_;
  Saved<T> input_;
};

}  // namespace lowmem
