#include "layers/position_wise.hpp"

namespace lowmem {

namespace {

// t with another shape, t let go of here: the result is then the buffer's only holder, so that a layer may work
// in place on it (a by-value parameter may otherwise live to the end of the caller's full expression).
template <class T> Tensor<T> reshaped_alone(Tensor<T>& t, Shape shape) {
  Tensor<T> r = t.reshaped(std::move(shape));
  t = Tensor<T>();
  return r;
}
// (N, T, ...) as rows (N T, rest); rows (N T, F') as (n, T, F').
template <class T> Tensor<T> as_rows(Tensor<T> t) {
  const index_t rows = t.dim(0) * t.dim(1);
  return reshaped_alone(t, Shape{rows, t.numel() / rows});
}
template <class T> Tensor<T> as_sequence(Tensor<T> t, index_t n) {
  if (t.empty()) return t;
  const index_t len = t.dim(0) / n;
  return reshaped_alone(t, Shape{n, len, t.numel() / (n * len)});
}

}  // namespace

template <class T>
PositionWise<T>::PositionWise(std::unique_ptr<Layer<T>> inner) : Layer<T>(inner->label()), inner_(std::move(inner)) {}

template <class T> Shape PositionWise<T>::output_shape(const Shape& in) const {
  if (in.rank() != 2) shape_error(this->label(), "expects a sequence (T, F) per sample, got " + in.str());
  const Shape out = inner_->output_shape(Shape{in[1]});
  return Shape{in[0], out.numel()};
}

template <class T> double PositionWise<T>::forward_flops(const Shape& in) const {
  return static_cast<double>(in[0]) * inner_->forward_flops(Shape{in[1]});
}

template <class T> Tensor<T> PositionWise<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0);
  return as_sequence(inner_->forward(as_rows(std::move(x)), ctx), n);
}

template <class T> Tensor<T> PositionWise<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const index_t n = dy.dim(0);
  return as_sequence(inner_->backward(as_rows(std::move(dy)), ctx, want_input_grad), n);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(PositionWise)

}  // namespace lowmem
