#pragma once
#include "layers/layer.hpp"

namespace lowmem {

struct Conv2dSpec {
  index_t in_channels = 0, out_channels = 0, kernel = 3, stride = 1, pad = 0;
  bool bias = true;
};

// 2-D convolution by im2col + matrix product (weight_products.hpp), one image at a time and within it one band of
// output rows at a time, so the workspace stays at one band's columns.
// weight (Cout, Cin, k, k), bias (Cout). Backward needs x (kept whole) and recomputes the columns.
// Initialisation: He normal, std = sqrt(2 / (Cin k k)); bias 0.
template <class T> class Conv2d : public Layer<T> {
 public:
  Conv2d(std::string label, Conv2dSpec spec);
  const char* kind() const override { return "conv"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  const Conv2dSpec& spec() const { return spec_; }
  double forward_flops(const Shape& input) const override {
    return 2.0 * static_cast<double>(output_shape(input).numel() * spec_.in_channels * spec_.kernel * spec_.kernel);
  }

 private:
  Conv2dSpec spec_;
  Param<T> weight_, bias_;
  Saved<T> input_;
};

}  // namespace lowmem
