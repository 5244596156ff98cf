#pragma once
// The HDF5 results file: one group per run under /runs, and a /summary table rebuilt after every run.
// HDF5 headers stay out of this header on purpose (it is included widely); everything here is plain C++.
//
// Layout (also read by plots/lowmem_results.py and by h5py users):
//   /                       attributes: format = "lowmem results 2"; next_index and appends_since_compaction
//                           (int64, bookkeeping of the rewrites); file_id (string) and folded_through (int64):
//                           which pending segments belong to the file and which are in it already
//   /runs/<run_id>/         group; attributes: config, status, message (strings), index (int64, creation
//                           order), label_keys (string array naming the label attributes), every label (string),
//                           every scalar (float64), every provenance attribute (string, or int64 for
//                           RunRecord::integers); strings are variable-length UTF-8
//   /runs/<run_id>/<key>    float64 dataset per RunRecord::arrays key ('/' in a key makes subgroups),
//                           variable-length UTF-8 string dataset per RunRecord::string_arrays key; attribute
//                           units where the name has one (unit_of); curves/step is a dimension scale of the
//                           per-step curves, curves/test_step of the per-evaluation ones
//   /summary                compound dataset, one row per run in creation order: run_id, status, message,
//                           sorted label keys (fixed-length UTF-8 strings), sorted scalar keys (float64, NaN if
//                           absent); attribute units: one string per column ("" where none)
// Format 1 (before typed attributes and units: seed a string label, threads and sweep_index strings) is read by
// every reader, read_run giving its runs as format 2 records; runs are not added to it (merge it into a new
// file). A file of any other format is refused.
// Pending segments: "<file>.pending/<8-digit number>.h5", each the same layout with one run and the root
// attributes file_id and segment (its number). The results are the file, then the segments numbered above its
// folded_through that carry its file_id, in order; a run in a later one replaces the same run in its row.
//
// Crash safety: no file is modified in place. A commit writes a segment beside its final name and renames it
// into place once complete and synced; a fold or append_run writes a new file beside the results file and renames
// it over the old one, then removes the segments folded in. A process killed at any moment leaves whole files
// holding every run committed. One writer per file at a time (calls in one process are serialized).
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowmem {

struct RunRecord {
  std::string run_id;       // stable id, used as group name /runs/<run_id>
  std::string config_json;  // fully resolved config -> attribute "config"
  std::string status;       // "complete" | "diverged" | "failed" -> attribute "status"
  std::string message;      // error message or "" -> attribute "message"
  std::map<std::string, std::string> labels;  // string summary columns (study, precision, ...)
  std::map<std::string, double> scalars;      // numeric summary columns (wall_seconds, peak_bytes, ...)
  struct Array {
    std::vector<double> values;        // row-major
    std::vector<std::uint64_t> shape;  // empty = 1-D of values.size(); read_run always fills it in
  };
  std::map<std::string, Array> arrays;  // float64 datasets; keys may contain '/' ("curves/train_loss")
  std::map<std::string, std::vector<std::string>> string_arrays;  // string datasets ("memory/categories")
  std::map<std::string, std::string> attributes;     // further string attributes on the run group (provenance)
  std::map<std::string, std::int64_t> integers;      // further int64 attributes on the run group (threads, ...)
};

// Where results go. A missing `requested` is used as is; an existing one is never overwritten: the first free
// "<stem>.2<ext>", "<stem>.3<ext>", ... beside it is returned with a note saying so. Throws Error if the
// directory is missing or not writable, or if `requested` is a directory.
struct OutputChoice {
  std::string path;
  std::string note;  // empty unless the path was changed
};
OutputChoice choose_output_path(const std::string& requested);
// The checks of choose_output_path alone: `requested` is not a directory, and its directory exists and is
// writable. Throws Error saying which does not hold.
void check_writable_location(const std::string& requested);

// Adds (or replaces, keeping its row) /runs/<run.run_id> and rewrites /summary, folding in any pending
// segments: the file is whole afterwards. Creates `path` if missing. Costs O(file): for many runs one at a time
// (a sweep), ResultsWriter.
// file_attributes: string attributes of the root, set where the file lacks them (the runner's sweep identity).
// Throws Error naming the file if it is not a lowmem HDF5 results file or is corrupt, or if it cannot be written
// (a full disk); the file is then untouched.
void append_run(const std::string& path, const RunRecord& run,
                const std::map<std::string, std::string>& file_attributes = {});
// Several runs in one rewrite of the file (lowmem merge), in order.
void append_runs(const std::string& path, const std::vector<RunRecord>& runs,
                 const std::map<std::string, std::string>& file_attributes = {});

// Appends runs one at a time at a cost that does not depend on how many runs the file holds: each run is
// committed as a pending segment, a small results file of its own in "<path>.pending/", written beside its
// final name and renamed into place. When the pending segments outgrow twice the main file they are folded into
// it (one rewrite, as append_runs), so the bytes written stay within a small multiple of the final size and
// readers open few files; but not when the runs still to come (a hint from the sweep) would leave fewer than
// twice that pending at the end, whose fold then takes them all: a fold near the end would copy the file for
// nothing. Readers (read_summary, read_run, list_runs, lowmem show and merge, resume, the Python
// reader) see the main file and then its segments as one set of runs; fold() at the end of a sweep leaves the
// main file whole. A kill at any moment leaves every committed run readable.
// One writer per file (the sweep's OutputLock); the constructor reads what a killed writer left.
class ResultsWriter {
 public:
  explicit ResultsWriter(std::string path, std::map<std::string, std::string> file_attributes = {});
  static constexpr std::size_t kUnknown = static_cast<std::size_t>(-1);
  void append(const RunRecord& run, std::size_t runs_to_come = kUnknown);
  void append_all(const std::vector<RunRecord>& runs);  // with the pending runs, in one rewrite of the file
  void fold();                                           // the pending runs into the file; nothing if none
  std::uintmax_t bytes_written() const { return bytes_written_; }  // by this writer: segments and rewrites
  std::size_t pending() const { return pending_.size(); }

 private:
  static constexpr std::uintmax_t kFoldRatio = 3;
  struct PendingRun {
    std::int64_t number;  // the segment's
    std::string run_id;
    std::int64_t index;
    std::uintmax_t bytes;
  };
  std::string path_;
  std::map<std::string, std::string> file_attributes_;
  std::string file_id_;  // the main file's token; empty until the file is one that takes segments
  std::vector<PendingRun> pending_;
  std::map<std::string, std::int64_t> pending_index_;
  std::int64_t next_number_ = 1, next_index_ = 0;
  std::uintmax_t main_bytes_ = 0, pending_bytes_ = 0, bytes_written_ = 0;
};

// The root's string attributes ("format", and the runner's "sweep_id", "sweep_name", "sweep_runs").
std::map<std::string, std::string> read_file_attributes(const std::string& path);

// The unit of a summary column or dataset, from its name (the last part of a dataset key): "bytes" for names
// ending in "bytes", "bytes/pixel" for the pixel-wise costs (pixel_*_bytes), "s" for names ending in "seconds",
// "" for the rest (losses, accuracies, counts, ratios).
std::string unit_of(const std::string& name);

// Summary cells as printed text: strings as stored, whole numbers exactly (byte counts), others with %.6g (with
// `exact`, the shortest text that reads back as the stored double), NaN as "-".
struct SummaryTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};
SummaryTable read_summary(const std::string& path, bool exact = false);
// A summary number as read_summary prints it.
std::string format_number(double v, bool exact);
RunRecord read_run(const std::string& path, const std::string& run_id);
std::vector<std::string> list_runs(const std::string& path);  // in creation order

// The columns `lowmem show` prints by default, those present: file (several files), run_id, study, precision,
// model, technique_label, seed (where it varies), the swept values (columns whose names are dotted paths),
// status, wall_seconds, peak_bytes, activation_peak_bytes, final_train_loss, test_accuracy, val_bits_per_char
// (text models), message.
std::vector<std::string> default_columns(const SummaryTable& t);
// Fixed-width text table of the chosen columns in the given order (empty: default_columns). An unknown column name throws Error listing the valid ones.
std::string format_table(const SummaryTable& t, const std::vector<std::string>& columns);

}  // namespace lowmem
