// The /summary table as text: read_summary (cells as printed) and format_table, the fixed-width table that
// `lowmem show` prints.
#include "io/results_file.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <variant>

#include "io/results_layout.hpp"
#include "io/results_pending.hpp"

namespace lowmem {
using namespace io_detail;

std::string format_number(double v, bool exact) {
  if (std::isnan(v)) return "-";
  char buf[32];
  // Whole numbers (byte counts, steps) exactly: memory figures are compared to the byte.
  if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) std::snprintf(buf, sizeof buf, "%.0f", v);
  else if (exact) *std::to_chars(buf, buf + sizeof buf - 1, v).ptr = '\0';  // the shortest text that reads back as v
  else std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

SummaryTable read_summary(const std::string& path, bool exact) {
  return read_file(path, "reading /summary", [&](const H5::H5File& file) {
    if (!file.nameExists("summary") || child(file, "summary").type != H5O_TYPE_DATASET) {
      throw Error(path + " has no /summary table; expected a lowmem results file");
    }
    file_format(path, file);
    Table table = read_table(path, file.openDataSet("summary"));
    std::vector<Table> pending;
    for_each_segment(path, file, [&](const Segment& segment) {
      if (!segment.file.nameExists("summary")) throw InFileError(segment.path + " has no /summary table");
      pending.push_back(read_table(segment.path, segment.file.openDataSet("summary")));
      return true;
    });
    add_rows(table, pending);
    SummaryTable t;
    t.columns = table.columns;
    for (const auto& cells : table.rows) {
      std::vector<std::string> row;
      for (const auto& cell : cells) {
        row.push_back(std::holds_alternative<double>(cell) ? format_number(std::get<double>(cell), exact)
                                                           : std::get<std::string>(cell));
      }
      t.rows.push_back(std::move(row));
    }
    return t;
  });
}

std::vector<std::string> default_columns(const SummaryTable& t) {
  auto has = [&](const std::string& c) { return std::find(t.columns.begin(), t.columns.end(), c) != t.columns.end(); };
  std::vector<std::string> wanted{"file", "run_id", "study", "precision", "model", "technique_label"};
  if (has("seed")) {  // seeds swept (a study over seeds): shown
    const auto k = static_cast<std::size_t>(std::find(t.columns.begin(), t.columns.end(), "seed") - t.columns.begin());
    if (std::any_of(t.rows.begin(), t.rows.end(), [&](const auto& r) { return k < r.size() && r[k] != t.rows[0][k]; }))
      wanted.push_back("seed");
  }
  for (const auto& c : t.columns)  // then what tells a sweep's runs apart: columns named by dotted config paths
    if (c.find('.') != std::string::npos) wanted.push_back(c);
  for (const char* c : {"status", "wall_seconds", "peak_bytes", "activation_peak_bytes", "final_train_loss",
                        "test_accuracy", "val_bits_per_char", "message"})
    wanted.push_back(c);
  std::vector<std::string> present;
  for (const auto& c : wanted)
    if (has(c)) present.push_back(c);
  return present;
}

std::string format_table(const SummaryTable& t, const std::vector<std::string>& columns) {
  auto position = [&](const std::string& c) {
    return static_cast<std::size_t>(std::find(t.columns.begin(), t.columns.end(), c) - t.columns.begin());
  };
  std::vector<std::size_t> chosen;
  for (const auto& c : columns.empty() ? default_columns(t) : columns) {
    if (position(c) == t.columns.size()) {
      std::string valid;
      for (const auto& v : t.columns) valid += (valid.empty() ? "" : ", ") + v;
      throw Error("unknown column '" + c + "'; valid columns: " + valid);
    }
    chosen.push_back(position(c));
  }
  // One line per cell (messages may hold newlines); numbers right-aligned, text left-aligned.
  auto cell = [&](const std::vector<std::string>& row, std::size_t i) {
    std::string s = i < row.size() ? row[i] : "";
    std::replace(s.begin(), s.end(), '\n', ' ');
    std::replace(s.begin(), s.end(), '\t', ' ');
    return s;
  };
  auto is_number = [](const std::string& s) {
    if (s == "-") return true;
    char* end = nullptr;
    std::strtod(s.c_str(), &end);
    return !s.empty() && end && *end == '\0';
  };
  std::vector<std::size_t> width;
  std::vector<bool> right;
  for (std::size_t i : chosen) {
    std::size_t w = t.columns[i].size();
    bool numeric = !t.rows.empty();
    for (const auto& row : t.rows) {
      w = std::max(w, cell(row, i).size());
      numeric = numeric && is_number(cell(row, i));
    }
    width.push_back(w);
    right.push_back(numeric);
  }
  auto line = [&](auto&& text_of) {
    std::string out;
    for (std::size_t k = 0; k < chosen.size(); ++k) {
      const std::string s = text_of(chosen[k]);
      const std::string pad(width[k] - s.size(), ' ');
      out += (k ? "  " : "") + (right[k] ? pad + s : s + pad);
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line([&](std::size_t i) { return t.columns[i]; });
  for (const auto& row : t.rows) out += line([&](std::size_t i) { return cell(row, i); });
  return out;
}

}  // namespace lowmem
