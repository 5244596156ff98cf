#pragma once
#include <memory>

#include "layers/activations.hpp"
#include "layers/conv2d.hpp"
#include "layers/proxy_norm.hpp"

namespace lowmem {

// How a residual block normalises: batch norm, or group norm (layer norm is 1 group, instance norm one group per
// channel), optionally with Proxy Norm (Labatie et al.) where a norm is followed by the ReLU.
struct BlockNorm {
  bool batch = true;         // batch norm; else group norm
  index_t groups = 1;        // group norm: channel groups (0: one per channel)
  bool proxy = false;        // group norm: norm1 without affine, and Proxy Norm (ReLU) in place of relu1
  double momentum = 0.1;     // batch norm: running statistics
  double eps = 1e-5;         // the norm's
  double proxy_eps = proxy_norm_eps;
};

// The ResNet basic block (He et al. 2016; torchvision's BasicBlock):
//   y = relu(norm2(conv2(act1(norm1(conv1(x))))) + shortcut(x)),   act1 = relu, or Proxy Norm (ReLU),
// conv1 3x3 with the block's stride, conv2 3x3 stride 1, both without bias; shortcut = identity when shape is
// kept, else norm(conv 1x1 with the stride). x (N, Cin, H, W) -> y (N, Cout, H / stride, W / stride).
// Children are named by kind and place: bn1, bn2, shortcut_bn (batch norm); gn1, gn2, shortcut_gn (group norm);
// relu1 or pn1 (Proxy Norm).
template <class T> class ResidualBlock : public Layer<T> {
 public:
  ResidualBlock(std::string label, index_t in_channels, index_t out_channels, index_t stride,
                const BlockNorm& norm = {});
  const char* kind() const override { return "residual"; }
  Shape output_shape(const Shape& input) const override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<std::pair<std::string, Layer<T>*>> children() override;
  double forward_flops(const Shape& input) const override;

 private:
  bool has_projection() const { return projection_ != nullptr; }
  std::unique_ptr<Conv2d<T>> conv1_, conv2_, projection_;
  std::unique_ptr<Layer<T>> norm1_, act1_, norm2_, projection_norm_;
  std::unique_ptr<LeakyRelu<T>> relu_out_;
  std::string norm_name_, act1_name_;  // "bn" or "gn"; "relu1" or "pn1": the children's names
};

}  // namespace lowmem
