// One run in this process: the data cache, the run's study with its record (provenance, times, peak memory),
// and the record of a run that failed.
#include "execute.hpp"

#include <chrono>

#include "io/sweep.hpp"
#include "plan.hpp"
#include "provenance.hpp"
#include "signals.hpp"
#include "tensor/memory_ledger.hpp"
#include "techniques/registry.hpp"

namespace lowmem {

std::map<std::string, std::unique_ptr<DataSplit>> data_cache;
const DataSplit& cached_data(const PlannedRun& run) {
  nlohmann::json key = run.config.at("data");
  if (run.parsed.data.dataset == "synthetic") key["seed"] = run.parsed.seed;
  auto& slot = data_cache[key.dump()];
  if (!slot) slot = std::make_unique<DataSplit>(load_data(run.parsed.data, run.parsed.seed));
  return *slot;
}

void failed_labels(const PlannedRun& run, RunRecord& record) {
  record.labels["study"] = run.parsed.study;
  record.labels["precision"] = to_string(run.parsed.precision);
  record.scalars["seed"] = static_cast<double>(run.parsed.seed);
  record.labels["technique_label"] = techniques_readable(run.parsed.techniques);
}

void sweep_columns(const PlannedRun& run, RunRecord& record) {
  for (const auto& [path, value] : run.swept) {
    if (record.labels.count(path) || record.scalars.count(path)) continue;
    if (value.is_number()) record.scalars[path] = value.get<double>();
    else record.labels[path] = value_text(value);
  }
}

RunRecord execute(const PlannedRun& run, int threads, const Progress& show, const StudyOptions& options) {
  RunRecord record;
  record.run_id = run.id;
  record.config_json = run.config.dump();
  record.attributes = provenance();
  record.integers["threads"] = threads;
  record.attributes["start_time"] = iso_time_now();
  const auto t0 = std::chrono::steady_clock::now();
  reset_process_peak_rss();
  const Progress progress = [&](const std::string& text) {
    if (stop_requested) throw Interrupted{};
    if (show) show(text);
  };
  try {
    run_study(run.parsed, cached_data(run), record, progress, options);
    record.scalars["predicted_peak_bytes"] = static_cast<double>(predict_memory(run.parsed).peak);
  } catch (const std::exception& e) {
    // The run cannot be done (bad data, a shape that does not fit, out of memory): record it, go on.
    record.status = "failed";
    record.message = e.what();
    failed_labels(run, record);
  }
  record.scalars["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record.attributes["end_time"] = iso_time_now();
  return record;
}

}  // namespace lowmem
