#include "layers/activations.hpp"

#include <immintrin.h>

#include <cstdint>

#include "numerics/error.hpp"
#include "numerics/normal.hpp"
#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {

namespace {

// ReLU on the bits of a 16-bit value (f16 or bf16: sign in the top bit, +inf the largest non-NaN magnitude), the
// same results as the comparisons below but in integer operations the compiler vectorises (the comparisons
// would convert every value to float).
// y = x where x > 0 or x is NaN, else +0.
template <class T> void relu_bits(const T* in, T* out, index_t n) {
  const auto* i16 = reinterpret_cast<const std::uint16_t*>(in);
  auto* o16 = reinterpret_cast<std::uint16_t*>(out);
  for (index_t i = 0; i < n; ++i) {
    const std::uint16_t b = i16[i];
    const bool keep = (b < 0x8000) | ((b & 0x7FFF) > infinity_bits<T>);
    o16[i] = b & static_cast<std::uint16_t>(-static_cast<int>(keep));  // a mask, not a branch on data
  }
}
// dx = dy where y > 0 (y not NaN), else +0.
template <class T> void relu_grad_bits(const T* y, const T* dy, T* dx, index_t n) {
  const auto* y16 = reinterpret_cast<const std::uint16_t*>(y);
  const auto* g16 = reinterpret_cast<const std::uint16_t*>(dy);
  auto* o16 = reinterpret_cast<std::uint16_t*>(dx);
  for (index_t i = 0; i < n; ++i) {
    // b in [1, +inf] exactly when b - 1 (wrapping at 0) is below +inf's bits; kept as a mask, not a branch.
    const bool keep = static_cast<std::uint16_t>(y16[i] - 1) < infinity_bits<T>;
    o16[i] = g16[i] & static_cast<std::uint16_t>(-static_cast<int>(keep));
  }
}

// dx = dy where the mask's bit is set, else slope dy (relu: +0 exactly), for float: eight values per mask byte in
// one AVX2 blend (GCC left the generic loop scalar, and it was most of approximate activations' backward cost).
// The same operations per value as the generic loop, so the same bits. Returns how many values it did.
index_t masked_grad_f32(const std::uint8_t* mask, const float* dy, float* dx, index_t n, bool relu, float slope) {
#ifdef __AVX2__
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 s = _mm256_set1_ps(slope);
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i byte = _mm256_set1_epi32(mask[i / 8]);
    const __m256 on = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(byte, bit), bit));
    const __m256 g = _mm256_loadu_ps(dy + i);
    const __m256 off = relu ? _mm256_setzero_ps() : _mm256_mul_ps(s, g);  // a slope rounding to 0 still multiplies
    _mm256_storeu_ps(dx + i, _mm256_blendv_ps(off, g, on));
  }
  return i;
#else
  (void)mask, (void)dy, (void)dx, (void)n, (void)relu, (void)slope;
  return 0;
#endif
}

}  // namespace

template <class T>
LeakyRelu<T>::LeakyRelu(std::string label, double slope)
    : Layer<T>(std::move(label)), slope_(slope), slope_t_(round_to<T>(slope)) {
  if (!(slope >= 0.0)) throw Error("layer " + this->label() + ": slope must be >= 0, got " + std::to_string(slope));
}

template <class T> Tensor<T> LeakyRelu<T>::forward(Tensor<T> x, const RunContext& ctx) {
  Tensor<T> y = x.overwritable(MemoryCategory::workspace);  // in place unless x is held elsewhere
  if (!x.is_dry()) {
    // Both arms computed, then selected: vectorises without branches (the signs are random), and NaN propagates.
    const T zero(0), slope = slope_t_;
    const T* in = x.data();  // may be out
    T* out = y.data();
    for_blocks(x.numel(), [&](index_t first, index_t end) {
      if (slope_ == 0.0) {  // ReLU: select 0 itself (0 * -inf would be NaN; PyTorch gives 0)
        if constexpr (is_16bit<T>) relu_bits(in + first, out + first, end - first);
        else
          for (index_t i = first; i < end; ++i) out[i] = in[i] > zero ? in[i] : (is_nan(in[i]) ? in[i] : zero);
      } else {
        for (index_t i = first; i < end; ++i) {
          const T negative = T(slope * in[i]);
          out[i] = in[i] > zero ? in[i] : negative;
        }
      }
    });
  }
  if (ctx.keeps() && active_save_hook<T>()) {  // kept activations are approximated: keep the exact mask
    Tensor<std::uint8_t> mask(Shape{(y.numel() + 7) / 8}, MemoryCategory::workspace);
    if (!y.is_dry()) {  // a byte at a time: 8 values per byte, the last byte padded with zeros
      const T* v = y.data();
      const index_t n = y.numel();
      for_blocks(n, [&](index_t first, index_t end) {  // blocks of whole bytes
        for (index_t b = first / 8; b < (end + 7) / 8; ++b) {
          unsigned byte = 0;
          for (index_t k = 0; k < 8 && b * 8 + k < n; ++k) byte |= unsigned{v[b * 8 + k] > T(0)} << k;
          mask[b] = static_cast<std::uint8_t>(byte);
        }
      });
    }
    mask_.keep(mask);
  } else if (ctx.keeps()) {
    output_.keep(y);
  }
  return y;
}

template <class T> Tensor<T> LeakyRelu<T>::backward(Tensor<T> dy, const RunContext&, bool want_input_grad) {
  Tensor<T> dx;
  if (want_input_grad)
    dx = mask_.held() ? input_grad_from_mask(mask_.get(), std::move(dy)) : input_grad(output_.get(), std::move(dy));
  output_.release();
  mask_.release();
  return dx;
}

template <class T>
Tensor<T> LeakyRelu<T>::input_grad_from_mask(const Tensor<std::uint8_t>& mask, Tensor<T> dy) const {
  Tensor<T> dx = dy.overwritable(MemoryCategory::workspace);
  if (dy.is_dry()) return dx;
  // Both arms computed, then selected by the bit (random signs: a branch would mispredict half the time).
  const std::uint8_t* m = mask.data();
  const T* grad = dy.data();  // may be result
  const T zero(0), slope = slope_t_;
  T* result = dx.data();
  for_blocks(dy.numel(), [&](index_t first, index_t end) {  // first: a multiple of 8, a whole mask byte
    index_t i = first;
    if constexpr (std::is_same_v<T, float>)
      i += masked_grad_f32(m + first / 8, grad + first, result + first, end - first, slope_ == 0.0, slope);
    for (; i < end; ++i) {
      const T off = slope_ == 0.0 ? zero : T(slope * grad[i]);  // 0 exactly, even for an infinite gradient
      result[i] = (m[i / 8] >> (i % 8)) & 1 ? grad[i] : off;
    }
  });
  return dx;
}

template <class T> Tensor<T> LeakyRelu<T>::input_grad(const Tensor<T>& y, Tensor<T> dy) const {
  Tensor<T> dx = dy.overwritable(MemoryCategory::workspace);  // in place unless dy is held elsewhere
  if (y.is_dry()) return dx;
  const T zero(0), slope = slope_t_;
  const T *out = y.data(), *grad = dy.data();  // grad may be result
  T* result = dx.data();
  for_blocks(y.numel(), [&](index_t first, index_t end) {
    if (slope_ == 0.0) {  // exactly 0 where the unit is off, even for an infinite gradient (as PyTorch)
      if constexpr (is_16bit<T>) relu_grad_bits(out + first, grad + first, result + first, end - first);
      else
        for (index_t i = first; i < end; ++i) result[i] = out[i] > zero ? grad[i] : zero;
    } else {
      for (index_t i = first; i < end; ++i) {
        const T negative = T(slope * grad[i]);
        result[i] = out[i] > zero ? grad[i] : negative;
      }
    }
  });
  return dx;
}

template <class T> std::string LeakyRelu<T>::why_not_invertible() const {
  return slope_ > 0.0 ? "" : "a leaky ReLU with slope 0 (ReLU) is not invertible: negative inputs map to 0";
}

template <class T> Tensor<T> LeakyRelu<T>::inverse(const Tensor<T>& y) { return rebuild_input(y); }

template <class T> Tensor<T> LeakyRelu<T>::rebuild_input(Tensor<T> y) const {
  if (!invertible()) throw Error("layer " + this->label() + ": " + why_not_invertible());
  Tensor<T> x = y.overwritable(MemoryCategory::workspace);
  if (!y.is_dry())
    for (index_t i = 0; i < y.numel(); ++i) x[i] = y[i] > T(0) ? y[i] : T(y[i] / slope_t_);
  return x;
}

// The output is all the gradient needs: y > 0 exactly when x > 0. The gradient first (it reads y), then x over y.
template <class T>
Reconstructed<T> LeakyRelu<T>::backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext&,
                                                    bool want_input_grad) {
  Tensor<T> dx = want_input_grad ? input_grad(y, std::move(dy)) : Tensor<T>();
  return {rebuild_input(std::move(y)), std::move(dx)};
}

namespace {

// Moves values between (N, C, H, W) and (N, 4C, H/2, W/2); `to_channels` picks the direction.
template <class T> void shuffle(const Tensor<T>& from, Tensor<T>& to, bool to_channels) {
  const Tensor<T>& image = to_channels ? from : to;  // the (N, C, H, W) side
  const index_t n = image.dim(0), c = image.dim(1), h = image.dim(2), w = image.dim(3);
  if (from.is_dry()) return;
  for (index_t k = 0; k < n; ++k)
    for (index_t ch = 0; ch < c; ++ch)
      for (index_t i = 0; i < h; ++i)
        for (index_t j = 0; j < w; ++j) {
          const index_t spatial = ((k * c + ch) * h + i) * w + j;
          const index_t channel = ((k * 4 * c + 4 * ch + 2 * (i % 2) + j % 2) * (h / 2) + i / 2) * (w / 2) + j / 2;
          if (to_channels) to[channel] = from[spatial];
          else to[spatial] = from[channel];
        }
}

}  // namespace

template <class T> Shape PixelShuffle<T>::output_shape(const Shape& in) const {
  expect_rank(this->label(), in, 3);
  if (in[1] % 2 != 0 || in[2] % 2 != 0)
    shape_error(this->label(), "needs an even height and width, got " + in.str());
  return Shape{4 * in[0], in[1] / 2, in[2] / 2};
}

template <class T> Tensor<T> PixelShuffle<T>::forward(Tensor<T> x, const RunContext&) {
  Tensor<T> y(Shape{x.dim(0), 4 * x.dim(1), x.dim(2) / 2, x.dim(3) / 2}, MemoryCategory::workspace);
  shuffle(x, y, true);
  return y;
}

template <class T> Tensor<T> PixelShuffle<T>::backward(Tensor<T> dy, const RunContext&, bool want_input_grad) {
  if (!want_input_grad) return {};
  return inverse(dy);
}

template <class T> Tensor<T> PixelShuffle<T>::inverse(const Tensor<T>& y) {
  Tensor<T> x(Shape{y.dim(0), y.dim(1) / 4, 2 * y.dim(2), 2 * y.dim(3)}, MemoryCategory::workspace);
  shuffle(y, x, false);
  return x;
}

template <class T>
Reconstructed<T> PixelShuffle<T>::backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                                       bool want_input_grad) {
  Tensor<T> x = inverse(y);
  y = Tensor<T>();  // released before dL/dx is formed: a permutation cannot be written over its own input
  return {std::move(x), backward(std::move(dy), ctx, want_input_grad)};
}

template <class T> Tensor<T> Flatten<T>::forward(Tensor<T> x, const RunContext&) {
  input_shape_ = x.shape();
  return x.reshaped(Shape{x.dim(0), x.numel() / x.dim(0)});
}

template <class T> Tensor<T> Flatten<T>::backward(Tensor<T> dy, const RunContext&, bool) {
  return dy.reshaped(input_shape_);
}

namespace {

// Float and 16-bit storage compute GELU in double, Phi and phi from normal_cdf_pdf (branch-free, so the loops
// vectorise, and free of the C library's erff); f64, dd and mp in their own type with its erf and exp.
template <class T> constexpr bool gelu_in_double = std::is_same_v<T, float> || is_16bit<T>;
template <class T> using GeluType = std::conditional_t<gelu_in_double<T>, double, wide_t<T>>;

// Phi(x) and phi(x) in the wide type W (f64, dd, mp).
template <class W> struct NormalFunctions {
  const W inv_sqrt2 = W(1) / sqrt_of(W(2)), inv_sqrt_2pi = W(1) / sqrt_of(W(W(2) * pi_of<W>()));
  W cdf(const W& x) const { return W(W(W(1) + erf_of(W(x * inv_sqrt2))) / W(2)); }
  W pdf(const W& x) const { return W(exp_of(W(-(x * x) / W(2))) * inv_sqrt_2pi); }
};

}  // namespace

template <class T> Tensor<T> Gelu<T>::forward(Tensor<T> x, const RunContext& ctx) {
  using W = GeluType<T>;
  if (ctx.keeps()) input_.keep(x);  // first: y takes x's buffer only if nothing keeps x
  Tensor<T> y = x.overwritable(MemoryCategory::workspace);
  if (!x.is_dry()) {
    const NormalFunctions<W> normal;
    for_blocks(x.numel(), [&](index_t first, index_t end) {
      for (index_t i = first; i < end; ++i) {
        const W v = round_to<W>(x[i]);
        if constexpr (gelu_in_double<T>) y[i] = round_to<T>(v * normal_cdf_pdf(v).cdf);
        else y[i] = round_to<T>(W(v * normal.cdf(v)));
      }
    });
  }
  return y;
}

template <class T> Tensor<T> Gelu<T>::backward(Tensor<T> dy, const RunContext&, bool want_input_grad) {
  using W = GeluType<T>;
  const Tensor<T> x = input_.take();
  Tensor<T> dx;
  if (want_input_grad) {
    dx = dy.overwritable(MemoryCategory::workspace);
    if (!dy.is_dry()) {
      const NormalFunctions<W> normal;
      for_blocks(dy.numel(), [&](index_t first, index_t end) {
        for (index_t i = first; i < end; ++i) {
          const W v = round_to<W>(x[i]);
          if constexpr (gelu_in_double<T>) {
            const NormalCdfPdf n = normal_cdf_pdf(v);
            dx[i] = round_to<T>(round_to<W>(dy[i]) * (n.cdf + v * n.pdf));
          } else {
            dx[i] = round_to<T>(W(round_to<W>(dy[i]) * W(normal.cdf(v) + v * normal.pdf(v))));
          }
        }
      });
    }
  }
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(LeakyRelu)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(Gelu)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(Flatten)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(PixelShuffle)

}  // namespace lowmem
