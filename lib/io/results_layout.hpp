#pragma once
// The results layout (see results_file.hpp): run groups under /runs and the /summary table, written and read.
// Internal to lib/io: only lib/io/*.cpp include it (it pulls in H5Cpp.h).
#include <cstdint>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "io/hdf5_util.hpp"
#include "io/results_file.hpp"

namespace lowmem::io_detail {

// ---- formats --------------------------------------------------------------------------------------------------

constexpr const char* kFormat = "lowmem results 2";
constexpr const char* kFormat1 = "lowmem results 1";  // before typed attributes and units
// The file's "format": kFormat, kFormat1, or "" where it has none (not written by lowmem: read as far as it
// goes). Any other is an Error naming the file and the formats this lowmem reads.
std::string file_format(const std::string& path, const H5::H5File& file);
// A format 1 run as format 2 writes it: the label seed a scalar, the attributes threads and sweep_index int64
// (where they are whole numbers).
void upgrade_format1(RunRecord& r);

// ---- run groups ---------------------------------------------------------------------------------------------

constexpr std::int64_t kNoIndex = std::numeric_limits<std::int64_t>::max();  // groups without one sort last

// A run group's "index" attribute, kNoIndex if it has none.
std::int64_t read_index(const H5::Group& run);
// Everything on the run group itself: config, status, message, labels, scalars, provenance attributes.
RunRecord read_run_attributes(const H5::Group& g, const std::string& run_id);
// The group's datasets, recursively, into r.arrays and r.string_arrays (keys below `prefix`).
void read_datasets(const H5::Group& g, const std::string& prefix, RunRecord& r);
// A run group whole: its attributes and datasets.
RunRecord read_whole_run(const H5::Group& g, const std::string& run_id);
// Creates the run group /runs/<run.run_id> with its attributes and datasets.
void write_run(const H5::Group& runs, const RunRecord& run, std::int64_t index);

// A run's row in /summary: its creation index and the attributes of its group.
struct Row {
  std::int64_t index;
  RunRecord run;  // without datasets
};

RunRecord without_datasets(RunRecord run);
void sort_rows(std::vector<Row>& rows);  // by creation index, stable
// All run groups (attributes only), in creation order.
std::vector<Row> read_rows(const H5::Group& runs);

// ---- /summary -----------------------------------------------------------------------------------------------

// Replaces /summary with the table of `rows`; Error naming `path` if a column is a label in one run and a scalar
// in another.
void write_summary(const std::string& path, const H5::H5File& file, const std::vector<Row>& rows);

// /summary as typed cells: strings as stored, every number as double.
struct Table {
  std::vector<std::string> columns;
  std::vector<bool> numeric;  // per column: numbers, or strings
  std::vector<std::vector<std::variant<std::string, double>>> rows;
};

Table read_table(const std::string& path, const H5::DataSet& d);
// Adds the rows of `later` (pending segments' /summary tables, in order) to `all`: new columns appended (NaN or
// "" in the rows before), a run id already in `all` replaced in its row.
void add_rows(Table& all, const std::vector<Table>& later);
// The rows of an existing /summary, in its order. Empty labels and NaN scalars read as absent, which is
// how /summary shows them anyway.
std::vector<Row> summary_rows(const std::string& path, const H5::DataSet& d);

}  // namespace lowmem::io_detail
