#pragma once
// The sweep runner behind `lowmem run` and `lowmem plan`: expands a config into runs, validates all of them
// before any work starts, runs them one by one and commits each finished run to the results file.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "training/run_config.hpp"
#include "training/trainer.hpp"

namespace lowmem {

struct PlannedRun {
  std::string id;          // stable: derived from the resolved config
  nlohmann::json config;   // resolved: sweep applied and every default filled in
  RunConfig parsed;
};

// Reads CONFIG, applies --set overrides, expands the sweep and validates every run. Errors name file and path.
std::vector<PlannedRun> plan_runs(const std::string& config_file, const std::vector<std::string>& overrides);

// Stable id of a resolved config: 16 hex digits of a 64-bit FNV-1a hash of its canonical JSON text.
std::string run_id(const nlohmann::json& resolved);

struct RunOptions {
  std::string out;  // results file requested (written beside it if it exists)
  int threads = 1;
  bool quiet = false;
};

// Runs every planned run; returns the number that failed. Throws Error if the results file cannot be written
// (runs already committed stay in the file).
int run_all(const std::vector<PlannedRun>& runs, const RunOptions& options, std::string& results_path);

// Builds the run's model (without allocating it) so that a layer whose input shape does not fit is reported, with
// the layer's config path, before any work starts.
void validate_model(const RunConfig& run, const std::string& config_file);

// Data that the run's model cannot take (image shape, more classes than outputs, fewer examples than a batch).
void check_data_fits(const RunConfig& run, const DataSplit& data);

// Sets the thread count for Eigen and OpenMP.
void set_threads(int threads);

}  // namespace lowmem
