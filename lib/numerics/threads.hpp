#pragma once
// The one thread setting: how many threads Eigen and OpenMP use in this process. Results are bit for bit
// reproducible for a given thread count (conv splits its batch among threads, and per-thread partial sums are
// added in thread order).

#include <cstdint>

namespace lowmem {

// Whether a loop over `values` values is worth the threads: below this, starting and joining them costs more than
// the work (a microbatch of one image would otherwise pay it in every layer, twice per step). Loops that use it
// have independent iterations, so their results do not depend on it.
inline bool worth_threads(std::int64_t values) { return values >= (std::int64_t{1} << 15); }

// Calls f(first, end) for consecutive blocks of 2^14 values covering [0, n) (boundaries multiples of 64), spread
// over the threads where the pass is worth them: for elementwise passes, whose results do not depend on the split.
template <class F> void for_blocks(std::int64_t n, F&& f) {
  constexpr std::int64_t block = std::int64_t{1} << 14;
  const std::int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (worth_threads(n))
  for (std::int64_t b = 0; b < blocks; ++b) f(b * block, b + 1 == blocks ? n : (b + 1) * block);
}

void set_threads(int threads);
// The machine's cores (at least 1).
unsigned all_cores();

}  // namespace lowmem
