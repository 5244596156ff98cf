#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Batch normalisation over (N, H, W) per channel, for x (N, C, H, W) or (N, C).
// Training: mean and biased variance of the batch (two passes, summed in the compute type); running statistics
// updated as PyTorch does: r = (1 - momentum) r + momentum s, with the unbiased variance. Evaluation: running
// statistics. y = gamma (x - mean) / sqrt(var + eps) + beta. Backward keeps x and the per-channel mean and
// 1/sqrt(var + eps) (in the wide type: float for 16-bit storage), and recomputes the normalised input.
template <class T> class BatchNorm : public Layer<T> {
 public:
  BatchNorm(std::string label, index_t channels, double momentum, double eps);
  const char* kind() const override { return "batchnorm"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(const Tensor<T>& x, const RunContext& ctx) override;
  Tensor<T> backward(const Tensor<T>& dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override { return {&gamma_, &beta_}; }
  const Tensor<T>& running_mean() const { return running_mean_; }
  const Tensor<T>& running_var() const { return running_var_; }

 private:
  using W = wide_t<T>;
  index_t channels_;
  double momentum_, eps_;
  Param<T> gamma_, beta_;
  Tensor<T> running_mean_, running_var_;  // model state, counted with the weights
  Saved<T> input_;
  Saved<W> mean_, inv_std_;
};

}  // namespace lowmem
