#pragma once
// The sweep runner behind `lowmem run` and `lowmem plan`: expands a config into runs, validates all of them
// before any work starts, runs them one by one and commits each finished run to the results file.
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/results_file.hpp"
#include "training/run_config.hpp"
#include "training/trainer.hpp"

namespace lowmem {

struct PlannedRun {
  std::string id;          // stable: derived from the resolved config
  nlohmann::json config;   // resolved: sweep applied and every default filled in
  RunConfig parsed;
  // Each path the config sweeps (sweep.hpp's swept_paths) with this run's value: the summary columns that tell
  // the runs of a sweep apart.
  std::vector<std::pair<std::string, nlohmann::json>> swept;
};

// Reads CONFIG, applies --set overrides, expands the sweep and validates every run. Errors name file and path.
std::vector<PlannedRun> plan_runs(const std::string& config_file, const std::vector<std::string>& overrides);

// Stable id of a resolved config: 16 hex digits of a 64-bit FNV-1a hash of its canonical JSON text.
std::string run_id(const nlohmann::json& resolved);

// --shard i/N: the runs at positions i, i + N, i + 2N, ... of the whole sweep (i from 0 to N - 1), so that N
// processes (a Slurm array job) split a sweep between them.
struct Shard {
  std::size_t index = 0, count = 1;
};
std::vector<std::size_t> shard_positions(std::size_t runs, const Shard& shard);

// The sweep's identity, stored on its results files: a hash of its run ids in order. Shards of one sweep share
// it; `merge` and `--resume` refuse files with another.
std::string sweep_id(const std::vector<PlannedRun>& runs);

// The statuses, by run id, of the runs the results file at `path` holds (empty if there is no file). Throws
// Error if the file was written by another sweep, saying which, unless `force`.
std::map<std::string, std::string> resumable_statuses(const std::string& path, const std::vector<PlannedRun>& runs,
                                                      bool force);
// A run a resume skips: its record holds a result (complete, or diverged, which is a result too).
bool is_done(const std::string& status);
// Run `run_id` of the results file `path`, for merge: read_run, and its sweep_index attribute (its position in
// the sweep) checked to be a whole number from 0, else Error naming the file, the attribute and its value.
RunRecord read_sweep_run(const std::string& path, const std::string& run_id);

struct RunOptions {
  std::string out;      // results file requested
  int threads = 1;      // per run
  int jobs = 1;         // runs side by side, each in its own process
  Shard shard;
  bool resume = false;  // write into `out` itself, skipping the runs it holds done; redo failed and missing ones
  bool force = false;   // resume into a file that another sweep wrote
  bool quiet = false;
  bool timeline = false;  // each run records its memory timeline (train study)
  std::string self;     // this program, to start job processes
  // Where runs save their state in flight (train.checkpoint_every): "" for "<results>.inflight", whose states
  // this sweep removes as it commits their runs; a job process is given its sweep's, and leaves that to it.
  std::string inflight;
};

struct SweepOutcome {
  std::string path;  // where the results went
  std::size_t planned = 0, skipped = 0, done = 0, failed = 0;
  bool interrupted = false;  // Ctrl-C (SIGINT) or SIGTERM: the runs in flight were dropped
};

// Runs the shard's runs that are not done and commits each finished one to the results file as soon as it ends.
// Ctrl-C stops after the runs already committed. Throws Error if the results file cannot be written (runs already
// committed stay in the file).
SweepOutcome run_all(const std::vector<PlannedRun>& runs, const RunOptions& options);

// lowmem merge: every run of `inputs` (results files of one sweep, e.g. its shards) into the new file `out`, in
// the sweep's order; where files hold the same run, a result wins over a failure, then the first file. Refuses
// files of different sweeps unless `force`, and an existing `out`. Returns the number of runs written.
std::size_t merge_results(const std::string& out, const std::vector<std::string>& inputs, bool force);

// Builds the run's model (without allocating it) so that a layer whose input shape does not fit is reported, with
// the layer's config path, before any work starts.
void validate_model(const RunConfig& run, const std::string& config_file);

// Data that the run's model cannot take (image shape, more classes than outputs, fewer examples than a batch).
void check_data_fits(const RunConfig& run, const DataSplit& data);

}  // namespace lowmem
