#pragma once
// The one thread setting: how many threads Eigen and OpenMP use in this process. Results are bit for bit
// reproducible for a given thread count (conv splits its batch among threads, and per-thread partial sums are
// added in thread order).

namespace lowmem {

void set_threads(int threads);
// The machine's cores (at least 1).
unsigned all_cores();

}  // namespace lowmem
