#pragma once
// The products of a layer's weight matrix W (rows x cols), dense or CSR (tensor/csr.hpp; technique sparsity sets
// the pattern), written once for both: the layers that support sparse weights (conv, linear) call these instead of
// Eigen directly. Included only by those layers' sources (Eigen's sparse module is heavy).
#include <Eigen/SparseCore>

#include "layers/layer.hpp"
#include "tensor/compute.hpp"
#include "tensor/csr.hpp"

namespace lowmem {

// f(W) with W an Eigen expression of the weight matrix: a dense map of `values`, or a sparse map of the pattern
// and its nonzeros. values: the weight's value tensor in the compute type G.
template <class G, class T, class F>
void with_weight_matrix(const Param<T>& weight, const Tensor<G>& values, index_t rows, index_t cols, F&& f) {
  if (const SparsePattern* p = weight.pattern.get()) {
    f(Eigen::Map<const Eigen::SparseMatrix<G, Eigen::RowMajor, std::int32_t>>(
        p->rows, p->cols, p->nonzeros(), p->row_start.data(), p->column.data(), values.data()));
  } else {
    f(ConstMatrixMap<G>(values.data(), rows, cols));
  }
}

// dweight += left right^T, the gradient of W in a product W right (left: dL/d(W right), rows x P; right: cols x P).
// A sparse weight gets only its nonzeros' entries, each the dot product of a row of left and a row of right, so
// the dense product is never formed. The dot products are plain loops: Eigen's vectorised dot would sum in an
// order that depends on the buffers' alignment, and runs must repeat bit for bit.
template <class G, class T, class L, class R>
void add_weight_gradient(const Param<T>& weight, const L& left, const R& right, G* dweight) {
  if (const SparsePattern* p = weight.pattern.get()) {
    for (index_t r = 0; r < p->rows; ++r)
      for (index_t e = p->row_start[r]; e < p->row_start[r + 1]; ++e) {
        G sum(0);
        for (index_t k = 0; k < left.cols(); ++k) sum += left(r, k) * right(p->column[e], k);
        dweight[e] += sum;
      }
  } else {
    MatrixMap<G>(dweight, left.rows(), right.rows()).noalias() += left * right.transpose();
  }
}

}  // namespace lowmem
