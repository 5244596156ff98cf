#pragma once
// A weight matrix in CSR (compressed sparse rows), as technique sparsity stores it and conv and linear compute
// with it: rows are output channels (or features), columns the rest of PyTorch's layout flattened (Cin k k for a
// conv). The values live in the parameter's own tensors (nonzeros only, in CSR order); the pattern holds the
// int32 column indices and row starts, charged to the ledger as weights.
#include <cmath>
#include <cstdint>
#include <vector>

#include "numerics/scalar.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

struct SparsePattern {
  index_t rows = 0, cols = 0;
  Tensor<std::int32_t> row_start;  // rows + 1: row r's entries are [row_start[r], row_start[r + 1])
  Tensor<std::int32_t> column;     // one per entry, increasing within a row
  index_t nonzeros() const { return column.numel(); }
};

// Moves a tensor aligned with an old pattern onto a new one: new entry e takes old entry sources[e], or 0 where
// sources[e] is -1. The new buffer is charged to the tensor's category.
template <class U> void remap_entries(Tensor<U>& t, const std::vector<index_t>& sources) {
  Tensor<U> moved(Shape{static_cast<index_t>(sources.size())}, t.category());
  if (!moved.is_dry() && !t.is_dry())
    for (std::size_t e = 0; e < sources.size(); ++e)
      if (sources[e] >= 0) moved[static_cast<index_t>(e)] = t[sources[e]];
  t = moved;
}

// |t[i]| as doubles (empty for a dry tensor): what magnitude pruning compares.
template <class U> std::vector<double> magnitudes(const Tensor<U>& t) {
  if (t.is_dry()) return {};
  std::vector<double> m(static_cast<std::size_t>(t.numel()));
  for (index_t i = 0; i < t.numel(); ++i) m[static_cast<std::size_t>(i)] = std::abs(to_double(t[i]));
  return m;
}

}  // namespace lowmem
