#include "layers/attention.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "layers/weight_products.hpp"
#include "numerics/threads.hpp"

namespace lowmem {

namespace {

// The projections: y (N, T, out) = x (N, T, in) W^T + b, W (out, in), as Linear's: one product over all N T
// positions in the compute type G, rounded once into T.
template <class T> Tensor<T> project(const Param<T>& weight, const Param<T>& bias, const Tensor<T>& x, Accumulate mode) {
  const index_t out = weight.value.dim(0), in = weight.value.dim(1), rows = x.numel() / in;
  Tensor<T> y(Shape{x.dim(0), x.dim(1), out}, MemoryCategory::workspace, Init::none);  // written whole
  with_compute_type<T>(mode, [&]<class G>() {
    Tensor<G> out_g = result_buffer<G>(y);
    Tensor<float> packing = shared_packing_workspace<G>(weight, rows, out, in);
    if (out_g.is_dry() || x.is_dry()) return;
    // Y^T = W X^T
    weight_product(weight, out, in, false, MatrixView<T>::row_major(x.data(), rows, in).t(),
                   OutputView<G>::row_major(out_g.data(), rows, out).t(), false, all_rows(packing));
    for (index_t r = 0; r < rows; ++r)
      for (index_t o = 0; o < out; ++o) out_g[r * out + o] += round_to<G>(bias.value[o]);
    round_into(out_g, y);
  });
  return y;
}

// Its backward: dW += dY^T X, db += column sums of dY (LaneSum's order), and dX = dY W if asked. x is released
// after its last use, the weight gradient, before dX is allocated.
template <class T>
Tensor<T> project_backward(Param<T>& weight, Param<T>& bias, const Tensor<T>& dy, Tensor<T> x, Accumulate mode,
                           bool want_input_grad) {
  using W = wide_t<T>;
  const Shape x_shape = x.shape();
  const index_t out = weight.value.dim(0), in = weight.value.dim(1), rows = x.numel() / in;
  const bool dry = x.is_dry() || dy.is_dry();
  const auto dY = MatrixView<T>::row_major(dy.data(), rows, out);
  Tensor<T> dx;
  with_compute_type<T>(mode, [&]<class G>() {
    {
      Tensor<G> dweight(weight.value.shape(), MemoryCategory::workspace);
      Tensor<float> packing = shared_packing_workspace<G>(weight, out, in, rows);
      if (!dry) {
        add_weight_gradient(weight, dY.t(), MatrixView<T>::row_major(x.data(), rows, in).t(), dweight.data(),
                            all_rows(packing));
        store_rounded(dweight.data(), weight.grad.data(), dweight.numel(), true);
      }
    }
    // Each thread owns its columns, each summed over the positions in one fixed order.
#pragma omp parallel for schedule(static) if (worth_threads(rows * out))
    for (index_t o = 0; o < (dry ? 0 : out); ++o) {
      LaneSum<T> sum;
      sum.add(rows, mode, [&](index_t r) { return round_to<W>(dY(r, o)); });
      bias.grad[o] = round_to<T>(W(round_to<W>(bias.grad[o]) + sum.total(mode)));
    }
    x = Tensor<T>();
    if (!want_input_grad) return;
    dx = Tensor<T>(x_shape, MemoryCategory::workspace, Init::none);  // written whole
    Tensor<G> dx_g = result_buffer<G>(dx);
    Tensor<float> packing = shared_packing_workspace<G>(weight, rows, in, out);
    if (dry) return;
    // dX^T = W^T dY^T
    weight_product(weight, out, in, true, dY.t(), OutputView<G>::row_major(dx_g.data(), rows, in).t(), false,
                   all_rows(packing));
    round_into(dx_g, dx);
  });
  return dx;
}

// The attention products run per (sample, head), each pair wholly on one thread with that thread's buffers, so
// the thread count changes speed and workspace, never the numbers.
int pair_threads(index_t pairs, index_t values) {
  return worth_threads(values) ? static_cast<int>(std::min<index_t>(omp_get_max_threads(), pairs)) : 1;
}
// Per-thread GEMM packing for those products (none when G's products run on Eigen).
Tensor<float> thread_packing(int threads, index_t floats) {
  if (floats == 0) return {};
  return Tensor<float>(Shape{threads, floats}, MemoryCategory::workspace);
}

// Features [first, first + count) of `rows` rows `stride` apart: one head's Q, K or V in qkv, or its O or dO.
template <class T> MatrixView<T> features(const T* data, index_t rows, index_t stride, index_t first, index_t count) {
  return {data + first, rows, count, stride, 1};
}

// Row t of P from row t of S = Q K^T: with a_j = S_tj / sqrt(d), P_tj = exp(a_j - max a) / sum_k exp(a_k - max a)
// over j, k <= t (the maximum first: no exp overflows), and 0 past t. e: scratch for the t + 1 exponentials.
template <class T, class G>
void causal_softmax_row(const G* s, index_t t, index_t len, wide_t<T> scale, Accumulate mode, wide_t<T>* e, T* p) {
  using W = wide_t<T>;
  W top = W(round_to<W>(s[0]) * scale);
  for (index_t j = 0; j <= t; ++j) {
    e[j] = W(round_to<W>(s[j]) * scale);
    top = e[j] > top ? e[j] : top;
  }
  for (index_t j = 0; j <= t; ++j) e[j] = exp_of(W(e[j] - top));
  LaneSum<T> sum;
  sum.add(t + 1, mode, [&](index_t j) { return e[j]; });
  const W total = sum.total(mode);
  for (index_t j = 0; j <= t; ++j) p[j] = round_to<T>(W(e[j] / total));
  std::fill(p + t + 1, p + len, T(0));
}

// Its backward, row t: dS_tj = P_tj (dP_tj - sum_k dP_tk P_tk) / sqrt(d) for j <= t, 0 past t (masked entries
// have no gradient), written over P's row (P's last use).
template <class T, class G>
void causal_softmax_row_backward(const G* dp, index_t t, index_t len, wide_t<T> scale, Accumulate mode, T* p) {
  using W = wide_t<T>;
  LaneSum<T> sum;
  sum.add(t + 1, mode, [&](index_t j) { return W(round_to<W>(dp[j]) * round_to<W>(p[j])); });
  const W r = sum.total(mode);
  for (index_t j = 0; j <= t; ++j) p[j] = round_to<T>(W(round_to<W>(p[j]) * W(round_to<W>(dp[j]) - r) * scale));
  std::fill(p + t + 1, p + len, T(0));
}

}  // namespace

template <class T>
Attention<T>::Attention(std::string label, index_t width, index_t heads)
    : Layer<T>(std::move(label)),
      width_(width),
      heads_(heads),
      in_weight_(make_param<T>("in_proj_weight", Shape{3 * width, width})),
      in_bias_(make_param<T>("in_proj_bias", Shape{3 * width})),
      out_weight_(make_param<T>("out_proj.weight", Shape{width, width})),
      out_bias_(make_param<T>("out_proj.bias", Shape{width})) {
  if (width < 1 || heads < 1 || width % heads != 0)
    shape_error(this->label(), std::to_string(heads) + " heads do not split width " + std::to_string(width) +
                                   " evenly (each head takes width / heads features)");
}

template <class T> Shape Attention<T>::output_shape(const Shape& in) const {
  expect_sequence(this->label(), in, width_);
  return in;
}

template <class T> double Attention<T>::forward_flops(const Shape& input) const {
  const double len = static_cast<double>(output_shape(input)[0]), f = static_cast<double>(width_);
  return 2.0 * (4 * len * f * f + 2 * len * len * f);
}

template <class T> void Attention<T>::initialize(Rng& rng) {
  const double f = static_cast<double>(width_);
  const double xavier = std::sqrt(6.0 / (f + 3 * f)), linear = 1.0 / std::sqrt(f);
  for (index_t i = 0; i < in_weight_.value.numel(); ++i) in_weight_.value[i] = round_to<T>(rng.uniform(-xavier, xavier));
  for (index_t i = 0; i < out_weight_.value.numel(); ++i)
    out_weight_.value[i] = round_to<T>(rng.uniform(-linear, linear));
  in_bias_.value.fill(T(0));
  out_bias_.value.fill(T(0));
}

// x (N, T, F). Per (sample s, head h), in G from qkv stored in T: S = Q K^T (a thread's buffer), P by rows
// (stored in T), O's columns [h d, (h + 1) d) = P V, rounded once into T with the other heads.
template <class T> Tensor<T> Attention<T>::forward(Tensor<T> x, const RunContext& ctx) {
  using W = wide_t<T>;
  const index_t n = x.dim(0), len = x.dim(1), f = width_, d = f / heads_, pairs = n * heads_;
  const bool keep = ctx.keeps();
  if (keep) input_.keep(x);
  Tensor<T> qkv = project(in_weight_, in_bias_, x, ctx.accumulate);  // (N, T, 3F)
  x = Tensor<T>();  // kept, or no longer needed
  const int threads = pair_threads(pairs, pairs * len * len);
  // P of every (sample, head) when backward needs it; otherwise one (T, T) per thread, reused (evaluation, and
  // forwards a technique recomputes, never hold N H T^2 values).
  Tensor<T> probs(keep ? Shape{n, heads_, len, len} : Shape{threads, len, len}, MemoryCategory::workspace,
                  Init::none);  // written whole
  Tensor<T> o(Shape{n, len, f}, MemoryCategory::workspace, Init::none);  // written whole
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    Tensor<G> o_g = result_buffer<G>(o);
    Tensor<G> scores(Shape{threads, len, len}, MemoryCategory::workspace, Init::none);
    Tensor<W> exps(Shape{threads, len}, MemoryCategory::workspace, Init::none);
    Tensor<float> packing =
        thread_packing(threads, std::max(packing_floats<G>(len, len, d), packing_floats<G>(len, d, len)));
    if (qkv.is_dry()) return;
    const W scale = W(1) / sqrt_of(round_to<W>(static_cast<double>(d)));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (index_t sh = 0; sh < pairs; ++sh) {
      const int t = omp_get_thread_num();
      const index_t s = sh / heads_, h = sh % heads_;
      const T* qkv_s = qkv.data() + s * len * 3 * f;
      G* my_scores = scores.data() + t * len * len;
      T* p = probs.data() + (keep ? sh : t) * len * len;
      float* my_packing = packing_row(packing, t);
      dense_product<G>(features(qkv_s, len, 3 * f, h * d, d), features(qkv_s, len, 3 * f, f + h * d, d).t(),
                       my_scores, len, false, my_packing);
      for (index_t row = 0; row < len; ++row)
        causal_softmax_row<T>(my_scores + row * len, row, len, scale, ctx.accumulate, exps.data() + t * len,
                              p + row * len);
      dense_product<G>(MatrixView<T>::row_major(p, len, len), features(qkv_s, len, 3 * f, 2 * f + h * d, d),
                       o_g.data() + s * len * f + h * d, f, false, my_packing);
    }
    round_into(o_g, o);
  });
  if (keep) {
    qkv_.keep(qkv);
    probs_.keep(probs);
  }
  qkv = probs = Tensor<T>();  // kept, or freed before the output projection
  Tensor<T> y = project(out_weight_, out_bias_, o, ctx.accumulate);
  if (keep) heads_out_.keep(o);
  return y;
}

// dy (N, T, F). Backward of y = O W_out^T + b_out: dO = dy W_out, dW_out += dy^T O, db_out += sum dy. Per (sample,
// head): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)) / sqrt(d) (0 where masked), written over P;
// dQ = dS K, dK = dS^T Q, each into its columns of dqkv (N, T, 3F). Then dW_in += dqkv^T x, db_in += sum dqkv,
// dx = dqkv W_in.
template <class T> Tensor<T> Attention<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  using W = wide_t<T>;
  Tensor<T> d_heads = project_backward(out_weight_, out_bias_, dy, heads_out_.take(), ctx.accumulate, true);
  dy = Tensor<T>();
  Tensor<T> qkv = qkv_.take();
  Tensor<T> probs = probs_.take();
  probs.make_own(MemoryCategory::workspace);  // dS goes over P, head by head
  const index_t n = qkv.dim(0), len = qkv.dim(1), f = width_, d = f / heads_, pairs = n * heads_;
  Tensor<T> dqkv(qkv.shape(), MemoryCategory::workspace, Init::none);  // written whole
  const int threads = pair_threads(pairs, pairs * len * len);
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    Tensor<G> dqkv_g = result_buffer<G>(dqkv);
    Tensor<G> dp(Shape{threads, len, len}, MemoryCategory::workspace, Init::none);
    Tensor<float> packing =
        thread_packing(threads, std::max(packing_floats<G>(len, d, len), packing_floats<G>(len, len, d)));
    if (qkv.is_dry()) return;
    const W scale = W(1) / sqrt_of(round_to<W>(static_cast<double>(d)));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (index_t sh = 0; sh < pairs; ++sh) {
      const int t = omp_get_thread_num();
      const index_t s = sh / heads_, h = sh % heads_;
      const T* qkv_s = qkv.data() + s * len * 3 * f;
      G* dqkv_s = dqkv_g.data() + s * len * 3 * f;
      G* my_dp = dp.data() + t * len * len;
      T* p = probs.data() + sh * len * len;
      float* my_packing = packing_row(packing, t);
      const auto dO = features(d_heads.data() + s * len * f, len, f, h * d, d);
      const auto P = MatrixView<T>::row_major(p, len, len);  // then dS
      dense_product<G>(P.t(), dO, dqkv_s + 2 * f + h * d, 3 * f, false, my_packing);
      dense_product<G>(dO, features(qkv_s, len, 3 * f, 2 * f + h * d, d).t(), my_dp, len, false, my_packing);
      for (index_t row = 0; row < len; ++row)
        causal_softmax_row_backward<T>(my_dp + row * len, row, len, scale, ctx.accumulate, p + row * len);
      dense_product<G>(P, features(qkv_s, len, 3 * f, f + h * d, d), dqkv_s + h * d, 3 * f, false, my_packing);
      dense_product<G>(P.t(), features(qkv_s, len, 3 * f, h * d, d), dqkv_s + f + h * d, 3 * f, false, my_packing);
    }
    round_into(dqkv_g, dqkv);
  });
  qkv = probs = d_heads = Tensor<T>();  // freed before the input projection's backward
  return project_backward(in_weight_, in_bias_, dqkv, input_.take(), ctx.accumulate, want_input_grad);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Attention)

}  // namespace lowmem
