// Job processes (--jobs N): starting one (fork/exec of this program, PDEATHSIG, its log), reading the record it
// left, and stopping and reaping those still running.
#include "jobs.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "execute.hpp"
#include "io/limits.hpp"
#include "numerics/error.hpp"
#include "signals.hpp"

namespace lowmem {

pid_t start_job(const RunOptions& options, const PlannedRun& run, Job& job) {
  std::ofstream(job.config_file) << run.config.dump();
  const std::string threads = std::to_string(options.threads);
  std::vector<std::string> args = {options.self, "run", job.config_file, "--out", job.results_file,
                                   "--threads", threads, "--quiet"};
  if (options.timeline) args.push_back("--timeline");
  // The sweep's directory of states saved in flight, which outlives this job's own files.
  if (!options.inflight.empty()) args.insert(args.end(), {"--inflight", options.inflight});
  // The sweep's limits, which it checked already: the job must accept what the sweep accepted.
  const Limits& l = limits();
  for (auto [name, value] : {std::pair{"runs", l.runs}, std::pair{"layers", l.layers}, std::pair{"memory", memory_limit_bytes()}})
    args.insert(args.end(), {"--limit", std::string(name) + "=" + std::to_string(value)});
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
  job.remove_files();
  return record;
}

void ActiveJobs::stop_all() {
  for (const auto& [pid, job] : jobs) kill(pid, SIGTERM);
}
ActiveJobs::~ActiveJobs() {
  stop_all();
  for (const auto& [pid, job] : jobs) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    job.remove_files();
  }
}

void Job::remove_files() const {
  std::error_code ec;
  // The job's lock too: a job stopped before its sweep loop began (SIGTERM at start-up) leaves it behind.
  for (const std::string& file : {config_file, results_file, log_file, results_file + ".lock"})
    std::filesystem::remove(file, ec);
}

}  // namespace lowmem
