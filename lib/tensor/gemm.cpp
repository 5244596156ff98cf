#include "tensor/gemm.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "tensor/compute.hpp"

namespace lowmem {

namespace {

// Blocks (after Goto and van de Geijn): an MC x KC slab of a is packed once and stays in L2 while one KC x NR
// panel of b at a time is packed (into L1) and multiplied into it, one MR x NR tile of c at a time in registers.
// Only a panel of b is packed, never a whole slab: the workspace is the slab of a plus one panel, which for the
// small products of a narrow network is far less than a copy of b. KC is even, so a bf16 pair never straddles two
// slabs, and the chain of sums is the same whatever the blocking. f32 operands skip packing where they can be read
// as they lie (gemm_float): for a convolution's small products (32 output channels: each packed value used only
// 32 times) packing took a third of the product's time.
constexpr index_t KC = 128, MC = 96;
constexpr index_t NR_MAX = 32;  // every kernel's NR divides 32; MR is 4, 6 or 8

index_t round_up(index_t x, index_t m) { return (x + m - 1) / m * m; }
// Rows of a packed slab of m rows on any kernel: m rounded up to its MR.
index_t packed_rows(index_t m) { return std::max({round_up(m, 4), round_up(m, 6), round_up(m, 8)}); }

// A micro-kernel: c (mr x nr, row stride ldc) = or += a panel (kc steps of mr values) times b panel (kc steps of
// nr values), one fused multiply-add chain per entry, k ascending. With `pairs` the panels hold bf16 pairs: step
// k/2 holds, per row or column, the values at k and k + 1 side by side (VDPBF16PS's layout); kc is then even.
// C: the type of the sums (double or dd; float kernels read through Operands, below).
template <class C> struct Kernel {
  index_t mr, nr;
  bool pairs;
  void (*run)(index_t kc, const void* a, const void* b, C* c, index_t ldc, bool add);
};

// Where a float kernel reads its operands. Row i of a's tile at step k is a[k * a_k + i * a_i]: a packed panel
// (a_k = MR, a_i = 1), or an f32 matrix read where it lies (its own strides), so that a weight matrix is not
// copied for every band of a convolution. Step k of b's nr values starts at b_rows[k] + b_shift: a row of a packed
// panel, or a row of an f32 b itself where its rows run along memory (a convolution's column matrix, read in
// place). For bf16 pairs a and b_rows address 32-bit pairs. Where the values come from never changes the sums.
struct Operands {
  const float* a;
  index_t a_k, a_i;
  const float* const* b_rows;
  index_t b_shift;  // added to every b_rows[k]: the panel's first column, where rows are b's own
};
template <> struct Kernel<float> {
  index_t mr, nr;
  bool pairs;
  void (*run)(index_t kc, const Operands& ops, float* c, index_t ldc, bool add);
};

// The tile's row pointers into a: row i at step k is rows[i][k * a_k].
template <int MR> struct ARows {
  const float* rows[MR];
  explicit ARows(const Operands& ops) {
    for (int i = 0; i < MR; ++i) rows[i] = ops.a + i * ops.a_i;
  }
};

template <int MR, int NR>
void portable_kernel_f32(index_t kc, const Operands& ops, float* c, index_t ldc, bool add) {
  const ARows<MR> a(ops);
  float acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = add ? c[i * ldc + j] : 0.0f;
  for (index_t k = 0; k < kc; ++k) {
    const float* b = ops.b_rows[k] + ops.b_shift;
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = std::fma(a.rows[i][k * ops.a_k], b[j], acc[i][j]);
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
}

template <int MR, int NR, class C>
void portable_kernel(index_t kc, const void* ap, const void* bp, C* c, index_t ldc, bool add) {
  const C* a = static_cast<const C*>(ap);
  const C* b = static_cast<const C*>(bp);
  C acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = add ? c[i * ldc + j] : C(0);
  for (index_t k = 0; k < kc; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = std::fma(a[k * MR + i], b[k * NR + j], acc[i][j]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
}

__attribute__((target("avx2,fma"))) void avx2_kernel(index_t kc, const Operands& ops, float* c, index_t ldc,
                                                     bool add) {
  constexpr int MR = 6;
  const ARows<MR> a(ops);
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = add ? _mm256_loadu_ps(c + i * ldc) : _mm256_setzero_ps();
    acc[i][1] = add ? _mm256_loadu_ps(c + i * ldc + 8) : _mm256_setzero_ps();
  }
  for (index_t k = 0; k < kc; ++k) {
    const float* b = ops.b_rows[k] + ops.b_shift;
    const index_t at = k * ops.a_k;
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a.rows[i] + at);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(c + i * ldc, acc[i][0]);
    _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
  }
}

__attribute__((target("avx512f"))) void avx512_kernel(index_t kc, const Operands& ops, float* c, index_t ldc,
                                                      bool add) {
  constexpr int MR = 8;
  const ARows<MR> a(ops);
  __m512 acc[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = add ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    acc[i][1] = add ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (index_t k = 0; k < kc; ++k) {
    const float* b = ops.b_rows[k] + ops.b_shift;
    const index_t at = k * ops.a_k;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a.rows[i][at]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc[i][0]);
    _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
  }
}

// f64: 4 (AVX2) or 8 (AVX-512) doubles per register, the same shapes in registers as for float.
__attribute__((target("avx2,fma"))) void avx2_kernel_f64(index_t kc, const void* ap, const void* bp, double* c,
                                                         index_t ldc, bool add) {
  constexpr int MR = 6;
  const double* a = static_cast<const double*>(ap);
  const double* b = static_cast<const double*>(bp);
  __m256d acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = add ? _mm256_loadu_pd(c + i * ldc) : _mm256_setzero_pd();
    acc[i][1] = add ? _mm256_loadu_pd(c + i * ldc + 4) : _mm256_setzero_pd();
  }
  for (index_t k = 0; k < kc; ++k) {
    const __m256d b0 = _mm256_loadu_pd(b + k * 8), b1 = _mm256_loadu_pd(b + k * 8 + 4);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256d ai = _mm256_broadcast_sd(a + k * MR + i);
      acc[i][0] = _mm256_fmadd_pd(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_pd(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_pd(c + i * ldc, acc[i][0]);
    _mm256_storeu_pd(c + i * ldc + 4, acc[i][1]);
  }
}

__attribute__((target("avx512f"))) void avx512_kernel_f64(index_t kc, const void* ap, const void* bp, double* c,
                                                          index_t ldc, bool add) {
  constexpr int MR = 8;
  const double* a = static_cast<const double*>(ap);
  const double* b = static_cast<const double*>(bp);
  __m512d acc[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = add ? _mm512_loadu_pd(c + i * ldc) : _mm512_setzero_pd();
    acc[i][1] = add ? _mm512_loadu_pd(c + i * ldc + 8) : _mm512_setzero_pd();
  }
  for (index_t k = 0; k < kc; ++k) {
    const __m512d b0 = _mm512_loadu_pd(b + k * 16), b1 = _mm512_loadu_pd(b + k * 16 + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512d ai = _mm512_set1_pd(a[k * MR + i]);
      acc[i][0] = _mm512_fmadd_pd(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_pd(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_pd(c + i * ldc, acc[i][0]);
    _mm512_storeu_pd(c + i * ldc + 8, acc[i][1]);
  }
}

// bf16 pairs: each VDPBF16PS adds, per lane, a[k+1] b[k+1] and then a[k] b[k] to the f32 sum.
// Pairs are always packed: a holds one pair per row and step (a_k = MR), b_rows[p] the 32 pairs of step p.
__attribute__((target("avx512f,avx512bf16"))) void avx512_bf16_kernel(index_t kc, const Operands& ops, float* c,
                                                                      index_t ldc, bool add) {
  constexpr int MR = 8;
  const auto* a = reinterpret_cast<const std::uint32_t*>(ops.a);
  __m512 acc[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = add ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    acc[i][1] = add ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (index_t p = 0; p < kc / 2; ++p) {
    const float* b = ops.b_rows[p] + ops.b_shift;
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[p * MR + i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc[i][0]);
    _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
  }
}

// ---- dd (double-double) products: every step is mul_add (numerics/double_double.hpp), lane by lane ----
// Panels are split: step k holds the width hi parts, then the width lo parts, so that a vector loads either.
// The kernels keep c's tile split the same way in a local array (c itself is interleaved hi, lo).

template <int MR, int NR>
void portable_kernel_dd(index_t kc, const void* ap, const void* bp, dd* c, index_t ldc, bool add) {
  const double* a = static_cast<const double*>(ap);
  const double* b = static_cast<const double*>(bp);
  dd acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = add ? c[i * ldc + j] : dd(0.0);
  for (index_t k = 0; k < kc; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        acc[i][j] = mul_add(dd(a[k * 2 * MR + i], a[k * 2 * MR + MR + i]),
                            dd(b[k * 2 * NR + j], b[k * 2 * NR + NR + j]), acc[i][j]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
}

// Splits c's tile into hi and lo arrays (zeros when not adding) and joins it back.
template <int MR, int NR> struct SplitTile {
  alignas(64) double hi[MR][NR], lo[MR][NR];
  SplitTile(const dd* c, index_t ldc, bool add) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        hi[i][j] = add ? c[i * ldc + j].hi : 0.0;
        lo[i][j] = add ? c[i * ldc + j].lo : 0.0;
      }
  }
  void store(dd* c, index_t ldc) const {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) c[i * ldc + j] = dd(hi[i][j], lo[i][j]);
  }
};

// mul_add's fifteen operations on vectors: (sh, sl) += (ah, al) (bh, bl). The empty asm is dd::rounded: the
// product stays a rounded value that the sum after it cannot be fused with.
#define LOWMEM_DD_MUL_ADD(V, ah, al, bh, bl, sh, sl)                                       \
  do {                                                                                       \
    auto p = V##_mul_pd(ah, bh);                                                             \
    asm("" : "+v"(p));                                                                       \
    auto e = V##_fmsub_pd(ah, bh, p);                                                        \
    e = V##_fmadd_pd(ah, bl, e);                                                             \
    e = V##_fmadd_pd(al, bh, e);                                                             \
    const auto s = V##_add_pd(sh, p), v = V##_sub_pd(s, sh);                                 \
    const auto w = V##_add_pd(V##_sub_pd(sh, V##_sub_pd(s, v)), V##_sub_pd(p, v));           \
    const auto t = V##_add_pd(V##_add_pd(w, e), sl);                                         \
    sh = V##_add_pd(s, t);                                                                   \
    sl = V##_sub_pd(t, V##_sub_pd(sh, s));                                                   \
  } while (0)

__attribute__((target("avx512f"))) void avx512_kernel_dd(index_t kc, const void* ap, const void* bp, dd* c,
                                                         index_t ldc, bool add) {
  constexpr int MR = 8, NR = 8;
  const double* a = static_cast<const double*>(ap);
  const double* b = static_cast<const double*>(bp);
  SplitTile<MR, NR> tile(c, ldc, add);
  __m512d h[MR], l[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) h[i] = _mm512_load_pd(tile.hi[i]), l[i] = _mm512_load_pd(tile.lo[i]);
  for (index_t k = 0; k < kc; ++k) {
    const __m512d bh = _mm512_loadu_pd(b + k * 2 * NR), bl = _mm512_loadu_pd(b + k * 2 * NR + NR);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512d ah = _mm512_set1_pd(a[k * 2 * MR + i]), al = _mm512_set1_pd(a[k * 2 * MR + MR + i]);
      LOWMEM_DD_MUL_ADD(_mm512, ah, al, bh, bl, h[i], l[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) _mm512_store_pd(tile.hi[i], h[i]), _mm512_store_pd(tile.lo[i], l[i]);
  tile.store(c, ldc);
}

__attribute__((target("avx2,fma"))) void avx2_kernel_dd(index_t kc, const void* ap, const void* bp, dd* c,
                                                        index_t ldc, bool add) {
  constexpr int MR = 4, NR = 4;
  const double* a = static_cast<const double*>(ap);
  const double* b = static_cast<const double*>(bp);
  SplitTile<MR, NR> tile(c, ldc, add);
  __m256d h[MR], l[MR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) h[i] = _mm256_load_pd(tile.hi[i]), l[i] = _mm256_load_pd(tile.lo[i]);
  for (index_t k = 0; k < kc; ++k) {
    const __m256d bh = _mm256_loadu_pd(b + k * 2 * NR), bl = _mm256_loadu_pd(b + k * 2 * NR + NR);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256d ah = _mm256_broadcast_sd(a + k * 2 * MR + i), al = _mm256_broadcast_sd(a + k * 2 * MR + MR + i);
      LOWMEM_DD_MUL_ADD(_mm256, ah, al, bh, bl, h[i], l[i]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) _mm256_store_pd(tile.hi[i], h[i]), _mm256_store_pd(tile.lo[i], l[i]);
  tile.store(c, ldc);
}
#undef LOWMEM_DD_MUL_ADD

constexpr Kernel<float> portable{4, 16, false, portable_kernel_f32<4, 16>};
constexpr Kernel<float> avx2{6, 16, false, avx2_kernel};
constexpr Kernel<float> avx512{8, 32, false, avx512_kernel};
constexpr Kernel<float> avx512_pairs{8, 32, true, avx512_bf16_kernel};
constexpr Kernel<double> portable_f64{4, 8, false, portable_kernel<4, 8, double>};
constexpr Kernel<double> avx2_f64{6, 8, false, avx2_kernel_f64};
constexpr Kernel<double> avx512_f64{8, 16, false, avx512_kernel_f64};

const Kernel<float>& kernel_for(Isa isa, bool bf16) {
  switch (isa) {
    case Isa::avx512_bf16: return bf16 ? avx512_pairs : avx512;
    case Isa::avx512: return avx512;
    case Isa::avx2: return avx2;
    case Isa::portable: break;
  }
  return portable;
}
constexpr Kernel<dd> portable_dd{4, 4, false, portable_kernel_dd<4, 4>};
constexpr Kernel<dd> avx2_dd{4, 4, false, avx2_kernel_dd};
constexpr Kernel<dd> avx512_dd{8, 8, false, avx512_kernel_dd};

// A b panel (KC x NR values) must fit the workspace's KC x NR_MAX floats.
static_assert(avx512_dd.nr * sizeof(dd) <= NR_MAX * sizeof(float) && avx512_f64.nr * sizeof(double) <= NR_MAX * 4);

const Kernel<double>& kernel_for(Isa isa, double*) {
  if (isa == Isa::avx512 || isa == Isa::avx512_bf16) return avx512_f64;
  return isa == Isa::avx2 ? avx2_f64 : portable_f64;
}
const Kernel<dd>& kernel_for(Isa isa, dd*) {
  if (isa == Isa::avx512 || isa == Isa::avx512_bf16) return avx512_dd;
  return isa == Isa::avx2 ? avx2_dd : portable_dd;
}

std::uint16_t bits_of(bf16 x) { return Eigen::numext::bit_cast<std::uint16_t>(x); }

// Transposes an 8 x 8 block of 32-bit values (floats, or bf16 pairs):
// dst[c * dst_stride + r] = src[r * src_stride + c].
void transpose8x8(const float* src, index_t src_stride, float* dst, index_t dst_stride) {
#ifdef __AVX__
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
#else
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
#endif
}

// Packs entries v(x, k) for x in [x0, x0 + count), k in [k0, k0 + kc) into panels of `width` x values (a's rows for
// the left operand, b's columns for the right one), zero where x or k runs past the matrix. Float panels hold step
// kk at [kk][x % width], with kk mapped to k0 + (kk ^ 1) when `swap` (the bf16 order on kernels without
// VDPBF16PS); pair panels hold bf16 bits at [kk / 2][x % width][kk % 2], that is one 32-bit pair per x and step.
// kcp: kc, rounded up to even for bf16. Where x runs along memory each step is one contiguous copy; where k does,
// eight x at a time are read along k and transposed in registers, 8 x 8 values (or pairs) at a time.
template <class T>
void pack(const MatrixView<T>& v, index_t x0, index_t count, index_t k0, index_t kc, index_t kcp, index_t width,
          bool pairs, bool swap, void* out) {
  const index_t panels = (count + width - 1) / width;
  const bool along_x = v.row_stride == 1 || v.col_stride != 1;
  float* o = static_cast<float*>(out);  // pairs: one float-sized slot per pair
  const index_t steps = pairs ? kcp / 2 : kcp;  // rows of a panel
  alignas(64) float lines[8][KC];  // eight x's values along k (pairs: kc / 2 pairs each)
  for (index_t p = 0; p < panels; ++p) {
    const index_t valid = std::min(width, count - p * width);
    float* panel = o + p * steps * width;
    if (valid < width || kcp > kc) std::fill(panel, panel + steps * width, 0.0f);
    if constexpr (std::is_same_v<T, bf16>) {
      if (pairs) {
        std::uint16_t* half = reinterpret_cast<std::uint16_t*>(panel);
        if (along_x) {
          for (index_t kk = 0; kk < kc; ++kk) {
            const T* src = &v(x0 + p * width, k0 + kk);
            std::uint16_t* dst = half + kk / 2 * 2 * width + kk % 2;
            for (index_t xi = 0; xi < valid; ++xi) dst[2 * xi] = bits_of(src[xi * v.row_stride]);
          }
          continue;
        }
        const index_t whole = kc / 2;  // complete pairs; an odd kc leaves one value, paired with zero
        index_t xi = 0;
        for (; xi + 8 <= valid && width % 8 == 0; xi += 8) {
          for (int r = 0; r < 8; ++r) std::memcpy(lines[r], &v(x0 + p * width + xi + r, k0), kc * 2);
          index_t q = 0;
          for (; q + 8 <= whole; q += 8) transpose8x8(&lines[0][q], KC, panel + q * width + xi, width);
          for (; q < whole; ++q)
            for (int r = 0; r < 8; ++r) panel[q * width + xi + r] = lines[r][q];
        }
        for (; xi < valid; ++xi)
          for (index_t q = 0; q < whole; ++q)
            std::memcpy(panel + q * width + xi, &v(x0 + p * width + xi, k0 + 2 * q), 4);
        if (kc % 2)
          for (index_t x = 0; x < valid; ++x)
            half[(kc / 2 * width + x) * 2] = bits_of(v(x0 + p * width + x, k0 + kc - 1));
        continue;
      }
    }
    if (along_x) {
      for (index_t kk = 0; kk < kcp; ++kk) {
        const index_t k = swap ? kk ^ 1 : kk;
        if (k >= kc) continue;
        const T* src = &v(x0 + p * width, k0 + k);
        float* dst = panel + kk * width;
        if constexpr (std::is_same_v<T, float>) {
          if (v.row_stride == 1) {  // in line: a panel row is too short for a call to memmove
            for (index_t xi = 0; xi < valid; ++xi) dst[xi] = src[xi];
            continue;
          }
        }
        if (v.row_stride == 1) convert(src, dst, valid);  // vectorised (F16C for f16)
        else
          for (index_t xi = 0; xi < valid; ++xi) dst[xi] = static_cast<float>(src[xi * v.row_stride]);
      }
      continue;
    }
    // k along memory: steps in source order k = kk ^ swap, so a transposed row r lands on panel row r ^ swap.
    index_t xi = 0;
    for (; xi + 8 <= valid && width % 8 == 0; xi += 8) {
      for (int r = 0; r < 8; ++r) convert(&v(x0 + p * width + xi + r, k0), lines[r], kc);
      index_t k = 0;
      alignas(32) float block[8][8];
      for (; k + 8 <= kc; k += 8) {
        if (!swap) {
          transpose8x8(&lines[0][k], KC, panel + k * width + xi, width);
          continue;
        }
        transpose8x8(&lines[0][k], KC, &block[0][0], 8);
        for (int r = 0; r < 8; ++r) std::memcpy(panel + ((k + r) ^ 1) * width + xi, block[r], 32);
      }
      for (; k < kc; ++k)
        for (int r = 0; r < 8; ++r) panel[(swap ? k ^ 1 : k) * width + xi + r] = lines[r][k];
    }
    for (; xi < valid; ++xi) {
      convert(&v(x0 + p * width + xi, k0), lines[0], kc);
      for (index_t k = 0; k < kc; ++k) panel[(swap ? k ^ 1 : k) * width + xi] = lines[0][k];
    }
  }
}

// f64 panels, in the layout of the float ones (f64 has no bf16 pairs or swapped order; its packing is a small
// part of its products, so it has no transposing fast path).
void pack(const MatrixView<double>& v, index_t x0, index_t count, index_t k0, index_t kc, index_t width, double* out) {
  const index_t panels = (count + width - 1) / width;
  const bool along_x = v.row_stride == 1 || v.col_stride != 1;
  for (index_t p = 0; p < panels; ++p) {
    const index_t valid = std::min(width, count - p * width);
    double* panel = out + p * kc * width;
    if (valid < width) std::fill(panel, panel + kc * width, 0.0);
    if (along_x) {
      for (index_t k = 0; k < kc; ++k) {
        const double* src = &v(x0 + p * width, k0 + k);
        for (index_t xi = 0; xi < valid; ++xi) panel[k * width + xi] = src[xi * v.row_stride];
      }
    } else {
      for (index_t xi = 0; xi < valid; ++xi) {
        const double* src = &v(x0 + p * width + xi, k0);  // contiguous along k
        for (index_t k = 0; k < kc; ++k) panel[k * width + xi] = src[k];
      }
    }
  }
}

// dd panels: step k holds the width hi parts, then the width lo parts.
void pack(const MatrixView<dd>& v, index_t x0, index_t count, index_t k0, index_t kc, index_t width, double* out) {
  const index_t panels = (count + width - 1) / width;
  for (index_t p = 0; p < panels; ++p) {
    const index_t valid = std::min(width, count - p * width);
    double* panel = out + p * kc * 2 * width;
    if (valid < width) std::fill(panel, panel + kc * 2 * width, 0.0);
    for (index_t k = 0; k < kc; ++k)
      for (index_t xi = 0; xi < valid; ++xi) {
        const dd& x = v(x0 + p * width + xi, k0 + k);
        panel[k * 2 * width + xi] = x.hi;
        panel[k * 2 * width + width + xi] = x.lo;
      }
  }
}

// Sets the MXCSR's flush-to-zero and denormals-are-zero bits for a scope (bf16 products: VDPBF16PS's rule).
class FlushDenormals {
 public:
  explicit FlushDenormals(bool on) : on_(on), saved_(on ? _mm_getcsr() : 0) {
    if (on_) _mm_setcsr(saved_ | 0x8040);
  }
  ~FlushDenormals() {
    if (on_) _mm_setcsr(saved_);
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  bool on_;
  unsigned saved_;
};

// The default: the widest FMA kernels the CPU has. VDPBF16PS only when asked (LOWMEM_ISA=avx512_bf16): on the
// Intel Xeon this was measured on it retires half the multiply-adds per second of f32 FMAs (lowmem_bench
// BM_FmaPeak: 84 against 169 GFLOP/s on one core), so converting bf16 to f32 while packing is faster there; the
// numbers are the same either way.
Isa best_supported() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (cpu_supports(isa)) return isa;
  return Isa::portable;
}

Isa initial_isa() {
  const Isa best = best_supported();
  const char* env = std::getenv("LOWMEM_ISA");
  if (!env || !*env) return best;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512_bf16})
    if (std::string(env) == to_string(isa)) {
      if (!cpu_supports(isa))
        throw std::invalid_argument(std::string("LOWMEM_ISA=") + env + ": this CPU lacks it (best here: " +
                                    to_string(best) + ")");
      return isa;
    }
  throw std::invalid_argument(std::string("LOWMEM_ISA=") + env +
                              ": expected one of portable, avx2, avx512, avx512_bf16");
}

std::atomic<Isa>& chosen_isa() {
  static std::atomic<Isa> isa{initial_isa()};
  return isa;
}

}  // namespace

const char* to_string(Isa isa) {
  switch (isa) {
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512_bf16: return "avx512_bf16";
  }
  return "?";
}

bool cpu_supports(Isa isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  switch (isa) {
    case Isa::portable: return true;
    case Isa::avx2: return avx2;
    case Isa::avx512: return avx2 && __builtin_cpu_supports("avx512f");
    case Isa::avx512_bf16: return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  }
  return false;
}

Isa gemm_isa() { return chosen_isa().load(); }

void set_gemm_isa(Isa isa) {
  if (!cpu_supports(isa)) throw std::invalid_argument(std::string("this CPU lacks ") + to_string(isa));
  chosen_isa().store(isa);
}

index_t gemm_workspace_floats(index_t m, index_t, index_t k) {
  return round_up(std::min(k, KC), 2) * (packed_rows(std::min(m, MC)) + NR_MAX);
}

namespace {

// Writes the kernel's mr x nr result into c's rows x cols corner: in place when the tile is whole, else through a
// full-size tile (the kernel always writes mr x nr).
template <class C, class Run>
void run_tile(index_t rows, index_t cols, index_t mr, index_t nr, C* ct, index_t ldc, bool add, Run run) {
  if (rows == mr && cols == nr) {
    run(ct, ldc, add);
    return;
  }
  alignas(64) C tile[8 * 32];
  if (add)
    for (index_t i = 0; i < rows; ++i) std::copy(ct + i * ldc, ct + i * ldc + cols, tile + i * nr);
  run(tile, nr, add);
  for (index_t i = 0; i < rows; ++i) std::copy(tile + i * nr, tile + i * nr + cols, ct + i * ldc);
}

// Whether the rows of one step block of b (each 32 floats from rows[r]) can share L1 with one another: rows a
// large power of two apart (a 512-float stride) fall into a few of L1's 64 sets and evict one another while the
// kernel runs, so such a b is packed instead. Counts the 64-byte lines each set would hold (consecutive rows
// that share lines, as a convolution's column rows do, count once) against 8 ways, the fewest on x86-64 cores.
// Speed only: where b is read from never changes a sum.
bool rows_share_l1(const float* const* rows, index_t count) {
  int per_set[64] = {};
  std::uintptr_t counted_end = 0;  // lines below this were counted for an earlier row
  for (index_t r = 0; r < count; ++r) {
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(rows[r]) / 64;
    const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(rows[r] + 32) + 63) / 64;
    for (std::uintptr_t line = std::max(first, counted_end); line < end; ++line)
      if (++per_set[line % 64] > 8) return false;
    counted_end = std::max(counted_end, end);
  }
  return true;
}

// Products summed in float: float, f16 and bf16 operands, or a 16-bit a or b beside a float one that holds its
// values widened (R, the 16-bit type among them, sets the rule). A float a whose rows or columns run along memory
// is read where it lies, as are a float b's rows where they run along memory (for bf16 in VDPBF16PS's order, step
// k reading row k ^ 1, so only blocks of even length); everything else (conversions, bf16 pairs, the edge tiles)
// is packed. The workspace holds the slab of a (or an edge panel of it) and one panel of b.
template <class TA, class TB>
void gemm_float(const MatrixView<TA>& a, const MatrixView<TB>& b, float* c, index_t ldc, bool add, float* workspace) {
  using R = std::conditional_t<std::is_same_v<TA, float>, TB, TA>;
  constexpr bool is_bf16 = std::is_same_v<R, bf16>;
  constexpr bool a_float = std::is_same_v<TA, float>, b_float = std::is_same_v<TB, float>;
  const index_t m = a.rows, n = b.cols, k = a.cols;
  // VDPBF16PS pairs only where both operands are bf16 in memory: a widened operand runs on the f32 FMAs, whose
  // sums in this order are the same.
  const Kernel<float>& kernel = kernel_for(gemm_isa(), std::is_same_v<TA, bf16> && std::is_same_v<TB, bf16>);
  const FlushDenormals flush(is_bf16);
  const index_t mr = kernel.mr, nr = kernel.nr;
  const bool swap = is_bf16 && !kernel.pairs;
  float* const b_panel = workspace;
  float* const a_pack = workspace + round_up(std::min(k, KC), 2) * NR_MAX;
  // In place only while a's block (m x KC) stays in L1 beside b's rows: a larger a is packed, slab by slab, once
  // for all of b's panels (read in place from L2 it was measured 15 % slower at 512 x 512 x 512).
  const bool a_in_place = a_float && !swap && !a.offsets && (a.col_stride == 1 || a.row_stride == 1) &&
                          m * std::min(k, KC) <= 64 * KC;
  const MatrixView<TB> bt = b.t();
  const float* panel_rows[KC];  // the rows of the packed panel
  for (index_t s = 0; s < KC; ++s) panel_rows[s] = b_panel + s * nr;
  const float* own_rows[KC];  // in place: where b's rows of this step block start (column 0), in step order
  for (index_t pc = 0; pc < k; pc += KC) {
    const index_t kc = std::min(KC, k - pc), kcp = is_bf16 ? round_up(kc, 2) : kc;
    const index_t steps = kernel.pairs ? kcp / 2 : kcp;  // rows of a packed panel
    const bool add_block = add || pc > 0;
    bool b_in_place = false;
    if constexpr (b_float)
      if (b.col_stride == 1 && !(b.offsets && b.offsets_per_column) && n >= nr && (!swap || kc % 2 == 0)) {
        for (index_t kk = 0; kk < kc; ++kk) own_rows[kk] = &b(pc + (swap ? kk ^ 1 : kk), 0);
        b_in_place = rows_share_l1(own_rows, kc);  // the same pattern for every panel of the block
      }
    const index_t slab = a_in_place ? m : MC;  // rows of a per pass over b's panels
    for (index_t ic = 0; ic < m; ic += slab) {
      const index_t mc = std::min(slab, m - ic);
      if (!a_in_place) pack(a, ic, mc, pc, kc, kcp, mr, kernel.pairs, swap, a_pack);
      for (index_t jr = 0; jr < n; jr += nr) {
        const index_t cols = std::min(nr, n - jr);
        const bool in_place = b_in_place && cols == nr;
        if (!in_place) pack(bt, jr, cols, pc, kc, kcp, nr, kernel.pairs, swap, b_panel);
        const float* const* b_rows = in_place ? own_rows : panel_rows;
        const index_t b_shift = in_place ? jr : 0;
        for (index_t ir = 0; ir < mc; ir += mr) {
          const index_t rows = std::min(mr, mc - ir);
          Operands ops{a_pack + (ir / mr) * steps * mr, mr, 1, b_rows, b_shift};
          if constexpr (a_float) {
            if (a_in_place && rows == mr) ops = {&a(ic + ir, pc), a.col_stride, a.row_stride, b_rows, b_shift};
            else if (a_in_place) {  // the last rows: packed, zero beyond m
              pack(a, ic + ir, rows, pc, kc, kcp, mr, false, false, a_pack);
              ops.a = a_pack;
            }
          }
          run_tile(rows, cols, mr, nr, c + (ic + ir) * ldc + jr, ldc, add_block,
                   [&](float* ct, index_t ld, bool add_to) { kernel.run(kcp, ops, ct, ld, add_to); });
        }
      }
    }
  }
}

// Products summed in double or dd: a's slab and b's panels always packed (as doubles; dd split into hi and lo).
template <class T>
void gemm_wide(const MatrixView<T>& a, const MatrixView<T>& b, T* c, index_t ldc, bool add, float* workspace) {
  const index_t m = a.rows, n = b.cols, k = a.cols;
  const Kernel<T>& kernel = kernel_for(gemm_isa(), static_cast<T*>(nullptr));
  const index_t mr = kernel.mr, nr = kernel.nr;
  double* const b_panel = reinterpret_cast<double*>(workspace);
  double* const a_pack = reinterpret_cast<double*>(workspace + round_up(std::min(k, KC), 2) * NR_MAX);
  const index_t per_value = sizeof(T) / sizeof(double);
  const MatrixView<T> bt = b.t();
  for (index_t pc = 0; pc < k; pc += KC) {
    const index_t kc = std::min(KC, k - pc);
    const bool add_block = add || pc > 0;
    for (index_t ic = 0; ic < m; ic += MC) {
      const index_t mc = std::min(MC, m - ic);
      pack(a, ic, mc, pc, kc, mr, a_pack);
      for (index_t jr = 0; jr < n; jr += nr) {
        const index_t cols = std::min(nr, n - jr);
        pack(bt, jr, cols, pc, kc, nr, b_panel);
        for (index_t ir = 0; ir < mc; ir += mr) {
          const double* ap = a_pack + (ir / mr) * kc * mr * per_value;
          run_tile(std::min(mr, mc - ir), cols, mr, nr, c + (ic + ir) * ldc + jr, ldc, add_block,
                   [&](T* ct, index_t ld, bool add_to) { kernel.run(kc, ap, b_panel, ct, ld, add_to); });
        }
      }
    }
  }
}

}  // namespace

template <class A, class B>
void gemm(MatrixView<A> a, MatrixView<B> b, gemm_sum_t<A>* c, index_t ldc, bool add, float* workspace) {
  using C = gemm_sum_t<A>;
  static_assert(std::is_same_v<A, B> || (std::is_same_v<C, float> && (std::is_same_v<A, float> || std::is_same_v<B, float>)),
                "operands of one type, or a 16-bit one beside a float one holding its values");
  const index_t m = a.rows, n = b.cols, k = a.cols;
  if (b.rows != k)
    throw std::logic_error("gemm: inner sizes differ (" + std::to_string(m) + " x " + std::to_string(k) + " times " +
                           std::to_string(b.rows) + " x " + std::to_string(n) + ")");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!add)
      for (index_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, C(0));
    return;
  }
  if constexpr (std::is_same_v<C, float>) gemm_float(a, b, c, ldc, add, workspace);
  else gemm_wide(a, b, c, ldc, add, workspace);
}

#define LOWMEM_GEMM(A, B) template void gemm<A, B>(MatrixView<A>, MatrixView<B>, gemm_sum_t<A>*, index_t, bool, float*);
LOWMEM_GEMM(float, float)
LOWMEM_GEMM(f16, f16)
LOWMEM_GEMM(f16, float)
LOWMEM_GEMM(float, f16)
LOWMEM_GEMM(bf16, bf16)
LOWMEM_GEMM(bf16, float)
LOWMEM_GEMM(float, bf16)
LOWMEM_GEMM(double, double)
LOWMEM_GEMM(dd, dd)
#undef LOWMEM_GEMM

}  // namespace lowmem
