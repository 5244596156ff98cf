// lowmem: the command line. Subcommands run, plan and show; every error is one readable line and exit code 1
// (usage errors: 2).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "io/error.hpp"
#include "tensor/memory_ledger.hpp"
#include "io/results_file.hpp"
#include "plan.hpp"
#include "runner.hpp"

namespace {

using namespace lowmem;

const char* main_help = R"(lowmem: memory-efficient training research toolkit

usage: lowmem <command> [options]

commands:
  run CONFIG.json    run every run the config describes, results into an HDF5 file
  plan CONFIG.json   validate the config and list its runs with the memory each will need
  show FILE.h5       print the summary table of a results file

`lowmem <command> --help` describes each command's options.
)";

const char* run_help = R"(usage: lowmem run CONFIG.json [--out FILE.h5] [--set path.to.key=value ...] [--threads N] [--quiet]

Runs every run of CONFIG (its "sweep" expanded) and appends each finished run to the results file.
  --out FILE.h5      results file (default results/<config name>.h5); an existing file is never
                     overwritten: the results go beside it (FILE.2.h5, ...) and lowmem says so
  --set PATH=VALUE   override a config value before the sweep, e.g. --set train.batch=32
                     (VALUE is JSON if it parses, else a string); may be repeated
  --threads N        threads for matrix products (default: all cores); recorded with every run
  --quiet            no progress lines
)";

const char* plan_help = R"(usage: lowmem plan CONFIG.json [--set path.to.key=value ...] [--threads N] [--json]

Validates CONFIG and lists its runs (id, study, precision, model) with the memory each will need, by
category: weights, gradients, optimizer state, saved activations and workspace, and their peak total; the
pixel-wise cost (peak / (batch x H x W)) and the layer evaluations recomputed per step (checkpointing).
Predicted by a dry step, equal to the byte to what `lowmem run` measures.
  --set PATH=VALUE   as for run
  --threads N        as for run: convolution workspace grows with the thread count (default: all cores)
  --json             print a JSON list instead of a table
)";

const char* show_help = R"(usage: lowmem show FILE.h5 [--columns a,b,c] [--sort COLUMN] [--all]

Prints the summary table of a results file, one row per run.
  --columns a,b,c    columns to show, in order (default: run_id, study, precision, status, wall_seconds,
                     peak_bytes, activation_peak_bytes, final_train_loss, test_accuracy, message)
  --sort COLUMN      sort rows by this column (numerically where it can)
  --all              every column
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

// Minimal option parser: one positional argument, then --flag [value] pairs.
struct Args {
  std::string positional;
  std::vector<std::pair<std::string, std::string>> options;
  bool help = false;

  Args(int argc, char** argv, const std::vector<std::string>& with_value, const std::vector<std::string>& flags) {
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
      } else if (positional.empty()) {
        positional = a;
      } else {
        throw UsageError("unexpected argument " + a);
      }
    }
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

// Sorts rows by one column: numerically where both cells are numbers, else as text.
void sort_table(SummaryTable& table, const std::string& column) {
  const auto it = std::find(table.columns.begin(), table.columns.end(), column);
  if (it == table.columns.end()) throw Error("--sort: no column \"" + column + "\" in this results file");
  const auto k = static_cast<std::size_t>(it - table.columns.begin());
  std::stable_sort(table.rows.begin(), table.rows.end(), [k](const auto& a, const auto& b) {
    char *end_a = nullptr, *end_b = nullptr;
    const double x = std::strtod(a[k].c_str(), &end_a), y = std::strtod(b[k].c_str(), &end_b);
    if (*end_a == '\0' && *end_b == '\0' && !a[k].empty() && !b[k].empty()) return x < y;
    return a[k] < b[k];
  });
}

int parse_threads(const std::string& text) {
  char* end = nullptr;
  const long n = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || n < 1 || n > 1024)
    throw UsageError("--threads expects a whole number from 1 to 1024, got \"" + text + "\"");
  return static_cast<int>(n);
}

unsigned all_cores() { return std::max(1u, std::thread::hardware_concurrency()); }

int command_run(int argc, char** argv) {
  const Args args(argc, argv, {"--out", "--set", "--threads"}, {"--quiet"});
  if (args.help) return std::cout << run_help, 0;
  if (args.positional.empty()) throw UsageError("run needs a CONFIG.json");
  const auto runs = plan_runs(args.positional, args.all("--set"));
  RunOptions options;
  options.threads = parse_threads(args.get("--threads", std::to_string(all_cores())));
  options.out = args.get("--out", "results/" + runs.front().parsed.name + ".h5");
  options.quiet = args.has("--quiet");
  std::string written;
  const int failed = run_all(runs, options, written);
  std::cout << "results: " << written << " (" << runs.size() << " run" << (runs.size() == 1 ? "" : "s")
            << (failed ? ", " + std::to_string(failed) + " failed" : "") << ")\n";
  return failed ? 1 : 0;
}

int command_plan(int argc, char** argv) {
  const Args args(argc, argv, {"--set", "--threads"}, {"--json"});
  if (args.help) return std::cout << plan_help, 0;
  if (args.positional.empty()) throw UsageError("plan needs a CONFIG.json");
  set_threads(parse_threads(args.get("--threads", std::to_string(all_cores()))));
  const auto runs = plan_runs(args.positional, args.all("--set"));
  std::cout << (args.has("--json") ? plan_json(runs) : plan_table(runs));
  return 0;
}

int command_show(int argc, char** argv) {
  const Args args(argc, argv, {"--columns", "--sort"}, {"--all"});
  if (args.help) return std::cout << show_help, 0;
  if (args.positional.empty()) throw UsageError("show needs a FILE.h5");
  SummaryTable table = read_summary(args.positional);
  if (args.has("--sort")) sort_table(table, args.get("--sort", ""));
  const std::vector<std::string> columns = args.has("--all") ? table.columns : split(args.get("--columns", ""), ',');
  std::cout << format_table(table, columns);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  keep_freed_memory_in_process();
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "run") return command_run(argc, argv);
    if (command == "plan") return command_plan(argc, argv);
    if (command == "show") return command_show(argc, argv);
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
