// Fuzz target "results": the bytes are a results file, read the ways lowmem reads one it did not just write:
// the root attributes (merge, --resume), the summary table (show, --resume, plan) and every run record (merge).
// Each reader is tried on its own, so a file one of them refuses still reaches the others.
#include <algorithm>

#include "common.hpp"
#include "io/results_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string file = fuzz::write_file("results.h5", data, size);
  fuzz::expect_errors([&] { lowmem::read_file_attributes(file); });
  fuzz::expect_errors([&] {
    const lowmem::SummaryTable table = lowmem::read_summary(file);
    lowmem::format_table(table, {});
    lowmem::format_table(table, table.columns);
  });
  fuzz::expect_errors([&] {
    const std::vector<std::string> runs = lowmem::list_runs(file);
    for (std::size_t i = 0; i < std::min<std::size_t>(runs.size(), 16); ++i) lowmem::read_run(file, runs[i]);
  });
  return 0;
}
