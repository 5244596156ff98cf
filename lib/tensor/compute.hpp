#pragma once
// The compute-type rule in one place. Products and sums run in a "compute type" G: float for f16/bf16 with
// f32 accumulation (as hardware does: 16-bit operands, 32-bit accumulators), otherwise the storage type itself.
// Kernels are written once over (T storage, G compute); with_compute_type picks G at run time.
#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "numerics/scalar.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

template <class G> using RowMatrix = Eigen::Matrix<G, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T, class F> void with_compute_type(Accumulate mode, F&& f) {
  if constexpr (is_16bit<T>) {
    if (mode == Accumulate::f32) return f.template operator()<float>();
  }
  f.template operator()<T>();
}

// dst[i] = src[i] rounded once into To. Between float and half the CPU's F16C instructions do it, 8 at a time
// (round to nearest even, as round_to); every other pair goes through round_to.
template <class To, class From> void convert(const From* src, To* dst, index_t n) {
  index_t i = 0;
  if constexpr (std::is_same_v<To, From>) {
    std::copy(src, src + n, dst);
    return;
  }
#ifdef __F16C__
  if constexpr (std::is_same_v<From, f16> && std::is_same_v<To, float>) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, f16>) {
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  if constexpr (std::is_same_v<From, bf16> && std::is_same_v<To, float>) {
    // bf16 is the top half of a float: widening is a shift, which the compiler vectorises.
    for (; i < n; ++i) {
      const std::uint32_t wide = std::uint32_t{Eigen::numext::bit_cast<std::uint16_t>(src[i])} << 16;
      std::memcpy(dst + i, &wide, 4);
    }
  }
  for (; i < n; ++i) dst[i] = round_to<To>(src[i]);
}

// Where a kernel writes a result in compute type G: the output tensor itself when G is T (no copy, no extra
// memory), else a G buffer charged as workspace, which round_into() then rounds once into the output.
template <class G, class T> Tensor<G> result_buffer(const Tensor<T>& out) {
  if constexpr (std::is_same_v<G, T>) return out;
  else return Tensor<G>(out.shape(), MemoryCategory::workspace);
}
template <class T, class G> void round_into(const Tensor<G>& buffer, Tensor<T>& out) {
  if constexpr (!std::is_same_v<G, T>)
    if (!buffer.is_dry() && !out.is_dry()) convert(buffer.data(), out.data(), out.numel());
}

// dst[i] (+)= src[i], rounding once into the storage type.
template <class T, class G> void store_rounded(const G* src, T* dst, index_t n, bool add) {
  if (!add) return convert(src, dst, n);
  for (index_t i = 0; i < n; ++i) dst[i] = round_to<T>(round_to<G>(dst[i]) + src[i]);
}

}  // namespace lowmem
