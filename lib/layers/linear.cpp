#include "layers/linear.hpp"

#include <cmath>

#include "layers/weight_products.hpp"

namespace lowmem {

template <class T>
Linear<T>::Linear(std::string label, index_t in_features, index_t out_features, bool bias)
    : Layer<T>(std::move(label)),
      in_(in_features),
      out_(out_features),
      has_bias_(bias),
      weight_(make_param<T>("weight", Shape{out_features, in_features})),
      bias_(bias ? make_param<T>("bias", Shape{out_features}) : Param<T>{}) {
  weight_.may_be_sparse = true;
}

template <class T> Shape Linear<T>::output_shape(const Shape& in) const {
  expect_rank(this->label(), in, 1);
  if (in[0] != in_)
    shape_error(this->label(), "expects " + std::to_string(in_) + " input features, got " + in.str());
  return Shape{out_};
}

template <class T> void Linear<T>::initialize(Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
  for (index_t i = 0; i < weight_.value.numel(); ++i) weight_.value[i] = round_to<T>(rng.uniform(-bound, bound));
  if (has_bias_)
    for (index_t i = 0; i < out_; ++i) bias_.value[i] = round_to<T>(rng.uniform(-bound, bound));
}

template <class T> std::vector<Param<T>*> Linear<T>::params() {
  if (has_bias_) return {&weight_, &bias_};
  return {&weight_};
}

template <class T> Tensor<T> Linear<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0);
  Tensor<T> y(Shape{n, out_}, MemoryCategory::workspace);
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const Tensor<G> xg = in_compute_type<G>(x), w = in_compute_type<G>(weight_.value);
    Tensor<G> out = result_buffer<G>(y);
    if (out.is_dry() || x.is_dry()) return;
    MatrixMap<G> Y(out.data(), n, out_);
    with_weight_matrix(weight_, w, out_, in_, [&](const auto& W) {
      Y.noalias() = ConstMatrixMap<G>(xg.data(), n, in_) * W.transpose();
    });
    if (has_bias_)
      for (index_t o = 0; o < out_; ++o) {
        const G b = round_to<G>(bias_.value[o]);
        for (index_t s = 0; s < n; ++s) Y(s, o) += b;
      }
    round_into(out, y);
  });
  if (ctx.keeps()) input_.keep(x);
  return y;
}

template <class T> Tensor<T> Linear<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  Tensor<T> x = input_.take();
  const Shape x_shape = x.shape();
  const index_t n = x_shape[0];
  Tensor<T> dx;
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const Tensor<G> dyg = in_compute_type<G>(dy);
    const bool dry = x.is_dry() || dyg.is_dry();
    const ConstMatrixMap<G> dY(dyg.data(), n, out_);
    {  // the parameter gradients: the last use of the kept input, released (with its converted copy) before dx
      const Tensor<G> xg = in_compute_type<G>(x);
      const ConstMatrixMap<G> X(xg.data(), n, in_);
      Tensor<G> dweight(weight_.value.shape(), MemoryCategory::workspace);
      if (!dry) {
        add_weight_gradient(weight_, dY.transpose(), X.transpose(), dweight.data());
        store_rounded(dweight.data(), weight_.grad.data(), dweight.numel(), true);
      }
      if (has_bias_) {
        Tensor<G> dbias(Shape{out_}, MemoryCategory::workspace);
        if (!dry) {
          for (index_t s = 0; s < n; ++s)
            for (index_t o = 0; o < out_; ++o)
              dbias[o] += dY(s, o);  // G is the accumulation rule: float, or 16-bit rounding each add
          store_rounded(dbias.data(), bias_.grad.data(), out_, true);
        }
      }
    }
    x = Tensor<T>();
    if (want_input_grad) {
      const Tensor<G> w = in_compute_type<G>(weight_.value);
      dx = Tensor<T>(x_shape, MemoryCategory::workspace);
      Tensor<G> dxg = result_buffer<G>(dx);
      if (!dry) {
        with_weight_matrix(weight_, w, out_, in_, [&](const auto& W) {
          MatrixMap<G>(dxg.data(), n, in_).noalias() = dY * W;
        });
        round_into(dxg, dx);
      }
    }
  });
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Linear)

}  // namespace lowmem
