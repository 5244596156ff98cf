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
  if (!x.is_dry()) {
    // Both arms computed, then selected: vectorises without branches (the signs are random), and NaN propagates.
    const T zero(0), slope = slope_t_;
    const T* __restrict in = x.data();
    T* __restrict out = y.data();
    for (index_t i = 0; i < x.numel(); ++i) {
      const T negative = T(slope * in[i]);
      out[i] = in[i] > zero ? in[i] : negative;
    }
  }
  if (ctx.training) output_.keep(y);
  return y;
}

template <class T> Tensor<T> LeakyRelu<T>::backward(const Tensor<T>& dy, const RunContext&, bool want_input_grad) {
  const Tensor<T>& y = output_.get();
  Tensor<T> dx;
  if (want_input_grad) {
    dx = Tensor<T>(y.shape(), MemoryCategory::workspace);
    if (!y.is_dry()) {
      const T zero(0), one(1), slope = slope_t_;
      const T *__restrict out = y.data(), *__restrict grad = dy.data();
      T* __restrict result = dx.data();
      for (index_t i = 0; i < y.numel(); ++i) result[i] = T(grad[i] * (out[i] > zero ? one : slope));
    }
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
