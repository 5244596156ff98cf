// Fuzz target "set": the bytes are `--set PATH=VALUE` arguments (separated by NUL, which no argument can hold),
// applied to a small valid config with a sweep, then planned as `lowmem plan --set ...` does.
#include <algorithm>

#include "common.hpp"
#include "numerics/threads.hpp"
#include "plan.hpp"
#include "runner.hpp"

namespace {

// Two runs on synthetic data, so no data files are needed and overrides can reach lists, sweeps and techniques.
const char* const kBase = R"({
  "name": "fuzz-set", "study": "train", "precision": "f32",
  "model": {"input": [1, 8, 8], "classes": 3, "layers": [
    {"type": "conv", "out": 4, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out": 3}]},
  "data": {"dataset": "synthetic", "synthetic": {"count": 32, "test_count": 8, "shape": [1, 8, 8], "classes": 3}},
  "train": {"batch": 8, "steps": 2, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}},
  "technique": {"type": "store_all"},
  "sweep": {"precision": ["f32", "bf16"]}
})";

std::string base_file;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lowmem::set_threads(1);
  base_file = fuzz::write_file("base.json", reinterpret_cast<const std::uint8_t*>(kBase), std::string(kBase).size());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> overrides;
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (std::size_t start = 0; start <= text.size() && overrides.size() < 8;) {
    const std::size_t end = std::min(text.find('\0', start), text.size());
    overrides.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  fuzz::expect_errors([&] {
    const auto runs = lowmem::plan_runs(base_file, overrides);
    std::vector<std::size_t> first;
    for (std::size_t i = 0; i < std::min<std::size_t>(runs.size(), 2); ++i) first.push_back(i);
    lowmem::plan_json(runs, first, {});
  });
  return 0;
}
