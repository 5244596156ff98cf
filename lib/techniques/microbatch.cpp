#include "techniques/microbatch.hpp"

#include <algorithm>
#include <limits>

namespace lowmem {

Microbatch::Microbatch(ConfigReader& r)
    : count_(r.required_in<std::int64_t>("count", 1, std::numeric_limits<std::int64_t>::max())) {}

void Microbatch::check_run(const RunFacts& run, const ConfigReader& reader) const {
  if (run.batch % count_ != 0)
    reader.fail("technique", "microbatch count " + std::to_string(count_) + " does not divide train.batch " +
                                 std::to_string(run.batch) + ": every microbatch must be the same size");
}

template <class T> Tensor<T> batch_rows(const Tensor<T>& x, index_t first, index_t count) {
  // A view when the slice starts on a 64-byte boundary, as every buffer does (Tensor): vectorised reductions
  // would otherwise round in another order, and a slice's numbers would depend on where it sits in the batch.
  const index_t size = x.numel() / x.dim(0);
  if (static_cast<std::size_t>(first * size) * sizeof(T) % 64 == 0) return x.rows(first, count);
  std::vector<index_t> dims = x.shape().dims();
  dims[0] = count;
  Tensor<T> rows(Shape(dims), MemoryCategory::workspace);
  if (!x.is_dry()) std::copy(x.data() + first * size, x.data() + (first + count) * size, rows.data());
  return rows;
}

#define LOWMEM_INSTANTIATE_BATCH_ROWS(T) template Tensor<T> batch_rows(const Tensor<T>&, index_t, index_t);
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_BATCH_ROWS)

}  // namespace lowmem
