#include "layers/activations.hpp"

#include "io/error.hpp"

namespace lowmem {

template <class T>
LeakyRelu<T>::LeakyRelu(std::string label, double slope)
    : Layer<T>(std::move(label)), slope_(slope), slope_t_(round_to<T>(slope)) {
  if (!(slope >= 0.0)) throw Error("layer " + this->label() + ": slope must be >= 0, got " + std::to_string(slope));
}

template <class T> Tensor<T> LeakyRelu<T>::forward(const Tensor<T>& x, const RunContext& ctx) {
  Tensor<T> y(x.shape(), MemoryCategory::workspace);
  const T zero(0);
  for (index_t i = 0; i < x.numel(); ++i) y[i] = x[i] > zero ? x[i] : T(slope_t_ * x[i]);
  if (ctx.training) output_.keep(y);
  return y;
}

template <class T> Tensor<T> LeakyRelu<T>::backward(const Tensor<T>& dy, const RunContext&, bool want_input_grad) {
  const Tensor<T>& y = output_.get();
  Tensor<T> dx;
  if (want_input_grad) {
    dx = Tensor<T>(y.shape(), MemoryCategory::workspace);
    const T zero(0);
    for (index_t i = 0; i < y.numel(); ++i) dx[i] = y[i] > zero ? dy[i] : T(slope_t_ * dy[i]);
  }
  output_.release();
  return dx;
}

template <class T> Tensor<T> Flatten<T>::forward(const Tensor<T>& x, const RunContext&) {
  input_shape_ = x.shape();
  return x.reshaped(Shape{x.dim(0), x.numel() / x.dim(0)});
}

template <class T> Tensor<T> Flatten<T>::backward(const Tensor<T>& dy, const RunContext&, bool) {
  return dy.reshaped(input_shape_);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(LeakyRelu)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(Flatten)

}  // namespace lowmem
