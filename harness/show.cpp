// lowmem show: read (several files into one table), filter, sort, group, then print in one of four formats.
#include "show.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>

#include "io/results_file.hpp"
#include "numerics/error.hpp"

namespace lowmem {
namespace {

// A cell as a number, if it is one ("-", the missing value, is not).
std::optional<double> number(const std::string& cell) {
  if (cell.empty() || cell == "-") return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(cell.c_str(), &end);
  if (*end != '\0') return std::nullopt;
  return v;
}

// Whether column k holds numbers: every cell a number or missing. A text column (run ids, which are hex, or a
// label) then compares, sorts and prints as text even where one of its cells happens to read as a number.
bool numeric_column(const SummaryTable& t, std::size_t k) {
  return std::all_of(t.rows.begin(), t.rows.end(), [&](const auto& row) { return row[k] == "-" || number(row[k]); });
}

std::size_t column_index(const SummaryTable& t, const std::string& column, const std::string& option) {
  const auto it = std::find(t.columns.begin(), t.columns.end(), column);
  if (it != t.columns.end()) return static_cast<std::size_t>(it - t.columns.begin());
  std::string valid;
  for (const auto& c : t.columns) valid += (valid.empty() ? "" : ", ") + c;
  throw Error(option + ": no column \"" + column + "\" in these results; columns: " + valid);
}

// The files' tables as one: columns in order of first appearance, "-" where a file lacks one; with several
// files, a first column `file`.
SummaryTable read_all(const std::vector<std::string>& files) {
  SummaryTable all;
  const bool named = files.size() > 1;
  if (named) all.columns.push_back("file");
  std::vector<SummaryTable> tables;
  for (const std::string& f : files) {
    tables.push_back(read_summary(f, true));
    for (const auto& c : tables.back().columns)
      if (std::find(all.columns.begin(), all.columns.end(), c) == all.columns.end()) all.columns.push_back(c);
  }
  for (std::size_t i = 0; i < files.size(); ++i) {
    std::vector<std::size_t> to;  // where this file's columns go
    for (const auto& c : tables[i].columns) to.push_back(column_index(all, c, ""));
    for (const auto& row : tables[i].rows) {
      std::vector<std::string> out(all.columns.size(), "-");
      if (named) out[0] = files[i];
      for (std::size_t k = 0; k < to.size() && k < row.size(); ++k) out[to[k]] = row[k];
      all.rows.push_back(std::move(out));
    }
  }
  return all;
}

// --where COLUMN OP VALUE: numbers compare as numbers (both sides numeric), anything else as text; "=" and "!="
// compare text, or numbers where both are (lr=0.1 matches 0.10); "~" is "contains".
void filter(SummaryTable& t, const std::string& condition) {
  const std::size_t at = condition.find_first_of("=!<>~");
  if (at == std::string::npos || at == 0)
    throw std::invalid_argument("--where expects COLUMN OP VALUE with OP one of = != < > <= >= ~, got \"" + condition + "\"");
  std::string op = condition.substr(at, 1);
  if (at + 1 < condition.size() && condition[at + 1] == '=' && op != "=" && op != "~") op += "=";
  if (op == "!") throw std::invalid_argument("--where: \"!\" must be followed by \"=\", got \"" + condition + "\"");
  const std::size_t k = column_index(t, condition.substr(0, at), "--where");
  const std::string value = condition.substr(at + op.size());
  const bool numeric = numeric_column(t, k);
  const std::optional<double> v = numeric ? number(value) : std::nullopt;
  std::erase_if(t.rows, [&](const std::vector<std::string>& row) {
    const std::string& cell = row[k];
    const std::optional<double> c = numeric ? number(cell) : std::nullopt;
    const bool both = c && v;
    if (op == "=") return !(cell == value || (both && *c == *v));
    if (op == "!=") return cell == value || (both && *c == *v);
    if (op == "~") return cell.find(value) == std::string::npos;
    const int order = both ? (*c < *v ? -1 : *c > *v ? 1 : 0) : cell.compare(value) < 0 ? -1 : cell.compare(value) > 0;
    if (both || (!c && !v && cell != "-")) {
      if (op == "<") return !(order < 0);
      if (op == ">") return !(order > 0);
      if (op == "<=") return !(order <= 0);
      return !(order >= 0);  // ">="
    }
    return true;  // a number against text, or a missing value: no order
  });
}

// --sort: stable, by each column in turn; numbers before text, missing values last either way.
void sort(SummaryTable& t, const std::vector<std::string>& keys) {
  for (auto key = keys.rbegin(); key != keys.rend(); ++key) {  // least significant first: stable sorts compose
    const bool descending = !key->empty() && (*key)[0] == '-';
    const std::size_t k = column_index(t, descending ? key->substr(1) : *key, "--sort");
    const bool numeric = numeric_column(t, k);
    std::stable_sort(t.rows.begin(), t.rows.end(), [&](const auto& a, const auto& b) {
      const bool missing_a = a[k] == "-", missing_b = b[k] == "-";
      if (missing_a || missing_b) return !missing_a && missing_b;
      if (numeric) return descending ? *number(a[k]) > *number(b[k]) : *number(a[k]) < *number(b[k]);
      return descending ? a[k] > b[k] : a[k] < b[k];
    });
  }
}

// The columns shown, by name: --all, --columns, or the defaults (results_file.hpp's default_columns).
std::vector<std::string> chosen_columns(const SummaryTable& t, const ShowOptions& o) {
  if (o.all) return t.columns;
  if (!o.columns.empty()) {
    for (const auto& c : o.columns) column_index(t, c, "--columns");
    return o.columns;
  }
  return default_columns(t);
}

SummaryTable project(const SummaryTable& t, const std::vector<std::string>& columns) {
  SummaryTable out;
  out.columns = columns;
  std::vector<std::size_t> at;
  for (const auto& c : columns) at.push_back(column_index(t, c, "--columns"));
  for (const auto& row : t.rows) {
    std::vector<std::string> r;
    for (std::size_t k : at) r.push_back(row[k]);
    out.rows.push_back(std::move(r));
  }
  return out;
}

// --group-by: one row per distinct value of the group columns (in order of first appearance), with `runs`, and
// for every other shown column whose cells are numbers (or missing) its mean over the group and its sample
// standard deviation (`<column>_sd`, "-" for a group of one); text columns are left out.
SummaryTable group(const SummaryTable& t, const std::vector<std::string>& by, const std::vector<std::string>& shown) {
  std::vector<std::size_t> keys;
  for (const auto& c : by) keys.push_back(column_index(t, c, "--group-by"));
  std::vector<std::size_t> values;
  for (const auto& c : shown) {
    const std::size_t k = column_index(t, c, "--columns");
    if (std::find(keys.begin(), keys.end(), k) != keys.end() || c == "run_id") continue;
    const bool any = std::any_of(t.rows.begin(), t.rows.end(), [&](const auto& r) { return r[k] != "-"; });
    if (numeric_column(t, k) && any) values.push_back(k);
  }
  SummaryTable out;
  out.columns = by;
  out.columns.push_back("runs");
  for (std::size_t k : values) {
    out.columns.push_back(t.columns[k]);
    out.columns.push_back(t.columns[k] + "_sd");
  }
  std::vector<std::vector<std::string>> group_keys;
  std::vector<std::vector<const std::vector<std::string>*>> members;
  for (const auto& row : t.rows) {
    std::vector<std::string> key;
    for (std::size_t k : keys) key.push_back(row[k]);
    const auto it = std::find(group_keys.begin(), group_keys.end(), key);
    if (it == group_keys.end()) {
      group_keys.push_back(key);
      members.push_back({&row});
    } else {
      members[static_cast<std::size_t>(it - group_keys.begin())].push_back(&row);
    }
  }
  for (std::size_t g = 0; g < group_keys.size(); ++g) {
    std::vector<std::string> row = group_keys[g];
    row.push_back(std::to_string(members[g].size()));
    for (std::size_t k : values) {
      std::vector<double> xs;
      for (const auto* r : members[g])
        if (const auto v = number((*r)[k])) xs.push_back(*v);
      if (xs.empty()) {
        row.insert(row.end(), {"-", "-"});
        continue;
      }
      double mean = 0;
      for (double x : xs) mean += x;
      mean /= static_cast<double>(xs.size());
      double squares = 0;
      for (double x : xs) squares += (x - mean) * (x - mean);
      row.push_back(format_number(mean, true));
      row.push_back(xs.size() > 1 ? format_number(std::sqrt(squares / static_cast<double>(xs.size() - 1)), true) : "-");
    }
    out.rows.push_back(std::move(row));
  }
  return out;
}

// --bytes UNIT: the columns named *_bytes (and their _sd) in that unit, with the unit in the column name.
void in_unit(SummaryTable& t, const std::string& unit) {
  const std::map<std::string, double> units{{"B", 1.0}, {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  const auto u = units.find(unit);
  if (u == units.end()) throw std::invalid_argument("--bytes expects B, KiB, MiB or GiB, got \"" + unit + "\"");
  for (std::size_t k = 0; k < t.columns.size(); ++k) {
    std::string& name = t.columns[k];
    const bool sd = name.size() > 3 && name.compare(name.size() - 3, 3, "_sd") == 0;
    const std::string base = sd ? name.substr(0, name.size() - 3) : name;
    if (base.size() < 6 || base.compare(base.size() - 6, 6, "_bytes") != 0) continue;
    name = base.substr(0, base.size() - 6) + "_" + unit + (sd ? "_sd" : "");
    for (auto& row : t.rows)
      if (const auto v = number(row[k])) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.4g", *v / u->second);
        row[k] = unit == "B" ? format_number(*v, true) : buf;
      }
  }
}

std::string csv(const SummaryTable& t) {
  auto field = [](const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    for (std::size_t k = 0; k < cells.size(); ++k) out += (k ? "," : "") + field(cells[k] == "-" ? "" : cells[k]);
    out += "\n";
  };
  line(t.columns);
  for (const auto& row : t.rows) line(row);
  return out;
}

std::string json_rows(const SummaryTable& t) {
  std::vector<bool> numeric;
  for (std::size_t k = 0; k < t.columns.size(); ++k) numeric.push_back(numeric_column(t, k));
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& row : t.rows) {
    nlohmann::json r = nlohmann::json::object();
    for (std::size_t k = 0; k < t.columns.size(); ++k) {
      const auto v = numeric[k] ? number(row[k]) : std::nullopt;
      if (row[k] == "-") r[t.columns[k]] = nullptr;
      else if (v && *v == std::floor(*v) && std::fabs(*v) < 9007199254740992.0) r[t.columns[k]] = static_cast<std::int64_t>(*v);
      else if (v && std::isfinite(*v)) r[t.columns[k]] = *v;
      else r[t.columns[k]] = row[k];
    }
    rows.push_back(std::move(r));
  }
  return rows.dump(1) + "\n";
}

std::string markdown(const SummaryTable& t) {
  auto cell = [](std::string s) {
    std::string out;
    for (char c : s) out += c == '|' ? std::string("\\|") : c == '\n' ? std::string(" ") : std::string(1, c);
    return out;
  };
  std::string out = "|";
  for (const auto& c : t.columns) out += " " + cell(c) + " |";
  out += "\n|";
  for (std::size_t k = 0; k < t.columns.size(); ++k) out += !t.rows.empty() && numeric_column(t, k) ? " ---: |" : " --- |";
  out += "\n";
  for (const auto& row : t.rows) {
    out += "|";
    for (const auto& c : row) out += " " + cell(c) + " |";
    out += "\n";
  }
  return out;
}

}  // namespace

std::string show_summary(const ShowOptions& o) {
  if (o.format != "table" && o.format != "csv" && o.format != "json" && o.format != "markdown")
    throw std::invalid_argument("--format expects table, csv, json or markdown, got \"" + o.format + "\"");
  SummaryTable t = read_all(o.files);
  for (const auto& condition : o.where) filter(t, condition);
  const std::vector<std::string> shown = chosen_columns(t, o);
  if (o.group_by.empty()) {  // rows sorted by any column, shown or not
    sort(t, o.sort);
    t = project(t, shown);
  } else {  // groups sorted by their columns (a mean, the runs)
    t = group(t, o.group_by, shown);
    sort(t, o.sort);
  }
  if (!o.bytes.empty()) in_unit(t, o.bytes);
  if (o.format == "csv") return csv(t);
  if (o.format == "json") return json_rows(t);
  if (o.format == "markdown") return markdown(t);
  for (std::size_t k = 0; k < t.columns.size(); ++k)  // the table for reading: 6 digits (CSV and JSON keep all)
    if (numeric_column(t, k))
      for (auto& row : t.rows)
        if (const auto v = number(row[k])) row[k] = format_number(*v, false);
  return format_table(t, t.columns);
}

}  // namespace lowmem
