#pragma once
#include <memory>

#include "layers/activations.hpp"
#include "layers/batchnorm.hpp"
#include "layers/conv2d.hpp"

namespace lowmem {

// The ResNet basic block (He et al. 2016; torchvision's BasicBlock):
//   y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
// conv1 3x3 with the block's stride, conv2 3x3 stride 1, both without bias; shortcut = identity when shape is
// kept, else bn(conv 1x1 with the stride). x (N, Cin, H, W) -> y (N, Cout, H / stride, W / stride).
template <class T> class ResidualBlock : public Layer<T> {
 public:
  ResidualBlock(std::string label, index_t in_channels, index_t out_channels, index_t stride, double bn_momentum,
                double bn_eps);
  const char* kind() const override { return "residual"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;
  double forward_flops(const Shape& input) const override;

 private:
  bool has_projection() const { return projection_ != nullptr; }
  std::unique_ptr<Conv2d<T>> conv1_, conv2_, projection_;
  std::unique_ptr<BatchNorm<T>> bn1_, bn2_, projection_bn_;
  std::unique_ptr<LeakyRelu<T>> relu1_, relu_out_;
};

}  // namespace lowmem
