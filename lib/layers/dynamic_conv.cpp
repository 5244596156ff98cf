#include "layers/dynamic_conv.hpp"

#include <algorithm>
#include <cmath>

#include "layers/weight_products.hpp"
#include "numerics/threads.hpp"

namespace lowmem {

namespace {

// The sizes of one batch: x (n, len, f), heads of d = f / heads channels, k taps.
struct Sizes {
  index_t n, len, f, heads, k;
  index_t d() const { return f / heads; }
  index_t positions() const { return n * len; }
};

// One head's k taps: W_j = exp(l_j - max l) / sum_i exp(l_i - max l) (the maximum first: no exp overflows), in the
// wide type (sum in LaneSum's order), each rounded once into T. The logits are in G or T; out may be the logits
// themselves (G = T): each tap is read before it is written.
template <class T, class L> void softmax_taps(const L* logits, index_t k, Accumulate mode, T* out) {
  using W = wide_t<T>;
  W top = round_to<W>(logits[0]);
  for (index_t j = 1; j < k; ++j) {
    const W l = round_to<W>(logits[j]);
    top = l > top ? l : top;
  }
  LaneSum<T> sum;
  sum.add(k, mode, [&](index_t j) { return exp_of(W(round_to<W>(logits[j]) - top)); });
  const W total = sum.total(mode);
  for (index_t j = 0; j < k; ++j) out[j] = round_to<T>(W(exp_of(W(round_to<W>(logits[j]) - top)) / total));
}

// Its backward, one head: dl_j = W_j (dW_j - sum_i W_i dW_i), handed to put(j, dl_j) in the wide type. put may
// write over dw[j] (read before).
template <class T, class D, class Put> void softmax_taps_backward(const T* w, const D* dw, index_t k, Accumulate mode,
                                                                  Put&& put) {
  using W = wide_t<T>;
  LaneSum<T> sum;
  sum.add(k, mode, [&](index_t j) { return W(round_to<W>(w[j]) * round_to<W>(dw[j])); });
  const W r = sum.total(mode);
  for (index_t j = 0; j < k; ++j) put(j, W(round_to<W>(w[j]) * W(round_to<W>(dw[j]) - r)));
}

// The causal depthwise convolution, y (N, T, F) in G: y[p, c] = sum over the taps j >= k - 1 - t (positions >= 0
// only: the left padding is zeros, never read), j increasing, of W_{p, h(c), j} x[p - (k - 1) + j, c], plus
// bias[c] if given; p = s T + t a position. kernels: (N, T, H, K) one per position (position_stride H K) or (H, K)
// for every position (position_stride 0). Each position on one thread.
template <class G, class T>
void causal_conv(const Sizes& z, const T* x, const T* kernels, index_t position_stride, const T* bias, G* y) {
  const index_t d = z.d();
#pragma omp parallel for schedule(static) if (worth_threads(z.positions() * z.f * z.k))
  for (index_t p = 0; p < z.positions(); ++p) {
    const index_t first = std::max<index_t>(0, z.k - 1 - p % z.len);
    const T* w = kernels + p * position_stride;
    const T* xp = x + p * z.f;  // x at tap j: xp[(j - (k - 1)) f + c]
    for (index_t c = 0; c < z.f; ++c) {
      const T* wh = w + (c / d) * z.k;
      G sum(0);
      for (index_t j = first; j < z.k; ++j) sum += round_to<G>(wh[j]) * round_to<G>(xp[(j - (z.k - 1)) * z.f + c]);
      y[p * z.f + c] = bias ? G(sum + round_to<G>(bias[c])) : sum;
    }
  }
}

// Its input gradient, dx (N, T, F) in G: dx[p, c] = sum over the taps j with u = p + k - 1 - j inside the sample
// (t + k - 1 - j < T), j increasing, of W_{u, h(c), j} dy[u, c].
template <class G, class T>
void causal_conv_input_grad(const Sizes& z, const T* dy, const T* kernels, index_t position_stride, G* dx) {
  const index_t d = z.d();
#pragma omp parallel for schedule(static) if (worth_threads(z.positions() * z.f * z.k))
  for (index_t p = 0; p < z.positions(); ++p) {
    const index_t first = std::max<index_t>(0, p % z.len + z.k - z.len);
    for (index_t c = 0; c < z.f; ++c) {
      const index_t tap0 = (c / d) * z.k;
      G sum(0);
      for (index_t j = first; j < z.k; ++j) {
        const index_t u = p + z.k - 1 - j;
        sum += round_to<G>(kernels[u * position_stride + tap0 + j]) * round_to<G>(dy[u * z.f + c]);
      }
      dx[p * z.f + c] = sum;
    }
  }
}

// The gradient of per-position kernels, (N, T, H, K) in G: dW[p, h, j] = sum over the head's channels c, in
// order, of dy[p, c] x[p - (k - 1) + j, c]; 0 for a tap at a negative position.
template <class G, class T> void kernel_grad_per_position(const Sizes& z, const T* dy, const T* x, G* dw) {
  const index_t d = z.d();
#pragma omp parallel for schedule(static) if (worth_threads(z.positions() * z.f * z.k))
  for (index_t p = 0; p < z.positions(); ++p) {
    const index_t first = std::max<index_t>(0, z.k - 1 - p % z.len);
    const T* xp = x + p * z.f;
    for (index_t h = 0; h < z.heads; ++h) {
      G* out = dw + (p * z.heads + h) * z.k;
      for (index_t j = 0; j < first; ++j) out[j] = G(0);
      for (index_t j = first; j < z.k; ++j) {
        G sum(0);
        for (index_t c = h * d; c < (h + 1) * d; ++c)
          sum += round_to<G>(dy[p * z.f + c]) * round_to<G>(xp[(j - (z.k - 1)) * z.f + c]);
        out[j] = sum;
      }
    }
  }
}

// The gradient of one kernel shared by every position, (H, K) in the wide type: dW[h, j] = the same sum over every
// sample s, position t >= k - 1 - j and channel c of head h, in LaneSum's order over (s; t, c). Each (h, j) on one
// thread.
template <class T> void kernel_grad_shared(const Sizes& z, const T* dy, const T* x, Accumulate mode, wide_t<T>* dw) {
  using W = wide_t<T>;
  const index_t d = z.d();
#pragma omp parallel for schedule(static) if (worth_threads(z.positions() * z.f * z.k))
  for (index_t hj = 0; hj < z.heads * z.k; ++hj) {
    const index_t h = hj / z.k, j = hj % z.k, first = z.k - 1 - j;  // the first position whose tap j is inside
    LaneSum<T> sum;
    for (index_t s = 0; s < z.n && first < z.len; ++s) {
      const index_t p0 = s * z.len + first;
      sum.add((z.len - first) * d, mode, [&](index_t i) {
        const index_t p = p0 + i / d, c = h * d + i % d;
        return W(round_to<W>(dy[p * z.f + c]) * round_to<W>(x[(p - (z.k - 1) + j) * z.f + c]));
      });
    }
    dw[hj] = sum.total(mode);
  }
}

}  // namespace

template <class T>
DynamicConv<T>::DynamicConv(std::string label, DynamicConvSpec spec)
    : Layer<T>(std::move(label)),
      width_(spec.width),
      heads_(spec.heads),
      kernel_(spec.kernel),
      dynamic_(spec.dynamic),
      has_bias_(spec.bias) {
  if (kernel_ < 1) shape_error(this->label(), "kernel " + std::to_string(kernel_) + ": expected at least 1 tap");
  if (width_ < 1 || heads_ < 1 || width_ % heads_ != 0)
    shape_error(this->label(), std::to_string(heads_) + " heads do not split width " + std::to_string(width_) +
                                   " evenly (each head takes width / heads channels)");
  if (kernel_ > max_numel / heads_)
    shape_error(this->label(), std::to_string(heads_) + " heads of kernel " + std::to_string(kernel_) +
                                   " hold more taps than a tensor can");
  const index_t taps = heads_ * kernel_;
  weight_ = dynamic_ ? make_param<T>("weight_linear.weight", Shape{taps, width_})
                     : make_param<T>("weight", Shape{heads_, kernel_});
  if (dynamic_) kernel_bias_ = make_param<T>("weight_linear.bias", Shape{taps});
  if (has_bias_) bias_ = make_param<T>("bias", Shape{width_});
}

template <class T> Shape DynamicConv<T>::output_shape(const Shape& in) const {
  expect_sequence(this->label(), in, width_);
  return in;
}

template <class T> double DynamicConv<T>::forward_flops(const Shape& input) const {
  const double len = static_cast<double>(output_shape(input)[0]), f = static_cast<double>(width_);
  const double k = static_cast<double>(kernel_), taps = static_cast<double>(heads_ * kernel_);
  return 2.0 * len * f * k + (dynamic_ ? 2.0 * len * f * taps + 3.0 * len * taps : 0.0);
}

template <class T> std::vector<Param<T>*> DynamicConv<T>::params() {
  std::vector<Param<T>*> all{&weight_};
  if (dynamic_) all.push_back(&kernel_bias_);
  if (has_bias_) all.push_back(&bias_);
  return all;
}

template <class T> void DynamicConv<T>::initialize(Rng& rng) {
  const double fan_in = static_cast<double>(dynamic_ ? width_ : kernel_);
  const double bound = std::sqrt(6.0 / (fan_in + static_cast<double>(heads_ * kernel_)));
  for (index_t i = 0; i < weight_.value.numel(); ++i) weight_.value[i] = round_to<T>(rng.uniform(-bound, bound));
  if (dynamic_) kernel_bias_.value.fill(T(0));
  if (has_bias_) bias_.value.fill(T(0));
}

// x (N, T, F). The normalised kernels W first (dynamic: the projection x W_k^T + b_k in G over all N T positions,
// then the softmax of each head's taps, written over the logits when G = T), then y = the convolution + bias in G,
// rounded once into T.
template <class T> Tensor<T> DynamicConv<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), len = x.dim(1), f = width_, taps = heads_ * kernel_, rows = n * len;
  const Sizes z{n, len, f, heads_, kernel_};
  const Accumulate mode = ctx.accumulate;
  const bool dry = x.is_dry();
  Tensor<T> kernels(dynamic_ ? Shape{n, len, heads_, kernel_} : Shape{taps}, MemoryCategory::workspace,
                    Init::none);  // written whole
  if (dynamic_) {
    with_compute_type<T>(mode, [&]<class G>() {
      Tensor<G> logits = result_buffer<G>(kernels);  // (N T, H K)
      Tensor<float> packing = shared_packing_workspace<G>(weight_, rows, taps, f);
      if (dry) return;
      // logits^T = W_k x^T
      weight_product(weight_, taps, f, false, MatrixView<T>::row_major(x.data(), rows, f).t(),
                     OutputView<G>::row_major(logits.data(), rows, taps).t(), false, all_rows(packing));
#pragma omp parallel for schedule(static) if (worth_threads(rows * taps))
      for (index_t r = 0; r < rows; ++r) {
        G* l = logits.data() + r * taps;
        for (index_t i = 0; i < taps; ++i) l[i] += round_to<G>(kernel_bias_.value[i]);
        for (index_t h = 0; h < heads_; ++h)
          softmax_taps(l + h * kernel_, kernel_, mode, kernels.data() + r * taps + h * kernel_);
      }
    });
  } else if (!dry) {
    for (index_t h = 0; h < heads_; ++h)
      softmax_taps(weight_.value.data() + h * kernel_, kernel_, mode, kernels.data() + h * kernel_);
  }
  Tensor<T> y(x.shape(), MemoryCategory::workspace, Init::none);  // written whole
  with_compute_type<T>(mode, [&]<class G>() {
    Tensor<G> y_g = result_buffer<G>(y);
    if (dry) return;
    causal_conv(z, x.data(), kernels.data(), dynamic_ ? taps : 0, has_bias_ ? bias_.value.data() : nullptr,
                y_g.data());
    round_into(y_g, y);
  });
  if (ctx.keeps()) {
    input_.keep(x);
    kernels_.keep(kernels);
  }
  return y;
}

// dy (N, T, F). db = sum of dy over positions; dW (the kernels' gradient) from dy and x; through the softmax,
// dw = W * (dW - sum W dW) per head: lightweight, summed over positions, into the weight's gradient; dynamic, per
// position (the logits' gradient dl (N T, H K), rounded into T), then dW_k += dl^T x, db_k += sum dl. x is released
// after its last use, before dx = the convolution's transpose applied to dy (+ dl W_k for dynamic) in G, rounded
// once.
template <class T> Tensor<T> DynamicConv<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  using W = wide_t<T>;
  Tensor<T> x = input_.take();
  const Tensor<T> kernels = kernels_.take();
  const Shape x_shape = x.shape();
  const index_t n = x.dim(0), len = x.dim(1), f = width_, k = kernel_, taps = heads_ * kernel_, rows = n * len;
  const Sizes z{n, len, f, heads_, kernel_};
  const Accumulate mode = ctx.accumulate;
  const bool dry = x.is_dry() || dy.is_dry();
  // Each thread owns its columns, each summed over the positions in one fixed order.
  auto add_column_sums = [&](const Tensor<T>& of, Param<T>& into, index_t cols) {
#pragma omp parallel for schedule(static) if (worth_threads(rows * cols))
    for (index_t c = 0; c < (dry ? 0 : cols); ++c) {
      LaneSum<T> sum;
      sum.add(rows, mode, [&](index_t r) { return round_to<W>(of[r * cols + c]); });
      into.grad[c] = round_to<T>(W(round_to<W>(into.grad[c]) + sum.total(mode)));
    }
  };
  if (has_bias_) add_column_sums(dy, bias_, f);
  Tensor<T> dx;
  with_compute_type<T>(mode, [&]<class G>() {
    Tensor<T> dlogits;  // dynamic: (N, T, H, K)
    if (dynamic_) {
      dlogits = Tensor<T>(kernels.shape(), MemoryCategory::workspace, Init::none);  // written whole
      {
        Tensor<G> dw = result_buffer<G>(dlogits);  // G = T: dlogits itself, each head's dW overwritten by its dl
        if (!dry) {
          kernel_grad_per_position(z, dy.data(), x.data(), dw.data());
#pragma omp parallel for schedule(static) if (worth_threads(rows * taps))
          for (index_t i = 0; i < rows * heads_; ++i)
            softmax_taps_backward(kernels.data() + i * k, dw.data() + i * k, k, mode,
                                  [&](index_t j, const W& g) { dlogits[i * k + j] = round_to<T>(g); });
        }
      }
      const auto dl = MatrixView<T>::row_major(dlogits.data(), rows, taps);
      {
        Tensor<G> dweight(weight_.value.shape(), MemoryCategory::workspace);
        Tensor<float> packing = shared_packing_workspace<G>(weight_, taps, f, rows);
        if (!dry) {
          add_weight_gradient(weight_, dl.t(), MatrixView<T>::row_major(x.data(), rows, f).t(), dweight.data(),
                              all_rows(packing));
          store_rounded(dweight.data(), weight_.grad.data(), dweight.numel(), true);
        }
      }
      add_column_sums(dlogits, kernel_bias_, taps);
    } else {
      Tensor<W> dw(Shape{taps}, MemoryCategory::workspace);  // summed over every position
      if (!dry) {
        kernel_grad_shared(z, dy.data(), x.data(), mode, dw.data());
        for (index_t h = 0; h < heads_; ++h)
          softmax_taps_backward(kernels.data() + h * k, dw.data() + h * k, k, mode, [&](index_t j, const W& g) {
            T& grad = weight_.grad[h * k + j];
            grad = round_to<T>(W(round_to<W>(grad) + g));
          });
      }
    }
    x = Tensor<T>();  // last use
    if (!want_input_grad) return;
    dx = Tensor<T>(x_shape, MemoryCategory::workspace, Init::none);  // written whole
    Tensor<G> dx_g = result_buffer<G>(dx);
    Tensor<float> packing =
        dynamic_ ? shared_packing_workspace<G>(weight_, rows, f, taps) : Tensor<float>();
    if (dry) return;
    causal_conv_input_grad(z, dy.data(), kernels.data(), dynamic_ ? taps : 0, dx_g.data());
    if (dynamic_)  // dx^T += W_k^T dl^T
      weight_product(weight_, taps, f, true, MatrixView<T>::row_major(dlogits.data(), rows, taps).t(),
                     OutputView<G>::row_major(dx_g.data(), rows, f).t(), true, all_rows(packing));
    round_into(dx_g, dx);
  });
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(DynamicConv)

}  // namespace lowmem
