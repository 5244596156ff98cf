#pragma once
// The compute-type rule in one place. Products and sums run in a "compute type" G: float for f16/bf16 with
// f32 accumulation (as hardware does: 16-bit operands, 32-bit accumulators), otherwise the storage type itself.
// Kernels are written once over (T storage, G compute); with_compute_type picks G at run time.
#include <Eigen/Core>

#include "numerics/scalar.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

template <class G> using RowMatrix = Eigen::Matrix<G, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class G> using MatrixMap = Eigen::Map<RowMatrix<G>>;
template <class G> using ConstMatrixMap = Eigen::Map<const RowMatrix<G>>;

template <class T, class F> void with_compute_type(Accumulate mode, F&& f) {
  if constexpr (is_16bit<T>) {
    if (mode == Accumulate::f32) return f.template operator()<float>();
  }
  f.template operator()<T>();
}

// The tensor's values in compute type G: the same buffer when G is T, else a converted copy charged as workspace.
template <class G, class T> Tensor<G> in_compute_type(const Tensor<T>& t) {
  if constexpr (std::is_same_v<G, T>) {
    return t;
  } else {
    Tensor<G> w(t.shape(), MemoryCategory::workspace);
    if (!t.is_dry() && !w.is_dry())
      for (index_t i = 0; i < t.numel(); ++i) w[i] = round_to<G>(t[i]);
    return w;
  }
}

// dst[i] (+)= src[i], rounding once into the storage type.
template <class T, class G> void store_rounded(const G* src, T* dst, index_t n, bool add) {
  for (index_t i = 0; i < n; ++i) dst[i] = round_to<T>(add ? round_to<G>(dst[i]) + src[i] : src[i]);
}

}  // namespace lowmem
