// lowmem: the command line. Subcommands run, plan, show and merge; every error is one readable line and exit code 1
// (usage errors: 2).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "numerics/error.hpp"
#include "numerics/threads.hpp"
#include "tensor/gemm.hpp"
#include "tensor/memory_ledger.hpp"
#include "io/limits.hpp"
#include "io/results_file.hpp"
#include "plan.hpp"
#include "show.hpp"
#include "runner.hpp"

namespace {

using namespace lowmem;

const char* main_help = R"(lowmem: memory-efficient training research toolkit

usage: lowmem <command> [options]

commands:
  run CONFIG.json    run every run the config describes, results into an HDF5 file
  plan CONFIG.json   validate the config and list its runs with the memory each will need
  show FILE.h5       print the summary table of a results file
  merge OUT.h5 IN.h5...  combine the results files of one sweep's shards into one

`lowmem <command> --help` describes each command's options.
)";

const char* run_help = R"(usage: lowmem run CONFIG.json [--out FILE.h5] [--resume [--force]] [--jobs N] [--shard I/N]
                  [--set path.to.key=value ...] [--threads N] [--quiet] [--timeline] [--limit NAME=N]

Runs every run of CONFIG (its "sweep" expanded) and commits each run to the results file the moment it ends, so
a crash or kill loses at most the runs in flight and the file always opens. Ctrl-C stops after the runs already
committed (exit status 130); --resume then continues.
  --out FILE.h5      results file (default results/<config name>.h5, with --shard
                     results/<config name>.shard-I-of-N.h5); without --resume an existing file is never
                     overwritten: the results go beside it (FILE.2.h5, ...) and lowmem says so
  --resume           write into --out itself: skip the runs it holds as complete or diverged, redo failed and
                     missing ones. Refuses a file written by another config (another sweep_id)
  --force            with --resume: add to a file of another sweep anyway
  --jobs N           N runs side by side, each in a process of its own (default 1)
  --shard I/N        only the runs at positions I, I+N, I+2N, ... of the sweep (I from 0 to N-1): N
                     machines or array tasks split a sweep; `lowmem merge` joins their files
  --set PATH=VALUE   override a config value before the sweep, e.g. --set train.batch=32
                     (VALUE is JSON if it parses, else a string); may be repeated
  --threads N        threads per run for matrix products (default: all cores, divided among the jobs);
                     recorded with every run. The same config, seed and thread count give the same numbers
  --quiet            no progress lines
  --timeline         each run records the memory timeline of its setup and first training step in
                     /runs/<id>/memory/timeline (train study only; see lowmem plan --timeline)
  --limit NAME=N     raise (or lower) a bound checked before anything runs: runs=N (runs a config may
                     expand to, default 100000), layers=N (layers of one model, nested ones included,
                     default 100000), memory=BYTES (a run's weights plus one input batch; default: this
                     machine's physical memory); may be repeated
)";

const char* plan_help = R"(usage: lowmem plan CONFIG.json [--out FILE.h5] [--shard I/N] [--set path.to.key=value ...]
                   [--threads N] [--json] [--timeline] [--limit NAME=N]

Validates CONFIG and lists its runs (id, study, precision, model) with the memory each will need, by
category: weights, gradients, optimizer state, saved activations and workspace, and their peak total; the
pixel-wise cost (peak / (batch x H x W)) and the layer evaluations recomputed per step (checkpointing).
Predicted by a dry step, equal to the byte to what `lowmem run` measures.
  --out FILE.h5      the results file a `run --resume` would continue (default as for run): column "resume"
                     says which runs it would skip (done) and which it would run
  --shard I/N        as for run: only that shard's runs
  --set PATH=VALUE   as for run
  --limit NAME=N     as for run
  --threads N        as for run: convolution workspace grows with the thread count (default: all cores)
  --json             print a JSON list instead of a table
  --timeline         for each run, the moment of its peak in the dry step's memory timeline (the event, the
                     phase of the step and the layer running) and the buffers alive at it, largest first, with
                     their category and owner: the reason for the peak (not for reconstruction studies);
                     with --json: every event of each run's timeline as JSON columns (plots/plot_timeline.py)
)";

const char* show_help = R"(usage: lowmem show FILE.h5 [FILE.h5 ...] [--columns a,b,c] [--where COLUMN OP VALUE ...]
                   [--sort [-]COLUMN,...] [--group-by a,b] [--format table|csv|json|markdown] [--bytes UNIT] [--all]

Prints the summary table of results files, one row per run (several files: one table, with a column `file`).
  --where C OP V     only rows where column C compares so with V; OP one of = != < > <= >= and ~ (contains);
                     numbers compare as numbers; may be repeated (all must hold)
  --columns a,b,c    columns to show, in order (default: run_id, study, precision, model, technique_label, the
                     swept values, status, wall_seconds, peak_bytes, activation_peak_bytes, final_train_loss,
                     test_accuracy, message)
  --sort a,-b        sort by a, then by b descending (numbers as numbers; missing values last)
  --group-by a,b     one row per distinct (a, b): runs, and the mean and standard deviation (column_sd) of every
                     numeric column shown, e.g. over seeds
  --format F         table (default), csv, json or markdown (CSV and JSON keep every digit)
  --bytes UNIT       columns named *_bytes in B, KiB, MiB or GiB (renamed *_KiB, ...)
  --all              every column
)";

const char* merge_help = R"(usage: lowmem merge OUT.h5 IN.h5 [IN.h5 ...] [--force]

Writes every run of the IN files, results files of one sweep (its shards, or interrupted and resumed
parts), into the new file OUT, in the sweep's order. Where files hold the same run, a result (complete or
diverged) wins over a failure, then the first file's. Refuses files written by different configs (different
sweep_id) unless --force, and an existing OUT.
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, sep);)
    if (!part.empty()) parts.push_back(part);
  return parts;
}

// Minimal option parser: positional arguments, then --flag [value] pairs.
struct Args {
  std::vector<std::string> positionals;
  std::string positional;  // the first
  std::vector<std::pair<std::string, std::string>> options;
  bool help = false;

  Args(int argc, char** argv, const std::vector<std::string>& with_value, const std::vector<std::string>& flags,
       std::size_t max_positionals = 1) {
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        help = true;
      } else if (std::find(with_value.begin(), with_value.end(), a) != with_value.end()) {
        if (i + 1 >= argc) throw UsageError("option " + a + " needs a value");
        options.emplace_back(a, argv[++i]);
      } else if (std::find(flags.begin(), flags.end(), a) != flags.end()) {
        options.emplace_back(a, "");
      } else if (a.rfind("--", 0) == 0) {
        throw UsageError("unknown option " + a);
      } else if (positionals.size() < max_positionals) {
        positionals.push_back(a);
      } else {
        throw UsageError("unexpected argument " + a);
      }
    }
    if (!positionals.empty()) positional = positionals.front();
  }
  std::vector<std::string> all(const std::string& name) const {
    std::vector<std::string> v;
    for (const auto& [k, value] : options)
      if (k == name) v.push_back(value);
    return v;
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    auto v = all(name);
    return v.empty() ? fallback : v.back();
  }
  bool has(const std::string& name) const { return !all(name).empty(); }
};

int parse_count(const std::string& option, const std::string& text) {
  char* end = nullptr;
  const long n = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || n < 1 || n > 1024)
    throw UsageError(option + " expects a whole number from 1 to 1024, got \"" + text + "\"");
  return static_cast<int>(n);
}


// "I/N" with 0 <= I < N.
Shard parse_shard(const std::string& text) {
  unsigned long index = 0, count = 0;
  char rest = 0;
  if (std::sscanf(text.c_str(), "%lu/%lu%c", &index, &count, &rest) != 2 || count == 0 || index >= count)
    throw UsageError("--shard expects I/N with 0 <= I < N (e.g. 0/4 for the first of 4 shards), got \"" + text + "\"");
  return {index, count};
}

// A config's name as a file name: every character but letters, digits and . _ + - becomes _, and so does a
// leading dot, so no name leads outside results/ or hides its file (--out is the way to write elsewhere).
std::string file_stem(const std::string& name) {
  std::string stem = name;
  for (char& c : stem)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '+' && c != '-') c = '_';
  if (!stem.empty() && stem[0] == '.') stem[0] = '_';
  return stem;
}

std::string default_out(const std::vector<PlannedRun>& runs, const Args& args, const Shard& shard) {
  std::string stem = "results/" + file_stem(runs.front().parsed.name);
  if (shard.count > 1) stem += ".shard-" + std::to_string(shard.index) + "-of-" + std::to_string(shard.count);
  return args.get("--out", stem + ".h5");
}

// This program's own path, to start job processes with.
std::string self_path(const char* argv0) {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(argv0) : exe.string();
}

int command_run(int argc, char** argv) {
  const Args args(argc, argv, {"--out", "--set", "--threads", "--jobs", "--shard", "--limit"},
                  {"--quiet", "--resume", "--force", "--timeline"});
  if (args.help) return std::cout << run_help, 0;
  if (args.positional.empty()) throw UsageError("run needs a CONFIG.json");
  for (const std::string& limit : args.all("--limit")) set_limit(limit);
  if (args.has("--force") && !args.has("--resume")) throw UsageError("--force goes with --resume");
  RunOptions options;
  options.jobs = parse_count("--jobs", args.get("--jobs", "1"));
  options.threads = parse_count("--threads", args.get("--threads", std::to_string(std::max(1u, all_cores() / options.jobs))));
  // Before the sweep is expanded: a checkpoint budget is checked against the memory of the run's own thread count
  // (workspace is per thread), as `plan --threads` does.
  set_threads(options.threads);
  const auto runs = plan_runs(args.positional, args.all("--set"));
  options.shard = parse_shard(args.get("--shard", "0/1"));
  options.out = default_out(runs, args, options.shard);
  options.resume = args.has("--resume");
  options.force = args.has("--force");
  options.quiet = args.has("--quiet");
  options.timeline = args.has("--timeline");
  for (std::size_t i : shard_positions(runs.size(), options.shard))  // the runs this process will do, before any
    if (options.timeline && runs[i].parsed.study != "train")
      throw Error(args.positional + ": run " + runs[i].id + " is a " + runs[i].parsed.study + " study, which records "
                  "no timeline (--timeline: train study only; lowmem plan --timeline shows the gradient study's)");
  options.self = self_path(argv[0]);
  const SweepOutcome outcome = run_all(runs, options);
  if (outcome.planned == 0) {
    std::cout << "shard " << options.shard.index << "/" << options.shard.count << " of " << runs.size()
              << " runs holds none; nothing written\n";
    return 0;
  }
  std::cout << "results: " << outcome.path << " (" << outcome.planned << " run" << (outcome.planned == 1 ? "" : "s");
  if (outcome.skipped) std::cout << ", " << outcome.skipped << " already done";
  if (outcome.failed) std::cout << ", " << outcome.failed << " failed";
  std::cout << ")\n";
  if (outcome.interrupted) {
    // The same command (shard, overrides, jobs and threads included), resuming into the same file.
    auto quoted = [](const std::string& a) {  // for a POSIX shell: '...' with each ' as '\''
      if (a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,") == std::string::npos)
        return a;
      std::string q = "'";
      for (char ch : a) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
      return q + "'";
    };
    std::string again = "lowmem";
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--out") ++i;
      else if (a != "--resume" && a != "--force") again += " " + quoted(a);
    }
    std::cerr << "lowmem: interrupted: " << outcome.done + outcome.failed << " run(s) committed to " << outcome.path
              << "; `" << again << " --resume" << (options.force ? " --force" : "") << " --out " << quoted(outcome.path)
              << "` continues\n";
    return 130;
  }
  return outcome.failed ? 1 : 0;
}

int command_plan(int argc, char** argv) {
  const Args args(argc, argv, {"--set", "--threads", "--out", "--shard", "--limit"}, {"--json", "--timeline"});
  if (args.help) return std::cout << plan_help, 0;
  if (args.positional.empty()) throw UsageError("plan needs a CONFIG.json");
  for (const std::string& limit : args.all("--limit")) set_limit(limit);
  set_threads(parse_count("--threads", args.get("--threads", std::to_string(all_cores()))));
  const auto runs = plan_runs(args.positional, args.all("--set"));
  const Shard shard = parse_shard(args.get("--shard", "0/1"));
  // What a resume would skip. A file of another sweep: run --resume would refuse it, and plan says so.
  std::map<std::string, std::string> statuses;
  try {
    statuses = resumable_statuses(default_out(runs, args, shard), runs, false);
  } catch (const Error& e) {
    std::cerr << "lowmem: note: " << e.what() << "\n";
  }
  const auto positions = shard_positions(runs.size(), shard);
  const bool timeline = args.has("--timeline"), json = args.has("--json");
  std::cout << (timeline && json ? plan_timeline_json(runs, positions)
                : timeline       ? plan_timeline(runs, positions)
                : json           ? plan_json(runs, positions, statuses)
                                 : plan_table(runs, positions, statuses));
  return 0;
}

int command_show(int argc, char** argv) {
  const Args args(argc, argv, {"--columns", "--sort", "--where", "--format", "--bytes", "--group-by"}, {"--all"},
                  1000000);
  if (args.help) return std::cout << show_help, 0;
  if (args.positionals.empty()) throw UsageError("show needs a FILE.h5");
  ShowOptions options;
  options.files = args.positionals;
  options.where = args.all("--where");
  options.sort = split(args.get("--sort", ""), ',');
  options.columns = split(args.get("--columns", ""), ',');
  options.all = args.has("--all");
  options.group_by = split(args.get("--group-by", ""), ',');
  options.format = args.get("--format", "table");
  options.bytes = args.get("--bytes", "");
  try {
    std::cout << show_summary(options);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  return 0;
}

int command_merge(int argc, char** argv) {
  const Args args(argc, argv, {}, {"--force"}, 1000000);
  if (args.help) return std::cout << merge_help, 0;
  if (args.positionals.size() < 2) throw UsageError("merge needs OUT.h5 and at least one IN.h5");
  const std::vector<std::string> inputs(args.positionals.begin() + 1, args.positionals.end());
  const std::size_t n = merge_results(args.positional, inputs, args.has("--force"));
  std::cout << "merged " << n << " run" << (n == 1 ? "" : "s") << " from " << inputs.size() << " file"
            << (inputs.size() == 1 ? "" : "s") << " into " << args.positional << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  keep_freed_memory_in_process();
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    gemm_isa();  // a bad LOWMEM_ISA is refused before anything runs
    if (command == "run") return command_run(argc, argv);
    if (command == "plan") return command_plan(argc, argv);
    if (command == "show") return command_show(argc, argv);
    if (command == "merge") return command_merge(argc, argv);
    if (command == "--help" || command == "-h" || command == "help") return std::cout << main_help, 0;
    throw UsageError(command.empty() ? "no command given" : "unknown command \"" + command + "\"");
  } catch (const UsageError& e) {
    std::cerr << "lowmem: " << e.what() << "\n" << "(see lowmem --help)\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "lowmem: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "lowmem: " << e.what() << "\n";
    return 1;
  }
}
