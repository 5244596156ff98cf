// Results-file commit benchmarks (Google Benchmark): what committing one run costs as a sweep's file grows.
//
//   lowmem_bench --benchmark_filter=BM_ResultsCommits
//
//   BM_ResultsCommits/runs:N/writer:W   N runs committed one after another into a new file in a scratch
//       directory, the way a sweep commits them: W 1 through ResultsWriter (pending segments, folded when they
//       outgrow twice the file, and once at the end), W 0 through append_run, which rewrites the whole file on
//       every commit (what a sweep did before ResultsWriter). One iteration is the whole sequence.
//       Counters: ms/commit over the first and the last 1 % of commits (at least 10), the slowest commit (a
//       fold), the final fold, the final file's MiB, and bytes written (segments and rewrites, each file's size
//       once published) over the final size.
//   The record is shaped like a one-step run of a small CNN (the test suite's TINY config): 45 attributes with a
//   1.9 KB config, eight 1-value curves and three 5-value memory datasets; about 9.6 KB of a results file.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "io/results_file.hpp"

namespace {

namespace fs = std::filesystem;

lowmem::RunRecord tiny_run(int k) {
  lowmem::RunRecord r;
  r.run_id = "run" + std::to_string(k);
  r.config_json = "{\"seed\":" + std::to_string(k) + ",\"padding\":\"" + std::string(1900, 'x') + "\"}";
  r.status = "complete";
  r.labels = {{"study", "train"}, {"precision", "f32"}, {"model", "layers"}, {"technique", "store_all"},
              {"technique_label", "store_all"}, {"seed", std::to_string(k)}};
  const char* scalars[] = {"wall_seconds", "peak_bytes", "activation_peak_bytes", "final_train_loss", "test_accuracy",
                           "test_loss", "weights_bytes", "gradients_bytes", "optimizer_state_bytes",
                           "workspace_peak_bytes", "steps", "epochs", "rss_peak_bytes", "step_seconds_median"};
  for (const char* s : scalars) r.scalars[s] = 1.0 + k;
  for (const char* a : {"git_commit", "git_dirty", "build_type", "compiler", "eigen_version", "boost_version",
                        "hdf5_version", "cpu_model", "isa", "gemm_isa", "host", "threads", "start_time", "end_time",
                        "sweep_index", "data_fingerprint", "lowmem_version", "command", "config_file"})
    r.attributes[a] = "a value of some twenty bytes";
  for (const char* c : {"epoch", "learning_rate", "step", "step_seconds", "test_accuracy", "test_loss", "test_step",
                        "train_loss"})
    r.arrays[std::string("curves/") + c] = {{0.5}, {}};
  r.arrays["memory/at_total_peak_bytes"] = {{1, 2, 3, 4, 5}, {}};
  r.arrays["memory/peak_bytes"] = {{1, 2, 3, 4, 5}, {}};
  r.string_arrays["memory/categories"] = {"weights", "gradients", "optimizer_state", "saved_activations", "workspace"};
  return r;
}

double since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

void BM_ResultsCommits(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const bool writer = state.range(1) != 0;
  std::string tmpl = (fs::temp_directory_path() / "lowmem_bench_results_XXXXXX").string();
  if (!mkdtemp(tmpl.data())) return state.SkipWithError("cannot make a scratch directory");
  const std::string path = (fs::path(tmpl) / "sweep.h5").string();
  std::vector<double> ms(static_cast<std::size_t>(n));
  double fold_ms = 0, written = 0;
  for (auto _ : state) {
    fs::remove_all(path + ".pending");
    fs::remove(path);
    written = 0;
    if (writer) {
      lowmem::ResultsWriter results(path);
      for (int k = 0; k < n; ++k) {
        const auto start = std::chrono::steady_clock::now();
        results.append(tiny_run(k), static_cast<std::size_t>(n - k - 1));  // as the sweep says what is to come
        ms[static_cast<std::size_t>(k)] = since(start);
      }
      const auto start = std::chrono::steady_clock::now();
      results.fold();
      fold_ms = since(start);
      written = static_cast<double>(results.bytes_written());
    } else {
      for (int k = 0; k < n; ++k) {
        const auto start = std::chrono::steady_clock::now();
        lowmem::append_run(path, tiny_run(k));
        ms[static_cast<std::size_t>(k)] = since(start);
        written += static_cast<double>(fs::file_size(path));
      }
    }
  }
  const std::size_t edge = std::max<std::size_t>(10, ms.size() / 100);
  const auto mean = [&](std::size_t from) {
    double sum = 0;
    for (std::size_t i = from; i < from + edge; ++i) sum += ms[i];
    return sum / static_cast<double>(edge);
  };
  const double final_bytes = static_cast<double>(fs::file_size(path));
  state.counters["ms/commit_first"] = mean(0);
  state.counters["ms/commit_last"] = mean(ms.size() - edge);
  state.counters["ms/commit_max"] = *std::max_element(ms.begin(), ms.end());
  state.counters["ms/final_fold"] = fold_ms;
  state.counters["final_MiB"] = final_bytes / (1 << 20);
  state.counters["written/final"] = written / final_bytes;
  fs::remove_all(tmpl);
}

BENCHMARK(BM_ResultsCommits)
    ->ArgNames({"runs", "writer"})
    ->Args({100, 0})
    ->Args({1000, 0})
    ->Args({100, 1})
    ->Args({1000, 1})
    ->Args({10000, 1})
    ->Iterations(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();

}  // namespace
