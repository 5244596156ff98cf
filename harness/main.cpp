// lowmem: the command line. Subcommands run, plan, show and merge; every error is one readable line and exit code 1
// (usage errors: 2).
#include <CLI/CLI.hpp>

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
#include "provenance.hpp"
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

`lowmem <command> --help` describes each command's options; `lowmem --version` names the build.
Options take their value as `--opt value` or `--opt=value`.
)";

// What each command does, above its generated option list.
const char* run_about = R"(Runs every run of CONFIG (its "sweep" expanded) and commits each run to the results file the moment it ends, so
a crash or kill loses at most the runs in flight and the file always opens. Ctrl-C stops after the runs already
committed (exit status 130); --resume then continues.)";

const char* plan_about = R"(Validates CONFIG and lists its runs (id, study, precision, model) with the memory each will need, by
category: weights, gradients, optimizer state, saved activations and workspace, and their peak total; the
pixel-wise cost (peak / (batch x H x W)) and the layer evaluations recomputed per step (checkpointing); the
techniques and the swept values. Predicted by a dry step, equal to the byte to what `lowmem run` measures.)";

const char* show_about = R"(Prints the summary table of results files, one row per run (several files: one table, with a column `file`).
Default columns: run_id, study, precision, model, technique_label, the seed where it varies, the swept values,
status, wall_seconds, peak_bytes, activation_peak_bytes, final_train_loss, test_accuracy, val_bits_per_char
(text models), message.)";

const char* merge_about = R"(Writes every run of the IN files, results files of one sweep (its shards, or interrupted and resumed
parts), into the new file OUT, in the sweep's order. Where files hold the same run, a result (complete or
diverged) wins over a failure, then the first file's. Refuses files written by different configs (different
sweep_id) unless --force, and an existing OUT.)";

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

// Parses a command's arguments (those after the command's name) with CLI11: options as `--opt value` or
// `--opt=value`, repeatable ones one value per occurrence, help generated from the options (printed, and false
// returned). An unknown option or an argument too many is a UsageError naming it.
bool parse(CLI::App& app, int argc, char** argv) {
  app.allow_extras();
  app.set_help_flag("-h,--help", "print this help and exit");
  app.get_formatter()->column_width(24);
  std::vector<std::string> args(argv + 2, argv + argc);
  std::reverse(args.begin(), args.end());  // CLI11 takes them last first
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return false;
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what());
  }
  for (const std::string& extra : app.remaining())
    throw UsageError((extra.rfind("-", 0) == 0 ? "unknown option " : "unexpected argument ") + extra);
  return true;
}

// A repeatable option: one value per occurrence.
CLI::Option* repeated(CLI::App& app, const std::string& name, std::vector<std::string>& values, const std::string& help) {
  return app.add_option(name, values, help)->allow_extra_args(false);
}

// Options run and plan share.
struct SweepArgs {
  std::string config, out, shard = "0/1", threads;
  std::vector<std::string> sets, limits;
  void add_to(CLI::App& app) {
    app.add_option("CONFIG.json", config, "the config (a JSON file; comments allowed)")->type_name("");
    app.add_option("--out", out, "results file (default results/<config name>.h5, with --shard "
                                 "results/<config name>.shard-I-of-N.h5)")
        ->type_name("FILE.h5");
    app.add_option("--shard", shard, "only the runs at positions I, I+N, I+2N, ... of the sweep (I from 0 to N-1): "
                                     "N machines or array tasks split a sweep; `lowmem merge` joins their files")
        ->type_name("I/N");
    repeated(app, "--set", sets, "PATH=VALUE: a config value before the sweep, e.g. --set train.batch=32 (VALUE is "
                                 "JSON if it parses, else a string); on a swept path it replaces the axis; repeatable")
        ->type_name("PATH=VALUE");
    app.add_option("--threads", threads, "threads per run (default: all cores, divided among the jobs); recorded with "
                                         "every run. The same config, seed and thread count give the same numbers")
        ->type_name("N");
    repeated(app, "--limit", limits, "NAME=N: a bound checked before anything runs: runs=N (default 100000), layers=N "
                                     "(default 100000), memory=BYTES (default: this machine's memory); repeatable")
        ->type_name("NAME=N");
  }
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

std::string default_out(const std::vector<PlannedRun>& runs, const std::string& out, const Shard& shard) {
  if (!out.empty()) return out;
  std::string stem = "results/" + file_stem(runs.front().parsed.name);
  if (shard.count > 1) stem += ".shard-" + std::to_string(shard.index) + "-of-" + std::to_string(shard.count);
  return stem + ".h5";
}

// This program's own path, to start job processes with.
std::string self_path(const char* argv0) {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(argv0) : exe.string();
}

int command_run(int argc, char** argv) {
  CLI::App app{run_about, "lowmem run"};
  SweepArgs sweep;
  sweep.add_to(app);
  std::string jobs = "1";
  bool resume = false, force = false, quiet = false, timeline = false;
  app.add_flag("--resume", resume, "write into --out itself: skip the runs it holds as complete or diverged, redo "
                                   "failed and missing ones; refuses a file written by another config");
  app.add_flag("--force", force, "with --resume: add to a file of another sweep anyway");
  app.add_option("--jobs", jobs, "N runs side by side, each in a process of its own (default 1)")->type_name("N");
  app.add_flag("--quiet", quiet, "no progress lines");
  app.add_flag("--timeline", timeline, "each run records the memory timeline of its setup and first training step "
                                       "in /runs/<id>/memory/timeline (train study only)");
  std::string inflight;  // a job process: its sweep's directory of states saved in flight
  app.add_option("--inflight", inflight)->group("");  // hidden: for job processes only
  if (!parse(app, argc, argv)) return 0;
  if (sweep.config.empty()) throw UsageError("run needs a CONFIG.json");
  for (const std::string& limit : sweep.limits) set_limit(limit);
  if (force && !resume) throw UsageError("--force goes with --resume");
  RunOptions options;
  options.jobs = parse_count("--jobs", jobs);
  options.threads = parse_count("--threads", sweep.threads.empty() ? std::to_string(std::max(1u, all_cores() / options.jobs))
                                                                   : sweep.threads);
  // Before the sweep is expanded: a checkpoint budget is checked against the memory of the run's own thread count
  // (workspace is per thread), as `plan --threads` does.
  set_threads(options.threads);
  const auto runs = plan_runs(sweep.config, sweep.sets);
  options.shard = parse_shard(sweep.shard);
  options.out = default_out(runs, sweep.out, options.shard);
  if (sweep.out.empty()) std::filesystem::create_directories("results");  // the default's directory, made if missing
  options.resume = resume;
  options.force = force;
  options.quiet = quiet;
  options.timeline = timeline;
  options.inflight = inflight;
  for (std::size_t i : shard_positions(runs.size(), options.shard))  // the runs this process will do, before any
    if (options.timeline && runs[i].parsed.study != "train")
      throw Error(sweep.config + ": run " + runs[i].id + " is a " + runs[i].parsed.study + " study, which records "
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
      else if (a.rfind("--out=", 0) != 0 && a != "--resume" && a != "--force") again += " " + quoted(a);
    }
    std::cerr << "lowmem: interrupted: " << outcome.done + outcome.failed << " run(s) committed to " << outcome.path
              << "; `" << again << " --resume" << (options.force ? " --force" : "") << " --out " << quoted(outcome.path)
              << "` continues\n";
    return 130;
  }
  return outcome.failed ? 1 : 0;
}

int command_plan(int argc, char** argv) {
  CLI::App app{plan_about, "lowmem plan"};
  SweepArgs sweep;
  sweep.add_to(app);
  bool json = false, timeline = false;
  app.add_flag("--json", json, "print a JSON list instead of a table");
  app.add_flag("--timeline", timeline, "for each run, the moment of its peak in the dry step's memory timeline and "
                                       "the buffers alive at it, largest first, with their category and owner; with "
                                       "--json every event (plots/plot_timeline.py)");
  if (!parse(app, argc, argv)) return 0;
  if (sweep.config.empty()) throw UsageError("plan needs a CONFIG.json");
  for (const std::string& limit : sweep.limits) set_limit(limit);
  set_threads(parse_count("--threads", sweep.threads.empty() ? std::to_string(all_cores()) : sweep.threads));
  const auto runs = plan_runs(sweep.config, sweep.sets);
  const Shard shard = parse_shard(sweep.shard);
  // What a resume would skip. A file of another sweep: run --resume would refuse it, and plan says so.
  std::map<std::string, std::string> statuses;
  try {
    statuses = resumable_statuses(default_out(runs, sweep.out, shard), runs, false);
  } catch (const Error& e) {
    std::cerr << "lowmem: note: " << e.what() << "\n";
  }
  const auto positions = shard_positions(runs.size(), shard);
  std::cout << (timeline && json ? plan_timeline_json(runs, positions)
                : timeline       ? plan_timeline(runs, positions)
                : json           ? plan_json(runs, positions, statuses)
                                 : plan_table(runs, positions, statuses));
  return 0;
}

int command_show(int argc, char** argv) {
  CLI::App app{show_about, "lowmem show"};
  ShowOptions options;
  std::string columns, sort, group_by;
  app.add_option("FILE.h5", options.files, "results files")->type_name("");
  repeated(app, "--where", options.where, "C OP V: only rows where column C compares so with V; OP one of = != < > <= "
                                          ">= and ~ (contains); numbers compare as numbers; repeatable (all must hold)")
      ->type_name("C_OP_V");
  app.add_option("--columns", columns, "the columns to show, in order")->type_name("a,b,c");
  app.add_option("--sort", sort, "sort by a, then by b descending (numbers as numbers; missing values last)")
      ->type_name("a,-b");
  app.add_option("--group-by", group_by, "one row per distinct (a, b) with runs, and the mean and standard deviation "
                                         "(column_sd) of every numeric column shown, e.g. over seeds")
      ->type_name("a,b");
  app.add_option("--format", options.format, "table (default), csv, json or markdown (CSV and JSON keep every digit)")
      ->type_name("F");
  app.add_option("--bytes", options.bytes, "the columns named *_bytes in B, KiB, MiB or GiB (renamed *_MiB, ...)")
      ->type_name("UNIT");
  app.add_flag("--all", options.all, "every column");
  if (!parse(app, argc, argv)) return 0;
  if (options.files.empty()) throw UsageError("show needs a FILE.h5");
  options.columns = split(columns, ',');
  options.sort = split(sort, ',');
  options.group_by = split(group_by, ',');
  try {
    std::cout << show_summary(options);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  return 0;
}

int command_merge(int argc, char** argv) {
  CLI::App app{merge_about, "lowmem merge"};
  std::vector<std::string> files;
  bool force = false;
  app.add_option("OUT.h5 IN.h5", files, "the new file, then the files to merge")->type_name("FILE.h5");
  app.add_flag("--force", force, "merge files written by different configs");
  if (!parse(app, argc, argv)) return 0;
  if (files.size() < 2) throw UsageError("merge needs OUT.h5 and at least one IN.h5");
  const std::vector<std::string> inputs(files.begin() + 1, files.end());
  const std::size_t n = merge_results(files.front(), inputs, force);
  std::cout << "merged " << n << " run" << (n == 1 ? "" : "s") << " from " << inputs.size() << " file"
            << (inputs.size() == 1 ? "" : "s") << " into " << files.front() << "\n";
  return 0;
}

// lowmem --version: the version, and the commit, build type and compiler the binary was built from.
int print_version() {
  const auto p = provenance();
  std::cout << "lowmem " LOWMEM_VERSION " (git " << p.at("git_commit") << (p.at("git_dirty") == "true" ? ", modified" : "")
            << "; " << p.at("build_type") << " build, " << p.at("compiler") << ")\n";
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
    if (command == "--version" || command == "version") return print_version();
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
