#pragma once
// The compute-type rule in one place. Products and sums run in a "compute type" G: float for f16/bf16 with
// f32 accumulation (as hardware does: 16-bit operands, 32-bit accumulators), otherwise the storage type itself.
// Kernels are written once over (T storage, G compute); with_compute_type picks G at run time.
#include <Eigen/Core>
#include <algorithm>
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

// The bits of +inf in a 16-bit format (f16 or bf16: sign in the top bit, +inf the largest non-NaN magnitude), for
// kernels that work on the bits of 16-bit values instead of converting them to float.
template <class T> constexpr std::uint16_t infinity_bits = std::is_same_v<T, f16> ? 0x7C00 : 0x7F80;

// Calls f(offset, values, count) over x[0, n) in the wide type W = wide_t<T>: 16-bit values are widened in chunks
// of 64 (a multiple of LaneSum's lanes, so lane assignment is unchanged) with the vectorised convert() into a
// 256-byte array on the stack; other types are passed in place, whole. (The chunk is a register file's worth,
// the one scratch memory outside a tensor.) widened2 does the same for two arrays side by side.
template <class T, class F> void widened(const T* x, index_t n, F&& f) {
  using W = wide_t<T>;
  if constexpr (std::is_same_v<W, T>) {
    f(index_t{0}, x, n);
  } else {
    W chunk[64];
    for (index_t i = 0; i < n; i += 64) {
      const index_t m = std::min<index_t>(64, n - i);
      convert(x + i, chunk, m);
      f(i, static_cast<const W*>(chunk), m);
    }
  }
}
template <class T, class F> void widened2(const T* x, const T* y, index_t n, F&& f) {
  using W = wide_t<T>;
  if constexpr (std::is_same_v<W, T>) {
    f(index_t{0}, x, y, n);
  } else {
    W xs[64], ys[64];
    for (index_t i = 0; i < n; i += 64) {
      const index_t m = std::min<index_t>(64, n - i);
      convert(x + i, xs, m);
      convert(y + i, ys, m);
      f(i, static_cast<const W*>(xs), static_cast<const W*>(ys), m);
    }
  }
}

// dst[i] = f(i) rounded once into T for i in [0, n), f returning wide_t<T>: 16-bit results are formed in chunks of
// 64 and rounded with convert(); other types are written directly (dst may be the array f reads, index by index).
template <class T, class F> void narrowed(T* dst, index_t n, F&& f) {
  using W = wide_t<T>;
  if constexpr (std::is_same_v<W, T>) {
    for (index_t i = 0; i < n; ++i) dst[i] = f(i);
  } else {
    W chunk[64];
    for (index_t i = 0; i < n; i += 64) {
      const index_t m = std::min<index_t>(64, n - i);
      for (index_t k = 0; k < m; ++k) chunk[k] = f(i + k);
      convert(static_cast<const W*>(chunk), dst + i, m);
    }
  }
}

// The order of long sums (normalisation statistics, bias gradients): 16 interleaved partial sums. Value i of a run
// goes to lane i mod 16, each lane adds in increasing order (runs one after another), and total() adds the lanes
// pairwise (lane l + lane l + 8, then + 4, + 2, + 1). One fixed order, so the same bits on every instruction set
// and thread count; the compiler vectorises it for float and double (a single running sum is bound by the add's
// latency: 4 cycles a value), and the error bound grows with n / 16 rather than n. Every partial sum is rounded as
// the accumulation mode asks (16-bit storage accumulation rounds each one to T).
template <class T> class LaneSum {
 public:
  using W = wide_t<T>;
  static constexpr int lanes = 16;
  LaneSum() { std::fill(lane_, lane_ + lanes, W(0)); }
  // Adds value(i) for i in [0, n), value(i) returning W.
  template <class F> void add(index_t n, Accumulate mode, F&& value) {
    index_t i = 0;
    for (; i + lanes <= n; i += lanes)
      for (int l = 0; l < lanes; ++l) lane_[l] = accumulate_round<T>(W(lane_[l] + value(i + l)), mode);
    for (int l = 0; l < lanes && i < n; ++i, ++l) lane_[l] = accumulate_round<T>(W(lane_[l] + value(i)), mode);
  }
  W total(Accumulate mode) const {
    W sums[lanes];
    std::copy(lane_, lane_ + lanes, sums);
    for (int width = lanes / 2; width >= 1; width /= 2)
      for (int l = 0; l < width; ++l) sums[l] = accumulate_round<T>(W(sums[l] + sums[l + width]), mode);
    return sums[0];
  }

 private:
  W lane_[lanes];
};

// dst[i] (+)= src[i], rounding once into the storage type.
template <class T, class G> void store_rounded(const G* src, T* dst, index_t n, bool add) {
  if (!add) return convert(src, dst, n);
  for (index_t i = 0; i < n; ++i) dst[i] = round_to<T>(round_to<G>(dst[i]) + src[i]);
}

}  // namespace lowmem
