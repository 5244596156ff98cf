#pragma once
// lowmem show: the summary tables of one or more results files as one table (a `file` column when there are
// several), filtered, sorted, grouped and printed as a fixed-width table, CSV, JSON or Markdown.
#include <string>
#include <vector>

namespace lowmem {

struct ShowOptions {
  std::vector<std::string> files;
  std::vector<std::string> where;    // "COLUMN OP VALUE", OP one of = != < > <= >= ~ (substring)
  std::vector<std::string> sort;     // columns, in order of precedence; "-COLUMN" sorts it descending
  std::vector<std::string> columns;  // empty: default_columns (results_file.hpp)
  bool all = false;                  // every column
  std::vector<std::string> group_by;  // one row per group: its runs, and mean and standard deviation (n - 1) of
                                      // every numeric column shown
  std::string format = "table";      // table | csv | json | markdown
  std::string bytes;                 // "" (bytes as stored), or B, KiB, MiB, GiB: columns named *_bytes in that unit
};

// The text to print. Throws Error for a column that does not exist (naming the valid ones) and for an unreadable
// file; UsageError-like problems (an unknown format or unit, a condition without an operator) throw
// std::invalid_argument, which the command line reports as a usage error.
std::string show_summary(const ShowOptions& options);

}  // namespace lowmem
