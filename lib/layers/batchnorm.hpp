#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Batch normalisation over (N, H, W) per channel, for x (N, C, H, W) or (N, C).
// Training: mean and biased variance of the batch (two passes, summed in the compute type); running statistics
// updated as PyTorch does: r = (1 - momentum) r + momentum s, with the unbiased variance. Evaluation: running
// statistics. y = gamma (x - mean) / sqrt(var + eps) + beta. Backward keeps x and the per-channel mean and
// 1/sqrt(var + eps) (in the wide type: float for 16-bit storage), and recomputes the normalised input.
// Invertible batch norm (Hascoet et al.) scales by |gamma| + scale_eps instead of gamma, so the scale never
// reaches 0 and y can always be mapped back to x (with the statistics kept from the last training forward).
template <class T> class BatchNorm : public Layer<T>, public Invertible<T> {
 public:
  // scale_eps < 0: ordinary batch norm (scale gamma); >= 0: invertible batch norm (scale |gamma| + scale_eps).
  BatchNorm(std::string label, index_t channels, double momentum, double eps, double scale_eps = -1);
  const char* kind() const override { return scale_eps_ < 0 ? "batchnorm" : "inv_batchnorm"; }
  bool invertible() const override { return scale_eps_ >= 0; }
  std::string why_not_invertible() const override;
  Tensor<T> inverse(const Tensor<T>& y) override;  // with the statistics of the last forward (see .cpp)
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                        bool want_input_grad) override;
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return {&gamma_, &beta_}; }
  std::vector<std::pair<std::string, Tensor<T>*>> buffers() override {
    return {{"running_mean", &running_mean_}, {"running_var", &running_var_}};
  }
  const Tensor<T>& running_mean() const { return running_mean_; }
  const Tensor<T>& running_var() const { return running_var_; }

 private:
  using W = wide_t<T>;
  W scale(index_t c) const;        // gamma, or |gamma| + scale_eps
  W scale_slope(index_t c) const;  // d scale / d gamma: 1, or sign(gamma)
  // backward with the input x given (kept, or rebuilt by the inverse); releases the statistics.
  Tensor<T> backward_from_input(const Tensor<T>& x, Tensor<T> dy, const RunContext& ctx, bool want_input_grad);
  // The inverse, written over y's buffer when nothing else holds it.
  Tensor<T> rebuild_input(Tensor<T> y);
  index_t channels_;
  double momentum_, eps_, scale_eps_;
  Param<T> gamma_, beta_;
  Tensor<T> running_mean_, running_var_;  // model state, counted with the weights
  Saved<T> input_;
  Saved<W> mean_, inv_std_;
  bool last_forward_training_ = true;
};

}  // namespace lowmem
