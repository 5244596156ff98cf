#pragma once
// The products of a layer's weight matrix W (rows x cols), dense or CSR (tensor/csr.hpp; technique sparsity sets
// the pattern), written once for both: the layers with weights (conv, linear) call these and nothing else.
// Operands are given in their storage type T (the other operand also widened to G = float, as a convolution's
// padded image is) and the sums run in the compute type G (tensor/compute.hpp):
//   - dense W, G float, double or dd: lowmem's packed GEMM (tensor/gemm.hpp), which converts 16-bit operands
//     while packing;
//   - dense W, G = T (mp, or f16/bf16 with storage accumulation): Eigen's product in T;
//   - sparse W: loops over the nonzeros (each entry of the result sums its terms in a fixed order).
// Included only by those layers' sources.
#include <omp.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "layers/layer.hpp"
#include "tensor/compute.hpp"
#include "tensor/csr.hpp"
#include "tensor/gemm.hpp"

namespace lowmem {

// A matrix being written: entry (r, c) at data[r * row_stride + c * col_stride]; t() is its transpose.
template <class G> struct OutputView {
  G* data;
  index_t rows, cols, row_stride, col_stride;
  static OutputView row_major(G* data, index_t rows, index_t cols) { return {data, rows, cols, cols, 1}; }
  OutputView t() const { return {data, cols, rows, col_stride, row_stride}; }
  G& operator()(index_t r, index_t c) const { return data[r * row_stride + c * col_stride]; }
};

// Floats of GEMM packing workspace for a product (m x k)(k x n) in compute type G: none for Eigen's products.
template <class G> index_t packing_floats(index_t m, index_t n, index_t k) {
  if constexpr (sums_on_gemm<G>) return gemm_workspace_floats<G>(m, n, k);
  else return 0;
}

// Packing workspace of `floats` (packing_floats of the largest product) for the dense products of `weight` on
// `threads` threads (one row each), charged as workspace; empty when no product needs it (G not summed on
// gemm, or a sparse weight).
template <class T> Tensor<float> packing_workspace(const Param<T>& weight, index_t threads, index_t floats) {
  if (floats == 0 || weight.pattern) return {};
  return Tensor<float>(Shape{threads, floats}, MemoryCategory::workspace);
}
// Thread t's row of a packing workspace (null when it is empty).
inline float* packing_row(Tensor<float>& packing, int t) {
  return packing.empty() ? nullptr : packing.data() + t * packing.dim(1);
}

// Where a product packs: one row of a packing workspace (a product on one thread, inside a caller's own parallel
// loop: a convolution's images, attention's heads), or all of its rows, one per thread that shares the product.
struct Packing {
  float* data = nullptr;
  index_t threads = 1, floats = 0;
  Packing(float* one_row) : data(one_row) {}  // NOLINT: a row is a packing of one thread
  Packing(float* rows, index_t threads, index_t floats) : data(rows), threads(threads), floats(floats) {}
  float* row(index_t t) const { return data ? data + t * floats : nullptr; }
};
// A layer's whole products (Linear's, the projections of attention and of a dynamic convolution, an LSTM step's)
// are split among the OpenMP threads once they reach a million multiply-adds, in blocks of at least 16 rows (or
// columns): how many threads an (m x k)(k x n) product takes, the same whichever of m and n is split.
inline index_t product_parts(index_t m, index_t n, index_t k, index_t threads) {
  if (m * n * k < (index_t{1} << 20)) return 1;
  return std::max<index_t>(1, std::min(threads, std::max(m, n) / 16));
}
// Their packing workspace: a row for each thread the product takes (workspace grows with the thread count, as a
// convolution's does).
template <class G, class T>
Tensor<float> shared_packing_workspace(const Param<T>& weight, index_t m, index_t n, index_t k) {
  return packing_workspace(weight, product_parts(m, n, k, omp_get_max_threads()), packing_floats<G>(m, n, k));
}
inline Packing all_rows(Tensor<float>& packing) {
  if (packing.empty()) return Packing(nullptr);
  return {packing.data(), packing.dim(0), packing.dim(1)};
}

// The part of `whole` entries thread `t` of `parts` takes: contiguous blocks in thread order.
inline std::pair<index_t, index_t> block_of(index_t whole, index_t t, index_t parts) {
  return {whole * t / parts, whole * (t + 1) / parts};
}

// c (+)= a b, dense, with c row-major (row stride ldc). packing: packing_floats<G>(...) floats a thread. A and B:
// the storage type T, or one of them G = float holding T's values widened (gemm.hpp). Given several rows of
// packing, a product of at least a million multiply-adds is split among that many threads by c's rows (or its
// columns, where it has more): each entry is still one chain of sums in k's order (gemm.hpp), so the result does
// not depend on the split or the thread count.
template <class G, class A, class B>
void dense_product(MatrixView<A> a, MatrixView<B> b, G* c, index_t ldc, bool add, Packing packing) {
  if constexpr (sums_on_gemm<G>) {
    const bool by_rows = a.rows >= b.cols;
    const index_t split = by_rows ? a.rows : b.cols;
    const index_t parts = product_parts(a.rows, b.cols, a.cols, packing.threads);
    if (parts <= 1) return gemm(a, b, c, ldc, add, packing.row(0));
    if (a.cols != b.rows)  // gemm's own check, here where it can still be caught (not inside the threads)
      throw std::logic_error("dense_product: inner sizes " + std::to_string(a.cols) + " and " +
                             std::to_string(b.rows) + " differ");
#pragma omp parallel for num_threads(parts) schedule(static)
    for (index_t t = 0; t < parts; ++t) {
      const auto [first, end] = block_of(split, t, parts);
      if (by_rows) gemm(a.rows_from(first, end - first), b, c + first * ldc, ldc, add, packing.row(t));
      else gemm(a, b.t().rows_from(first, end - first).t(), c + first, ldc, add, packing.row(t));
    }
  } else {
    using T = A;
    static_assert(std::is_same_v<G, A> && std::is_same_v<G, B>, "products run in float or in the storage type");
    if (a.offsets || b.offsets) throw std::logic_error("Eigen's products take plain matrices, not row offsets");
    using Strided = Eigen::Map<const RowMatrix<T>, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
    auto map = [](const MatrixView<T>& v) {
      return Strided(v.data, v.rows, v.cols, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.row_stride, v.col_stride));
    };
    Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>> C(c, a.rows, b.cols, Eigen::OuterStride<>(ldc));
    if (add) C.noalias() += map(a) * map(b);
    else C.noalias() = map(a) * map(b);
  }
}

// c (+)= op(W) b, op(W) = W or (transpose) W^T; b: (cols or rows) x n, in T or widened to G; c: (rows or cols) x
// n, any strides.
template <class G, class T, class B>
void weight_product(const Param<T>& weight, index_t rows, index_t cols, bool transpose, MatrixView<B> b,
                    OutputView<G> c, bool add, Packing packing) {
  if (const SparsePattern* p = weight.pattern.get()) {
    if (!add)
      for (index_t r = 0; r < c.rows; ++r)
        for (index_t j = 0; j < c.cols; ++j) c(r, j) = G(0);
    for (index_t r = 0; r < p->rows; ++r)
      for (index_t e = p->row_start[r]; e < p->row_start[r + 1]; ++e) {
        const G v = round_to<G>(weight.value[e]);
        const index_t from = transpose ? r : p->column[e], to = transpose ? p->column[e] : r;
        for (index_t j = 0; j < b.cols; ++j) c(to, j) += v * round_to<G>(b(from, j));
      }
    return;
  }
  MatrixView<T> w = MatrixView<T>::row_major(weight.value.data(), rows, cols);
  if (transpose) w = w.t();
  if (c.col_stride == 1) dense_product<G>(w, b, c.data, c.row_stride, add, packing);
  else dense_product<G>(b.t(), w.t(), c.data, c.col_stride, add, packing);  // c^T = b^T op(W)^T, row-major
}

// dweight += left right^T, the gradient of W in a product W right (left: dL/d(W right), rows x P; right: cols x
// P; in T or widened to G). dweight: rows x cols, or a sparse weight's nonzeros, each then the dot product of a row
// of left and a row of right, so the dense product is never formed.
template <class G, class T, class B>
void add_weight_gradient(const Param<T>& weight, MatrixView<T> left, MatrixView<B> right, G* dweight,
                         Packing packing) {
  if (const SparsePattern* p = weight.pattern.get()) {
    for (index_t r = 0; r < p->rows; ++r)
      for (index_t e = p->row_start[r]; e < p->row_start[r + 1]; ++e) {
        G sum(0);
        for (index_t k = 0; k < left.cols; ++k) sum += round_to<G>(left(r, k)) * round_to<G>(right(p->column[e], k));
        dweight[e] += sum;
      }
  } else {
    dense_product<G>(left, right.t(), dweight, right.rows, true, packing);
  }
}

}  // namespace lowmem
