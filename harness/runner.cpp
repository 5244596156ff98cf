// The sweep loop (run_all): the shard's runs not yet done, run here or in job processes, each committed to the
// results file as it ends, with its progress lines; and merge_results. The pieces it ties together are in
// planning.cpp, resume.cpp, signals.*, jobs.*, execute.* (a run in this process) and progress.*.
#include "runner.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <thread>

#include "execute.hpp"
#include "inflight.hpp"
#include "io/results_file.hpp"
#include "jobs.hpp"
#include "output_lock.hpp"
#include "numerics/error.hpp"
#include "numerics/threads.hpp"
#include "progress.hpp"
#include "signals.hpp"

namespace lowmem {

SweepOutcome run_all(const std::vector<PlannedRun>& runs, const RunOptions& options) {
  SweepOutcome outcome;
  std::map<std::string, std::string> statuses;
  std::optional<OutputLock> lock;  // held until the sweep ends: one writer per results file
  if (options.resume) {
    check_writable_location(options.out);
    lock.emplace(options.out);
    statuses = resumable_statuses(options.out, runs, options.force);
    outcome.path = options.out;
  } else {
    const OutputChoice out = choose_output_path(options.out);
    lock.emplace(out.path);
    if (!out.note.empty()) std::cerr << "lowmem: " << out.note << "\n";
    outcome.path = out.path;
  }
  remove_stale_job_files(outcome.path);
  std::vector<std::size_t> todo;
  for (std::size_t position : shard_positions(runs.size(), options.shard)) {
    ++outcome.planned;
    const auto it = statuses.find(runs[position].id);
    if (it != statuses.end() && is_done(it->second)) ++outcome.skipped;
    else todo.push_back(position);
  }
  if (outcome.skipped && !options.quiet)
    std::cerr << "lowmem: resuming " << outcome.path << ": " << outcome.skipped << " of " << outcome.planned
              << " runs are done, " << todo.size() << " to run\n";
  set_threads(options.threads);
  // Every data set the sweep needs, before any run: a missing or corrupt file, or data that does not fit the
  // model, stops the sweep at once.
  for (std::size_t position : todo) check_data_fits(runs[position].parsed, cached_data(runs[position]));
  if (options.jobs > 1) data_cache.clear();  // each job loads what it needs; the sweep holds no copy meanwhile
  const std::map<std::string, std::string> file_attributes = {
      {"sweep_id", sweep_id(runs)}, {"sweep_name", runs.front().parsed.name}, {"sweep_runs", std::to_string(runs.size())}};
  // Each run is committed as it ends, at a cost independent of how many runs the file holds; the end of the sweep
  // (stopped or not) folds the pending ones into the file.
  ResultsWriter results(outcome.path, file_attributes);
  const StopSignals signals;
  // On a terminal a live progress line (the run's step and loss, and the sweep's ETA); otherwise (logs, CI) one
  // plain line per run.
  const bool terminal = isatty(STDERR_FILENO) != 0 && !options.quiet;
  const auto sweep_start = std::chrono::steady_clock::now();
  std::size_t finished = 0;
  auto prefix_of = [&](std::size_t position) {
    const PlannedRun& run = runs[position];
    return "[" + std::to_string(position + 1) + "/" + std::to_string(runs.size()) + "] " + run.id + " " +
           run.parsed.study + " " + to_string(run.parsed.precision);
  };
  auto eta = [&] {
    if (finished == 0) return std::string();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - sweep_start).count();
    const double left = elapsed / static_cast<double>(finished) * static_cast<double>(todo.size() - finished);
    return " | sweep " + std::to_string(finished) + "/" + std::to_string(todo.size()) + " done, ETA " +
           duration_text(left / options.jobs);
  };
  const std::string inflight = options.inflight.empty() ? inflight_dir(outcome.path) : options.inflight;
  auto commit = [&](std::size_t position, RunRecord record) {
    record.integers["sweep_index"] = static_cast<std::int64_t>(position);
    sweep_columns(runs[position], record);
    results.append(record, todo.size() - finished - 1);  // throws if the file cannot be written: completed runs stay
    if (options.inflight.empty()) remove_inflight_state(inflight, runs[position].id);
    ++finished;
    if (record.status == "failed") ++outcome.failed;
    else ++outcome.done;
    if (!options.quiet) std::cerr << (terminal ? "\r" : "") << run_line(prefix_of(position), record)
                                  << (terminal ? "\033[K" : "") << "\n";
    else if (record.status == "failed") std::cerr << "lowmem: run " << record.run_id << " failed: " << record.message << "\n";
  };

  if (options.jobs <= 1) {
    for (std::size_t position : todo) {
      if (stop_requested) break;
      const std::string prefix = prefix_of(position);
      auto last_shown = std::chrono::steady_clock::now() - std::chrono::seconds(1);
      const Progress show = [&](const std::string& text) {
        if (!terminal) return;
        const auto now = std::chrono::steady_clock::now();
        if (now - last_shown < std::chrono::milliseconds(200)) return;
        last_shown = now;
        std::cerr << "\r" << prefix << " " << text << eta() << "\033[K" << std::flush;
      };
      try {
        StudyOptions study{options.timeline};
        InFlight saved(inflight, runs[position], options.threads, options.quiet);
        saved.attach(study);
        commit(position, execute(runs[position], options.threads, show, study));
      } catch (const Interrupted&) {
        break;
      }
    }
  } else {
    // Job processes, at most `jobs` at a time, each with its own files beside the results file.
    ActiveJobs active;
    std::size_t next = 0;
    bool passed_on = false;  // the stop request, to the jobs
    while (next < todo.size() || !active.jobs.empty()) {
      while (!stop_requested && next < todo.size() && active.jobs.size() < static_cast<std::size_t>(options.jobs)) {
        Job job;
        job.position = todo[next++];
        const std::string stem = outcome.path + ".job-" + std::to_string(getpid()) + "-" + std::to_string(job.position);
        job.config_file = stem + ".json";
        job.results_file = stem + ".h5";
        job.log_file = stem + ".log";
        RunOptions job_options = options;
        job_options.inflight = inflight;
        active.jobs[start_job(job_options, runs[job.position], job)] = job;
      }
      if (active.jobs.empty()) break;
      int status = 0;
      pid_t pid = 0;
      if (!terminal) {
        pid = waitpid(-1, &status, 0);
      } else {  // a live line while the jobs run: which runs, for how long, and the sweep's ETA
        while ((pid = waitpid(-1, &status, WNOHANG)) == 0 && !(stop_requested && !passed_on)) {
          const auto now = std::chrono::steady_clock::now();
          std::string line = "\r" + std::to_string(active.jobs.size()) + " jobs:";
          for (const auto& [id, job] : active.jobs)
            line += " [" + std::to_string(job.position + 1) + "/" + std::to_string(runs.size()) + "] " +
                    duration_text(std::chrono::duration<double>(now - job.start).count());
          std::cerr << line << eta() << "\033[K" << std::flush;
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
      }
      if (stop_requested && !passed_on) active.stop_all(), passed_on = true;  // each ends at its next step
      if (pid < 0) {
        if (errno == EINTR) continue;
        throw Error(std::string("waiting for the job processes failed: ") + std::strerror(errno));
      }
      const auto it = active.jobs.find(pid);
      if (it == active.jobs.end()) continue;
      const Job job = it->second;
      active.jobs.erase(it);
      bool left = false;
      RunRecord record = finish_job(runs[job.position], job, status, left);
      if (stop_requested && !left) continue;  // stopped before it finished: dropped, not failed
      commit(job.position, std::move(record));
    }
  }
  results.fold();
  outcome.interrupted = stop_requested;
  return outcome;
}

std::size_t merge_results(const std::string& out, const std::vector<std::string>& inputs, bool force) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::symlink_status(out, ec)))
    throw Error(out + " exists; merge writes a new file (choose another name, or remove it)");
  check_writable_location(out);
  std::map<std::string, std::string> attributes;
  std::string first;
  for (const std::string& in : inputs) {
    const auto a = read_file_attributes(in);
    const auto id = a.find("sweep_id");
    if (id == a.end() && !force)
      throw Error(in + " has no sweep_id (not written by lowmem run); merge it anyway with --force");
    if (first.empty()) {
      first = in;
      attributes = a;
      continue;
    }
    const auto ours = attributes.find("sweep_id");
    if (!force && (ours == attributes.end() || id == a.end() || ours->second != id->second)) {
      const auto name = [](const std::map<std::string, std::string>& m) {
        const auto it = m.find("sweep_name");
        return it == m.end() ? std::string("?") : it->second;
      };
      throw Error(in + " was written by another sweep than " + first + " (sweep_id " + id->second + ", config \"" +
                  name(a) + "\" against " + (ours == attributes.end() ? "none" : ours->second) + ", config \"" +
                  name(attributes) + "\"): merging them would mix two experiments; --force merges anyway");
    }
  }
  // The best record of every run: a result over a failure, then the first file's.
  std::map<std::string, RunRecord> best;
  std::vector<std::string> order;
  for (const std::string& in : inputs)
    for (const std::string& id : list_runs(in)) {
      RunRecord record = read_sweep_run(in, id);
      const auto it = best.find(id);
      if (it == best.end()) order.push_back(id), best[id] = std::move(record);
      else if (!is_done(it->second.status) && is_done(record.status)) it->second = std::move(record);
    }
  auto position = [&](const std::string& id) {
    const auto& a = best[id].integers;
    const auto it = a.find("sweep_index");
    return it == a.end() ? std::numeric_limits<std::int64_t>::max() : it->second;
  };
  std::stable_sort(order.begin(), order.end(), [&](const std::string& a, const std::string& b) { return position(a) < position(b); });
  std::vector<RunRecord> records;
  for (const std::string& id : order) records.push_back(std::move(best[id]));
  std::map<std::string, std::string> file_attributes;
  for (const char* key : {"sweep_id", "sweep_name", "sweep_runs"})
    if (attributes.count(key)) file_attributes[key] = attributes[key];
  append_runs(out, records, file_attributes);
  return records.size();
}

}  // namespace lowmem
