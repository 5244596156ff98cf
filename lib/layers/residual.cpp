#include "layers/residual.hpp"

#include "layers/batchnorm.hpp"
#include "layers/groupnorm.hpp"

namespace lowmem {

namespace {

template <class T>
std::unique_ptr<Layer<T>> make_norm(const std::string& label, index_t channels, const BlockNorm& n, bool affine) {
  if (n.batch) return std::make_unique<BatchNorm<T>>(label, channels, n.momentum, n.eps);
  return std::make_unique<GroupNorm<T>>(label, channels, n.groups == 0 ? channels : n.groups, n.eps, affine);
}

}  // namespace

template <class T>
ResidualBlock<T>::ResidualBlock(std::string label, index_t in_channels, index_t out_channels, index_t stride,
                                const BlockNorm& norm)
    : Layer<T>(std::move(label)), norm_name_(norm.batch ? "bn" : "gn"), act1_name_(norm.proxy ? "pn1" : "relu1") {
  if (norm.proxy && norm.batch) throw Error("layer " + this->label() + ": Proxy Norm follows a group norm, not batch norm");
  const std::string& l = this->label();
  const index_t out = out_channels;
  conv1_ = std::make_unique<Conv2d<T>>(l + " conv1", Conv2dSpec{in_channels, out, 3, stride, 1, false});
  norm1_ = make_norm<T>(l + " " + norm_name_ + "1", out, norm, !norm.proxy);
  if (norm.proxy) act1_ = std::make_unique<ProxyNorm<T>>(l + " " + act1_name_, out, 0.0, norm.proxy_eps);
  else act1_ = std::make_unique<LeakyRelu<T>>(l + " " + act1_name_, 0.0);
  conv2_ = std::make_unique<Conv2d<T>>(l + " conv2", Conv2dSpec{out, out, 3, 1, 1, false});
  // norm2 and the shortcut's norm feed the sum, not an activation: no Proxy Norm there, their own affine.
  norm2_ = make_norm<T>(l + " " + norm_name_ + "2", out, norm, true);
  relu_out_ = std::make_unique<LeakyRelu<T>>(l + " relu_out", 0.0);
  if (stride != 1 || in_channels != out) {
    projection_ = std::make_unique<Conv2d<T>>(l + " shortcut", Conv2dSpec{in_channels, out, 1, stride, 0, false});
    projection_norm_ = make_norm<T>(l + " shortcut_" + norm_name_, out, norm, true);
  }
}

template <class T> Shape ResidualBlock<T>::output_shape(const Shape& in) const {
  const Shape out = norm2_->output_shape(conv2_->output_shape(norm1_->output_shape(conv1_->output_shape(in))));
  if (has_projection()) projection_norm_->output_shape(projection_->output_shape(in));
  return out;
}

template <class T> std::vector<std::pair<std::string, Layer<T>*>> ResidualBlock<T>::children() {
  std::vector<std::pair<std::string, Layer<T>*>> c = {{"conv1", conv1_.get()},
                                                      {norm_name_ + "1", norm1_.get()},
                                                      {act1_name_, act1_.get()},
                                                      {"conv2", conv2_.get()},
                                                      {norm_name_ + "2", norm2_.get()}};
  if (has_projection()) {
    c.emplace_back("shortcut", projection_.get());
    c.emplace_back("shortcut_" + norm_name_, projection_norm_.get());
  }
  c.emplace_back("relu_out", relu_out_.get());
  return c;
}

template <class T> double ResidualBlock<T>::forward_flops(const Shape& in) const {
  const Shape mid = conv1_->output_shape(in);
  const double elementwise = 5.0 * static_cast<double>(mid.numel());  // two norms, two activations, the sum
  return conv1_->forward_flops(in) + conv2_->forward_flops(mid) + elementwise +
         (has_projection() ? projection_->forward_flops(in) + static_cast<double>(mid.numel()) : 0.0);
}

// One statement per layer: a by-value argument lives to the end of its full expression (Itanium C++ ABI), so
// nested calls would hold every intermediate buffer until the outermost returns, and no layer could work in place.
template <class T> Tensor<T> ResidualBlock<T>::forward(Tensor<T> x, const RunContext& ctx) {
  Tensor<T> main = conv1_->forward(x, ctx);
  main = norm1_->forward(std::move(main), ctx);
  main = act1_->forward(std::move(main), ctx);
  main = conv2_->forward(std::move(main), ctx);
  main = norm2_->forward(std::move(main), ctx);
  Tensor<T> shortcut = x;
  if (has_projection()) {
    shortcut = projection_->forward(std::move(shortcut), ctx);
    shortcut = projection_norm_->forward(std::move(shortcut), ctx);
  }
  x = Tensor<T>();
  for (index_t i = 0; i < (main.is_dry() ? 0 : main.numel()); ++i) main[i] = T(main[i] + shortcut[i]);  // one rounding
  shortcut = Tensor<T>();
  return relu_out_->forward(std::move(main), ctx);
}

template <class T> Tensor<T> ResidualBlock<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<T> dsum = relu_out_->backward(std::move(dy), ctx, true);  // held for the shortcut to the end
  Tensor<T> dx = norm2_->backward(dsum, ctx, true);
  dx = conv2_->backward(std::move(dx), ctx, true);
  dx = act1_->backward(std::move(dx), ctx, true);
  dx = norm1_->backward(std::move(dx), ctx, true);
  dx = conv1_->backward(std::move(dx), ctx, want_input_grad);
  if (has_projection()) {
    Tensor<T> dshort = projection_norm_->backward(dsum, ctx, true);
    dshort = projection_->backward(std::move(dshort), ctx, want_input_grad);
    if (want_input_grad && !dx.is_dry())
      for (index_t i = 0; i < dx.numel(); ++i) dx[i] = T(dx[i] + dshort[i]);
  } else if (want_input_grad && !dx.is_dry()) {
    for (index_t i = 0; i < dx.numel(); ++i) dx[i] = T(dx[i] + dsum[i]);
  }
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(ResidualBlock)

}  // namespace lowmem
