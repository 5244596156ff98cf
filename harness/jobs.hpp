// Job processes (--jobs N): a run in a process of its own that runs this program, its files beside the results
// file, and the reaping of the jobs still running whatever way the sweep ends.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>

#include "io/results_file.hpp"
#include "runner.hpp"

namespace lowmem {

// A run in a process of its own (--jobs): this program runs the run's resolved config into a file of its own,
// which the sweep then reads and commits. The job's files carry the sweep's pid, so that no file left by an
// earlier sweep is taken for its result.
struct Job {
  std::size_t position;
  std::string config_file, results_file, log_file;
  std::chrono::steady_clock::time_point start;
  void remove_files() const;  // config, results, log and lock
};

pid_t start_job(const RunOptions& options, const PlannedRun& run, Job& job);

// The record a finished job left (left = true), or a failed one saying why there is none (the job's message).
RunRecord finish_job(const PlannedRun& run, const Job& job, int status, bool& left);

// The running jobs. Whatever way the sweep ends (an error, a stop request), none is left running: the destructor
// stops and reaps those still active.
struct ActiveJobs {
  std::map<pid_t, Job> jobs;
  void stop_all();
  ~ActiveJobs();
};

}  // namespace lowmem
