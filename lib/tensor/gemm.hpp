#pragma once
// Matrix products at the machine's speed: c (m x n) = or += a (m x k) b (k x n), summed in float, with operands
// stored as float, f16 or bf16 and converted while they are packed into the kernel's layout (no converted copy of
// a whole tensor is ever made); and the same for double operands, summed in double, and for double-double (dd)
// operands, summed in dd (each step numerics/double_double.hpp's mul_add).
//
// One rounding rule on every instruction set. Each entry of c is a single chain of fused multiply-adds over k in
// a fixed order, started from 0 (or from c's value when adding), so the AVX-512, AVX2 and portable kernels give the
// same bits: which instruction set a machine has changes the speed, never the numbers. For bf16 operands the chain
// is the one of the AVX-512 BF16 dot-product instruction VDPBF16PS, which the kernels use where the CPU has it:
// k in the order 1, 0, 3, 2, ... (an odd k is padded with a zero), every product exact in f32, every sum rounded
// to nearest even, denormal inputs read as zero and denormal sums flushed to zero (FTZ/DAZ). The other kernels
// follow the same order with the MXCSR's FTZ and DAZ set. f32 and f16 operands use plain IEEE f32 arithmetic.
// (tests/test_gemm.cpp checks every kernel this CPU has against the portable one, bit for bit.)
//
// Blocking is fixed (independent of the instruction set), so the packing workspace, which callers allocate and
// the memory ledger counts, has the same size everywhere: `lowmem plan` predicts the same bytes on any x86-64.
#include <cstdint>
#include <string>
#include <type_traits>

#include "numerics/scalar.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

// A matrix in memory: entry (r, c) at data[r * row_stride + c * col_stride]; t() is its transpose (no copy). With
// `offsets`, row r starts at data + offsets[r] instead (or, once transposed, column c at data + offsets[c]): rows
// scattered through one buffer, as a convolution's column matrix is through a padded image (layers/conv2d.cpp).
template <class T> struct MatrixView {
  const T* data;
  index_t rows, cols, row_stride, col_stride;
  const std::int32_t* offsets = nullptr;
  bool offsets_per_column = false;
  static MatrixView row_major(const T* data, index_t rows, index_t cols) { return {data, rows, cols, cols, 1}; }
  static MatrixView rows_at(const T* data, const std::int32_t* offsets, index_t rows, index_t cols) {
    return {data, rows, cols, 0, 1, offsets, false};
  }
  MatrixView t() const { return {data, cols, rows, col_stride, row_stride, offsets, !offsets_per_column}; }
  // Rows [first, first + count).
  MatrixView rows_from(index_t first, index_t count) const {
    MatrixView v = *this;
    v.rows = count;
    if (offsets && !offsets_per_column) v.offsets = offsets + first;
    else v.data = data + first * row_stride;
    return v;
  }
  const T& operator()(index_t r, index_t c) const {
    if (!offsets) return data[r * row_stride + c * col_stride];
    return offsets_per_column ? data[offsets[c] + r * row_stride] : data[offsets[r] + c * col_stride];
  }
};

// What gemm sums in: float for float, f16 and bf16 operands; double for double ones; dd for dd ones.
template <class T> using gemm_sum_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<T, dd>, T, float>;
// The compute types whose products run on gemm (the others, mp and 16-bit storage accumulation, use Eigen's).
template <class G> inline constexpr bool sums_on_gemm =
    std::is_same_v<G, float> || std::is_same_v<G, double> || std::is_same_v<G, dd>;

// The floats of packing workspace gemm needs for an (m x k) (k x n) product of T operands: the same on every
// instruction set (at most 128 x (96 + 32 + 8) floats, 68 KB, whatever the sizes; twice that for double, four
// times for dd).
index_t gemm_workspace_floats(index_t m, index_t n, index_t k);
template <class T> index_t gemm_workspace_floats(index_t m, index_t n, index_t k) {
  return static_cast<index_t>(sizeof(gemm_sum_t<T>) / sizeof(float)) * gemm_workspace_floats(m, n, k);
}

// c (+)= a b with c row-major (row stride ldc). A and B: the same type (float, f16, bf16, double or dd), or one of
// them f16 or bf16 and the other float holding values of that 16-bit type, widened (a convolution's image, widened
// once into its padded copy): the product then follows the 16-bit type's rule, with the same bits as if both were
// stored in it, and the float operand is read where it lies as an f32 one is. workspace:
// gemm_workspace_floats<A>(m, n, k) floats that no other thread uses. Single-threaded: callers parallelise over
// independent products (images).
template <class A, class B>
void gemm(MatrixView<A> a, MatrixView<B> b, gemm_sum_t<A>* c, index_t ldc, bool add, float* workspace);

// The kernels' instruction set: the widest FMA kernels this CPU has (avx512, else avx2, else portable), unless the
// environment variable LOWMEM_ISA (portable, avx2, avx512 or avx512_bf16, the last adding VDPBF16PS for bf16)
// chooses another the CPU has, or set_gemm_isa does (tests). Recorded in every run's provenance. The choice
// changes speed only: every kernel computes the same bits.
enum class Isa { portable, avx2, avx512, avx512_bf16 };
const char* to_string(Isa isa);
bool cpu_supports(Isa isa);
Isa gemm_isa();
// Throws std::invalid_argument if this CPU lacks `isa`.
void set_gemm_isa(Isa isa);

}  // namespace lowmem
