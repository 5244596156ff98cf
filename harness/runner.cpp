#include "runner.hpp"

#include <omp.h>
#include <unistd.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include "io/config_reader.hpp"
#include "io/error.hpp"
#include "io/results_file.hpp"
#include "io/sweep.hpp"
#include "plan.hpp"
#include "provenance.hpp"
#include "study.hpp"
#include "training/model_factory.hpp"

namespace lowmem {

std::string run_id(const nlohmann::json& resolved) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : resolved.dump()) hash = (hash ^ c) * 0x100000001b3ULL;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

std::vector<PlannedRun> plan_runs(const std::string& config_file, const std::vector<std::string>& overrides) {
  nlohmann::json config = read_json_file(config_file);
  for (const std::string& o : overrides) apply_override(config, o);
  std::vector<PlannedRun> runs;
  std::map<std::string, std::size_t> seen;
  for (nlohmann::json& resolved : expand_sweep(config, config_file)) {
    nlohmann::json effective;
    RunConfig parsed = parse_run_config(resolved, config_file, &effective);
    PlannedRun run{run_id(effective), effective, std::move(parsed)};
    validate_model(run.parsed, config_file);
    if (auto [it, fresh] = seen.emplace(run.id, runs.size()); !fresh)
      throw Error(config_file + ": /sweep: runs " + std::to_string(it->second + 1) + " and " +
                  std::to_string(runs.size() + 1) + " are the same config (a sweep value is repeated, or is the default)");
    runs.push_back(std::move(run));
  }
  return runs;
}

void check_data_fits(const RunConfig& run, const DataSplit& data) {
  const Shape images{data.train.channels, data.train.height, data.train.width};
  if (images != run.model.input)
    throw Error("data " + data.train.source + " has images of shape " + images.str() + " but model.input is " +
                run.model.input.str());
  if (data.train.classes > run.model.classes)
    throw Error("data " + data.train.source + " has " + std::to_string(data.train.classes) +
                " classes but model.classes is " + std::to_string(run.model.classes));
  if (run.train.batch > data.train.count)
    throw Error("train.batch " + std::to_string(run.train.batch) + " is larger than the training set (" +
                std::to_string(data.train.count) + " examples in " + data.train.source + ")");
}

void validate_model(const RunConfig& run, const std::string& config_file) {
  // Shapes are checked while the model is built; a dry-run ledger keeps this free of real allocations.
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  MemoryLedger::Scope scope(ledger);
  try {
    Sequential<float> model = build_model<float>(run.model);
    bool any_invertible = false;
    for (std::size_t i = 0; i < model.size(); ++i) any_invertible = any_invertible || model.invertible(i);
    const std::string invertible_types =
        " has none (invertible: inv_batchnorm, leaky_relu with slope > 0, pixel_shuffle, coupling, "
        "affine_coupling, inv_conv, invertible)";
    if (run.uses("reversible") && !any_invertible)
      throw Error("/technique: \"reversible\" rebuilds invertible layers, and model (" + run.model.arch + ")" +
                  invertible_types);
    if (const TechniqueSpec* c = run.find("checkpoint"); c && static_cast<std::size_t>(c->segments) > model.size())
      throw Error("/technique: checkpoint segments " + std::to_string(c->segments) + " is more than model (" +
                  run.model.arch + ")'s " + std::to_string(model.size()) + " layers");
    if (const TechniqueSpec* c = run.find("checkpoint"); c && c->schedule == "budget")  // fits, or says the minimum
      dispatch_precision(run.precision, [&]<class T>() { checkpoint_schedule<T>(run, model.size()); });
    if (run.study == "reconstruction" && !any_invertible)
      throw Error("/study: \"reconstruction\" inverts invertible layers, and model (" + run.model.arch + ")" +
                  invertible_types);
  } catch (const Error& e) {
    throw Error(config_file + ": " + e.what());
  }
}

void set_threads(int threads) {
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
}

namespace {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) bytes /= 1024, ++u;
  char text[32];
  std::snprintf(text, sizeof text, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return text;
}

// Data sets are loaded once per process and shared by the runs that ask for the same one.
const DataSplit& cached_data(const PlannedRun& run) {
  static std::map<std::string, std::unique_ptr<DataSplit>> cache;
  nlohmann::json key = run.config.at("data");
  if (run.parsed.data.dataset == "synthetic") key["seed"] = run.parsed.seed;
  auto& slot = cache[key.dump()];
  if (!slot) slot = std::make_unique<DataSplit>(load_data(run.parsed.data, run.parsed.seed));
  return *slot;
}

}  // namespace

int run_all(const std::vector<PlannedRun>& runs, const RunOptions& options, std::string& results_path) {
  const OutputChoice out = choose_output_path(options.out);
  if (!out.note.empty()) std::cerr << "lowmem: " << out.note << "\n";
  results_path = out.path;
  set_threads(options.threads);
  // Every data set the sweep needs, before any run: a missing or corrupt file, or data that does not fit the
  // model, stops the sweep at once.
  for (const PlannedRun& run : runs) check_data_fits(run.parsed, cached_data(run));
  int failed = 0;
  // On a terminal a live progress line; otherwise (logs, CI) one plain line per run.
  const bool terminal = isatty(STDERR_FILENO) != 0;
  const char* line_start = terminal ? "\r" : "";
  const char* line_clear = terminal ? "\033[K" : "";
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const PlannedRun& run = runs[i];
    RunRecord record;
    record.run_id = run.id;
    record.config_json = run.config.dump();
    record.attributes = provenance(options.threads);
    record.attributes["seed"] = std::to_string(run.parsed.seed);
    record.attributes["start_time"] = iso_time_now();
    const std::string prefix = "[" + std::to_string(i + 1) + "/" + std::to_string(runs.size()) + "] " + run.id + " " +
                               run.parsed.study + " " + to_string(run.parsed.precision);
    const auto t0 = std::chrono::steady_clock::now();
    reset_process_peak_rss();
    try {
      const DataSplit& data = cached_data(run);
      Progress progress;
      if (!options.quiet && terminal)
        progress = [&](const std::string& s) { std::cerr << "\r" << prefix << " " << s << "\033[K" << std::flush; };
      run_study(run.parsed, data, record, progress);
      record.scalars["predicted_peak_bytes"] = static_cast<double>(predict_memory(run.parsed).peak);
    } catch (const std::exception& e) {
      // The run cannot be done (bad data, a shape that does not fit, out of memory): record it, go on.
      record.status = "failed";
      record.message = e.what();
      record.labels["study"] = run.parsed.study;
      record.labels["precision"] = to_string(run.parsed.precision);
      ++failed;
    }
    record.scalars["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    record.attributes["end_time"] = iso_time_now();
    append_run(results_path, record);  // throws Error if the file cannot be written: completed runs stay
    if (!options.quiet) {
      std::string line = prefix + " " + record.status;
      char figures[200];
      std::snprintf(figures, sizeof figures, " %.1fs", record.scalars["wall_seconds"]);
      line += figures;
      if (auto it = record.scalars.find("test_accuracy"); it != record.scalars.end())
        std::snprintf(figures, sizeof figures, " test_accuracy %.4f", it->second), line += figures;
      if (auto it = record.scalars.find("grad_max_rel_error"); it != record.scalars.end())
        std::snprintf(figures, sizeof figures, " grad_max_rel_error %.3g", it->second), line += figures;
      if (auto it = record.scalars.find("peak_bytes"); it != record.scalars.end())
        line += " peak " + human_bytes(it->second);
      if (!record.message.empty()) line += ": " + record.message;
      std::cerr << line_start << line << line_clear << "\n";
    } else if (record.status == "failed") {
      std::cerr << "lowmem: run " << run.id << " failed: " << record.message << "\n";
    }
  }
  return failed;
}

}  // namespace lowmem
