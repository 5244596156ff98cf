// Resuming a sweep: its identity (sweep_id) and which runs a results file already holds, with their statuses.
#include "runner.hpp"

#include <algorithm>
#include <charconv>
#include <filesystem>

#include "io/results_file.hpp"
#include "numerics/error.hpp"

namespace lowmem {

std::string sweep_id(const std::vector<PlannedRun>& runs) {
  nlohmann::json ids = nlohmann::json::array();
  for (const PlannedRun& run : runs) ids.push_back(run.id);
  return run_id(ids);
}

bool is_done(const std::string& status) { return status == "complete" || status == "diverged"; }

namespace {

// Text from a file, as a quoted string on one line, at most 40 characters: it may hold anything.
std::string quoted(const std::string& text) {
  const std::string shown = text.size() > 40 ? text.substr(0, 40) + "..." : text;
  return nlohmann::json(shown).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

RunRecord read_sweep_run(const std::string& path, const std::string& run_id) {
  RunRecord record = read_run(path, run_id);
  const auto refuse = [&](const std::string& text) {
    throw Error(path + ": attribute 'sweep_index' of " + quoted("/runs/" + run_id) + " is " + quoted(text) +
                ", not a run position (a whole number from 0)");
  };
  if (const auto it = record.integers.find("sweep_index"); it != record.integers.end() && it->second < 0)
    refuse(std::to_string(it->second));
  const auto it = record.attributes.find("sweep_index");  // text: written by another tool
  if (it == record.attributes.end()) return record;
  const std::string& text = it->second;
  std::int64_t position = -1;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), position);
  if (error != std::errc() || end != text.data() + text.size() || position < 0) refuse(text);
  record.attributes.erase(it);
  record.integers["sweep_index"] = position;
  return record;
}

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

}  // namespace lowmem
