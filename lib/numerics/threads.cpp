#include "numerics/threads.hpp"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <thread>

namespace lowmem {

void set_threads(int threads) {
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
}

unsigned all_cores() { return std::max(1u, std::thread::hardware_concurrency()); }

}  // namespace lowmem
