#include "runner.hpp"

#include <omp.h>
#include <unistd.h>

#include <Eigen/Core>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "io/config_reader.hpp"
#include "numerics/error.hpp"
#include "numerics/threads.hpp"
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
    check_techniques(run, ModelFacts{run.model.arch, model.size(), any_invertible});
    if (run.study == "reconstruction" && !any_invertible)
      throw Error("/study: \"reconstruction\" inverts invertible layers, and model (" + run.model.arch + ") has none " +
                  "(invertible: " + invertible_layer_types + ")");
  } catch (const Error& e) {
    throw Error(config_file + ": " + e.what());
  }
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
std::map<std::string, std::unique_ptr<DataSplit>> data_cache;
const DataSplit& cached_data(const PlannedRun& run) {
  nlohmann::json key = run.config.at("data");
  if (run.parsed.data.dataset == "synthetic") key["seed"] = run.parsed.seed;
  auto& slot = data_cache[key.dump()];
  if (!slot) slot = std::make_unique<DataSplit>(load_data(run.parsed.data, run.parsed.seed));
  return *slot;
}

}  // namespace

std::vector<std::size_t> shard_positions(std::size_t runs, const Shard& shard) {
  std::vector<std::size_t> positions;
  for (std::size_t k = shard.index; k < runs; k += shard.count) positions.push_back(k);
  return positions;
}

std::string sweep_id(const std::vector<PlannedRun>& runs) {
  nlohmann::json ids = nlohmann::json::array();
  for (const PlannedRun& run : runs) ids.push_back(run.id);
  return run_id(ids);
}

bool is_done(const std::string& status) { return status == "complete" || status == "diverged"; }

std::map<std::string, std::string> resumable_statuses(const std::string& path, const std::vector<PlannedRun>& runs,
                                                      bool force) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return {};
  const auto attributes = read_file_attributes(path);
  const auto id = attributes.find("sweep_id");
  const std::string ours = sweep_id(runs);
  if (!force && (id == attributes.end() || id->second != ours)) {
    const auto name = attributes.find("sweep_name");
    throw Error(path + " was written by " +
                (id == attributes.end() ? std::string("no lowmem sweep (it has no sweep_id)")
                                        : "another sweep (sweep_id " + id->second + ", config name \"" +
                                              (name == attributes.end() ? "?" : name->second) + "\")") +
                ", not by this config's (sweep_id " + ours + ", " + std::to_string(runs.size()) +
                " runs): choose another --out, or --force to add this sweep's runs to it anyway");
  }
  std::map<std::string, std::string> statuses;
  const SummaryTable table = read_summary(path);
  const auto column = [&](const char* name) {
    return static_cast<std::size_t>(std::find(table.columns.begin(), table.columns.end(), name) - table.columns.begin());
  };
  const std::size_t id_column = column("run_id"), status_column = column("status");
  for (const auto& row : table.rows)
    if (id_column < row.size() && status_column < row.size()) statuses[row[id_column]] = row[status_column];
  return statuses;
}

namespace {

// Ctrl-C (SIGINT) and SIGTERM ask the sweep to stop; the runs in flight are dropped at their next step, and a
// second signal ends the process at once (the handler restores the default). Installed without SA_RESTART, so
// that a wait for job processes returns and passes the request on to them. A signal that was ignored (a sweep
// started in the background, or under nohup) stays ignored.
std::atomic<bool> stop_requested{false};
extern "C" void request_stop(int signal) {
  stop_requested = true;
  std::signal(signal, SIG_DFL);
}
struct Interrupted {};  // not a std::exception: nothing on the way may record it as a failed run

struct StopSignals {
  StopSignals() {
    stop_requested = false;
    struct sigaction stop {};
    stop.sa_handler = request_stop;
    sigemptyset(&stop.sa_mask);
    for (int k = 0; k < 2; ++k) {
      sigaction(signals[k], nullptr, &previous[k]);
      if (previous[k].sa_handler != SIG_IGN) sigaction(signals[k], &stop, nullptr);
    }
  }
  ~StopSignals() {
    for (int k = 0; k < 2; ++k) sigaction(signals[k], &previous[k], nullptr);
  }
  const int signals[2] = {SIGINT, SIGTERM};
  struct sigaction previous[2] {};
};

// The labels a run that failed before its study began still gets (the study sets them otherwise).
void failed_labels(const PlannedRun& run, RunRecord& record) {
  record.labels["study"] = run.parsed.study;
  record.labels["precision"] = to_string(run.parsed.precision);
  record.labels["seed"] = std::to_string(run.parsed.seed);
}

// One run, in this process: its record, status "failed" with the error if it could not be done. Throws
// Interrupted on a stop request.
RunRecord execute(const PlannedRun& run, int threads, const Progress& show) {
  RunRecord record;
  record.run_id = run.id;
  record.config_json = run.config.dump();
  record.attributes = provenance(threads);
  record.attributes["start_time"] = iso_time_now();
  const auto t0 = std::chrono::steady_clock::now();
  reset_process_peak_rss();
  const Progress progress = [&](const std::string& text) {
    if (stop_requested) throw Interrupted{};
    if (show) show(text);
  };
  try {
    run_study(run.parsed, cached_data(run), record, progress);
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

// The one line a finished run gets.
std::string run_line(const std::string& prefix, const RunRecord& record) {
  std::string line = prefix + " " + record.status;
  char figures[200];
  const auto scalar = [&](const char* key) {
    const auto it = record.scalars.find(key);
    return it == record.scalars.end() ? std::optional<double>() : it->second;
  };
  std::snprintf(figures, sizeof figures, " %.1fs", scalar("wall_seconds").value_or(0));
  line += figures;
  if (auto v = scalar("test_accuracy")) std::snprintf(figures, sizeof figures, " test_accuracy %.4f", *v), line += figures;
  if (auto v = scalar("grad_max_rel_error"))
    std::snprintf(figures, sizeof figures, " grad_max_rel_error %.3g", *v), line += figures;
  if (auto v = scalar("peak_bytes")) line += " peak " + human_bytes(*v);
  if (!record.message.empty()) line += ": " + record.message;
  return line;
}

std::string duration_text(double seconds) {
  char text[32];
  const long s = std::lround(seconds);
  if (s >= 3600) std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  return text;
}

// A run in a process of its own (--jobs): this program runs the run's resolved config into a file of its own,
// which the sweep then reads and commits. The job's files carry the sweep's pid, so that no file left by an
// earlier sweep is taken for its result.
struct Job {
  std::size_t position;
  std::string config_file, results_file, log_file;
  std::chrono::steady_clock::time_point start;
};

pid_t start_job(const RunOptions& options, const PlannedRun& run, Job& job) {
  std::ofstream(job.config_file) << run.config.dump();
  const std::string threads = std::to_string(options.threads);
  std::vector<std::string> args = {options.self, "run", job.config_file, "--out", job.results_file,
                                   "--threads", threads, "--quiet"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // The sweep's stop handler must not catch a signal meant for the job before exec resets it.
    struct sigaction plain {};
    plain.sa_handler = SIG_DFL;
    sigaction(SIGTERM, &plain, nullptr);
    struct sigaction interrupt {};
    if (sigaction(SIGINT, nullptr, &interrupt) == 0 && interrupt.sa_handler == request_stop)
      sigaction(SIGINT, &plain, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // the sweep killed: its jobs stop too
    if (getppid() != parent) _exit(130);
    // The job's own lines ("results:", its messages) go to its log; the sweep reports the run itself.
    const int log = open(job.log_file.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (log >= 0) dup2(log, STDOUT_FILENO), dup2(log, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);  // nothing that allocates after fork: the log stays empty and the sweep says "no result"
  }
  if (pid < 0) throw Error(std::string("cannot start a job process: ") + std::strerror(errno));
  job.start = std::chrono::steady_clock::now();
  return pid;
}

// The record a finished job left (left = true), or a failed one saying why there is none (the job's message).
RunRecord finish_job(const PlannedRun& run, const Job& job, int status, bool& left) {
  RunRecord record;
  std::error_code ec;
  std::string why;
  try {
    if (WIFEXITED(status) && std::filesystem::exists(job.results_file, ec)) {
      const std::vector<std::string> ids = list_runs(job.results_file);
      if (ids.size() == 1 && ids[0] == run.id) record = read_run(job.results_file, run.id);
    }
  } catch (const std::exception& e) {
    why = std::string(": its results file is unreadable (") + e.what() + ")";
  }
  left = !record.run_id.empty();
  if (!left) {
    std::ifstream log(job.log_file);
    for (std::string line; why.empty() && std::getline(log, line);)  // the job's own error message
      if (line.rfind("lowmem: ", 0) == 0) why = ": " + line.substr(8);
    record.run_id = run.id;
    record.config_json = run.config.dump();
    record.status = "failed";
    failed_labels(run, record);
    record.message = (WIFSIGNALED(status) ? "the job process was killed by signal " + std::to_string(WTERMSIG(status))
                                          : "the job process exited with status " + std::to_string(WEXITSTATUS(status)) +
                                                " and left no result") + why;
    record.scalars["wall_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - job.start).count();
  }
  for (const std::string* file : {&job.config_file, &job.results_file, &job.log_file}) std::filesystem::remove(*file, ec);
  return record;
}

// The running jobs. Whatever way the sweep ends (an error, a stop request), none is left running: the destructor
// stops and reaps those still active.
struct ActiveJobs {
  std::map<pid_t, Job> jobs;
  void stop_all() {
    for (const auto& [pid, job] : jobs) kill(pid, SIGTERM);
  }
  ~ActiveJobs() {
    stop_all();
    for (const auto& [pid, job] : jobs) {
      int status = 0;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      std::error_code ec;
      for (const std::string* file : {&job.config_file, &job.results_file, &job.log_file})
        std::filesystem::remove(*file, ec);
    }
  }
};

}  // namespace

SweepOutcome run_all(const std::vector<PlannedRun>& runs, const RunOptions& options) {
  SweepOutcome outcome;
  std::map<std::string, std::string> statuses;
  if (options.resume) {
    check_writable_location(options.out);
    statuses = resumable_statuses(options.out, runs, options.force);
    outcome.path = options.out;
  } else {
    const OutputChoice out = choose_output_path(options.out);
    if (!out.note.empty()) std::cerr << "lowmem: " << out.note << "\n";
    outcome.path = out.path;
  }
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
  auto commit = [&](std::size_t position, RunRecord record) {
    record.attributes["sweep_index"] = std::to_string(position);
    append_run(outcome.path, record, file_attributes);  // throws if the file cannot be written: completed runs stay
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
        commit(position, execute(runs[position], options.threads, show));
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
        active.jobs[start_job(options, runs[job.position], job)] = job;
      }
      if (active.jobs.empty()) break;
      int status = 0;
      const pid_t pid = waitpid(-1, &status, 0);
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
      RunRecord record = read_run(in, id);
      const auto it = best.find(id);
      if (it == best.end()) order.push_back(id), best[id] = std::move(record);
      else if (!is_done(it->second.status) && is_done(record.status)) it->second = std::move(record);
    }
  auto position = [&](const std::string& id) {
    const auto& a = best[id].attributes;
    const auto it = a.find("sweep_index");
    return it == a.end() ? std::numeric_limits<long long>::max() : std::stoll(it->second);
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
