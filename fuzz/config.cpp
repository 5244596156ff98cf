// Fuzz target "config": the bytes are a config file, taken the way `lowmem plan` takes it: JSON parsing
// (duplicate keys refused), sweep expansion, every run's config parsed and its model validated, then the memory
// plan (a dry step) of the first two runs.
#include <algorithm>

#include "common.hpp"
#include "numerics/threads.hpp"
#include "plan.hpp"
#include "runner.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lowmem::set_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string file = fuzz::write_file("config.json", data, size);
  fuzz::expect_errors([&] {
    const auto runs = lowmem::plan_runs(file, {});
    std::vector<std::size_t> first;
    for (std::size_t i = 0; i < std::min<std::size_t>(runs.size(), 2); ++i) first.push_back(i);
    lowmem::plan_json(runs, first, {});
  });
  return 0;
}
