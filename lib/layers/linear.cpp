#include "layers/linear.hpp"

#include <cmath>

#include "layers/weight_products.hpp"
#include "numerics/threads.hpp"

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

// Y (N, out) = X (N, in) W^T + b. Products in the compute type G straight from the stored operands (no converted
// copies); Y is formed in G and rounded once into T.
template <class T> Tensor<T> Linear<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0);
  Tensor<T> y(Shape{n, out_}, MemoryCategory::workspace, Init::none);  // written whole
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    Tensor<G> out = result_buffer<G>(y);
    Tensor<float> packing = shared_packing_workspace<G>(weight_, n, out_, in_);
    if (out.is_dry() || x.is_dry()) return;
    const auto X = MatrixView<T>::row_major(x.data(), n, in_);
    // Y^T = W X^T
    weight_product(weight_, out_, in_, false, X.t(), OutputView<G>::row_major(out.data(), n, out_).t(), false,
                   all_rows(packing));
    if (has_bias_) {
#pragma omp parallel for schedule(static) if (worth_threads(n * out_))
      for (index_t s = 0; s < n; ++s)
        for (index_t o = 0; o < out_; ++o) out[s * out_ + o] += round_to<G>(bias_.value[o]);
    }
    round_into(out, y);
  });
  if (ctx.keeps()) input_.keep(x);
  return y;
}

// dW += dY^T X, db += column sums of dY, dX = dY W.
template <class T> Tensor<T> Linear<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  Tensor<T> x = input_.take();
  const Shape x_shape = x.shape();
  const index_t n = x_shape[0];
  Tensor<T> dx;
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const bool dry = x.is_dry() || dy.is_dry();
    const auto dY = MatrixView<T>::row_major(dy.data(), n, out_);
    {  // the parameter gradients: the last use of the kept input, released before dx
      Tensor<G> dweight(weight_.value.shape(), MemoryCategory::workspace);
      Tensor<float> packing = shared_packing_workspace<G>(weight_, out_, in_, n);
      if (!dry) {
        add_weight_gradient(weight_, dY.t(), MatrixView<T>::row_major(x.data(), n, in_).t(), dweight.data(),
                            all_rows(packing));
        store_rounded(dweight.data(), weight_.grad.data(), dweight.numel(), true);
      }
      if (has_bias_) {
        Tensor<G> dbias(Shape{out_}, MemoryCategory::workspace);
        if (!dry) {
          // Each thread owns a block of columns, each summed over the rows in order.
          const int parts = worth_threads(n * out_) ? std::min<int>(omp_get_max_threads(), static_cast<int>(out_)) : 1;
#pragma omp parallel for num_threads(parts) schedule(static)
          for (int t = 0; t < parts; ++t) {
            const auto [first, end] = block_of(out_, t, parts);
            for (index_t s = 0; s < n; ++s)
              for (index_t o = first; o < end; ++o)
                dbias[o] += round_to<G>(dY(s, o));  // G is the accumulation rule: float, or 16-bit rounding each add
          }
          store_rounded(dbias.data(), bias_.grad.data(), out_, true);
        }
      }
    }
    x = Tensor<T>();
    if (want_input_grad) {
      dx = Tensor<T>(x_shape, MemoryCategory::workspace);
      Tensor<G> dxg = result_buffer<G>(dx);
      Tensor<float> packing = shared_packing_workspace<G>(weight_, n, in_, out_);
      if (!dry) {
        // dX^T = W^T dY^T
        weight_product(weight_, out_, in_, true, dY.t(), OutputView<G>::row_major(dxg.data(), n, in_).t(), false,
                       all_rows(packing));
        round_into(dxg, dx);
      }
    }
  });
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Linear)

}  // namespace lowmem
