// The results file's public functions and its crash-safe write protocol: the new file written beside the old,
// synced and renamed over it, the lock file .lowmem.lock, the disk-space probe, compaction. Layout in
// results_file.hpp; run groups and /summary in results_layout.cpp; HDF5 helpers in hdf5_util.cpp.
#include "io/results_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <set>

#include "io/hdf5_util.hpp"
#include "io/results_layout.hpp"
#include "io/results_pending.hpp"
#include "numerics/error.hpp"

namespace lowmem {
using namespace io_detail;
namespace {

// Root attributes besides "format", both int64: the creation index of the next new run, and the number of
// appends since the file was last rebuilt compactly (see append_run).
constexpr const char* kNextIndexAttr = "next_index";
constexpr const char* kAppendsAttr = "appends_since_compaction";
// Attribute names append_run uses itself; labels, scalars and provenance attributes may not take them.
const std::set<std::string> kReserved = {"config", "status", "message", "index", "label_keys", "run_id"};

// ---- files --------------------------------------------------------------------------------------------------

// The directory that will hold `path`; Error if it is missing.
std::string require_directory(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  const std::string dir = parent.empty() ? "." : parent.string();
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw Error("directory " + dir + " does not exist (for results file " + path + ")");
  if (!fs::is_directory(dir, ec)) throw Error(dir + " is not a directory (for results file " + path + ")");
  return dir;
}

H5::Group open_runs(const std::string& path, const H5::H5File& file) {
  if (!file.nameExists("runs") || child(file, "runs").type != H5O_TYPE_GROUP) {
    throw Error(path + " has no /runs group; expected a lowmem results file");
  }
  return file.openGroup("runs");
}

// A new, empty results file. An `editable` one (a main file, edited in place when runs are added) tracks its free
// space persistently; a segment, written once, spends nothing on that.
H5::H5File create_file(const std::string& file, bool editable = true) {
  H5::FileCreatPropList fcpl;
  // Persistent free-space tracking: space freed by a replaced run or the old /summary is reused by later
  // appends instead of growing the file.
  if (editable) fcpl.setFileSpaceStrategy(H5F_FSPACE_STRATEGY_FSM_AGGR, true, 1);
  H5::FileAccPropList fapl;
  // v1.8+ object format: an attribute over 64 KiB (a huge config) can go to dense attribute storage.
  fapl.setLibverBounds(H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  // close() then fails while a handle is open, instead of silently deferring the close past our rename.
  fapl.setFcloseDegree(H5F_CLOSE_SEMI);
  if (!editable) {  // no aggregation blocks, whose unused tails would be a third of a one-run file
    H5Pset_meta_block_size(fapl.getId(), 0);
    H5Pset_small_data_block_size(fapl.getId(), 0);
  }
  H5::H5File out(file, H5F_ACC_TRUNC, fcpl, fapl);
  put_string(out, "format", kFormat);
  return out;
}

// What a run adds to a file, generously: its values and strings, and room for the HDF5 structures around them.
std::uintmax_t payload_bytes(const RunRecord& run) {
  std::uintmax_t payload = run.config_json.size() + run.message.size() + 4096;
  for (const auto& [key, value] : run.labels) payload += key.size() + value.size() + 64;
  for (const auto& [key, value] : run.attributes) payload += key.size() + value.size() + 64;
  payload += (run.scalars.size() + run.integers.size()) * 96;
  for (const auto& [key, array] : run.arrays) payload += key.size() + array.values.size() * sizeof(double) + 512;
  for (const auto& [key, strings] : run.string_arrays)
    for (const std::string& text : strings) payload += text.size() + 32;
  return payload;
}

// Checks that the disk has room for a new file of at most `bytes` before HDF5 writes any of it: HDF5 1.10 does
// not survive a write that fails halfway through its structures (a full disk made it crash closing the file),
// while a failed check is an ordinary error. A probe file of that size is allocated and removed.
void check_space(const std::string& path, const std::string& probe, std::uintmax_t bytes) {
  bytes += 64 << 10;
  const int fd = ::open(probe.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);  // one left by a kill: reused
  const int error = fd < 0 ? errno : ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (fd >= 0) ::close(fd), ::unlink(probe.c_str());
  if (error == EOPNOTSUPP || error == ENOSYS || error == EINVAL) return;  // a file system that cannot tell
  if (error != 0)
    throw Error(path + ": no room for the new file (" + std::to_string(bytes) + " bytes could not be reserved: " +
                std::strerror(error) + "); the file is unchanged");
}

// A write past `ulimit -f` raises SIGXFSZ, whose default action kills the process without a word. Ignored while
// the results file is written, the write fails with EFBIG instead, which is reported like a full disk: one line,
// the file unchanged, the runs committed before kept.
class IgnoreFileSizeSignal {
 public:
  IgnoreFileSizeSignal() {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGXFSZ, &ignore, &previous_);
  }
  ~IgnoreFileSizeSignal() { sigaction(SIGXFSZ, &previous_, nullptr); }
  IgnoreFileSizeSignal(const IgnoreFileSizeSignal&) = delete;
  IgnoreFileSizeSignal& operator=(const IgnoreFileSizeSignal&) = delete;

 private:
  struct sigaction previous_ {};
};

H5::H5File open_existing(const std::string& path, const std::string& file, unsigned flags) {
  H5::FileAccPropList fapl;
  fapl.setLibverBounds(H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  fapl.setFcloseDegree(H5F_CLOSE_SEMI);
  try {
    return H5::H5File(file, flags, H5::FileCreatPropList::DEFAULT, fapl);
  } catch (const H5::Exception& e) {
    throw Error(path + " is corrupt or truncated; HDF5 cannot open it (" +
                (g_hdf5_reason.empty() ? e.getDetailMsg() : g_hdf5_reason) + ")");
  }
}

// Rebuilds the results file `in` into the empty file `out`: root attributes, any other top-level object, and
// every run but `skip` (which is about to be replaced). Returns the rows of all runs in creation order.
std::vector<Row> copy_compacted(const std::string& path, const H5::H5File& in, const H5::H5File& out,
                                const std::set<std::string>& skip) {
  copy_attributes(in, out);
  for (const auto& [name, type] : children(in)) {
    if (name == "summary" || name == "runs") continue;
    // Objects added by later tools. (H5Ocopy is fine for them unless they carry variable-length string
    // attributes in dense storage, which crash it in 1.10.8.)
    if (H5Ocopy(in.getId(), name.c_str(), out.getId(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0) {
      throw H5::GroupIException("H5Ocopy", "cannot copy /" + name);
    }
  }
  const H5::Group runs_in = open_runs(path, in), runs_out = out.createGroup("runs");
  copy_attributes(runs_in, runs_out);
  std::vector<Row> rows;
  for (const auto& [name, type] : children(runs_in)) {
    if (type != H5O_TYPE_GROUP) continue;
    const H5::Group g = runs_in.openGroup(name);
    RunRecord r = read_run_attributes(g, name);
    const std::int64_t index = read_index(g);
    if (!skip.count(name)) {
      // Read and rewrite rather than H5Ocopy, for the crash above (a config over 64 KiB needs dense storage).
      read_datasets(g, "", r);
      write_run(runs_out, r, index);
    }
    rows.push_back({index, without_datasets(r)});
  }
  sort_rows(rows);
  return rows;
}

// The creation index the next new run gets: root attribute "next_index", or for files without it one past
// the largest run index.
std::int64_t next_index(const H5::H5File& file, const H5::Group& runs) {
  if (file.attrExists(kNextIndexAttr)) return get_int(file, kNextIndexAttr);
  std::int64_t next = 0;
  for (const auto& [name, type] : children(runs)) {
    if (type != H5O_TYPE_GROUP) continue;
    const std::int64_t i = read_index(runs.openGroup(name));
    if (i != kNoIndex) next = std::max(next, i + 1);
  }
  return next;
}

// The index of an existing run (it keeps its row when replaced), or -1.
std::int64_t existing_index(const H5::Group& runs, const std::string& run_id) {
  if (!runs.nameExists(run_id) || child(runs, run_id).type != H5O_TYPE_GROUP) return -1;
  const std::int64_t i = read_index(runs.openGroup(run_id));
  return i == kNoIndex ? -1 : i;
}

void validate(const std::string& path, const RunRecord& r) {
  auto fail = [&](const std::string& what) { throw Error(path + ": run '" + r.run_id + "': " + what); };
  if (r.run_id.empty() || r.run_id.find('/') != std::string::npos || r.run_id == "." || r.run_id == "..") {
    fail("run_id must be non-empty and contain no '/'");
  }
  if (r.status != "complete" && r.status != "diverged" && r.status != "failed") {
    fail("status '" + r.status + "'; expected complete, diverged or failed");
  }
  std::set<std::string> names = kReserved;
  auto claim = [&](const std::string& k, const std::string& kind) {
    if (k.empty()) fail("empty " + kind + " name");
    if (!names.insert(k).second) fail(kind + " name '" + k + "' is reserved or used twice");
  };
  for (const auto& [k, v] : r.labels) claim(k, "label");
  for (const auto& [k, v] : r.scalars) claim(k, "scalar");
  for (const auto& [k, v] : r.attributes) claim(k, "attribute");
  for (const auto& [k, v] : r.integers) claim(k, "attribute");

  std::set<std::string> keys;
  auto check_key = [&](const std::string& key) {
    std::size_t start = 0;
    while (true) {
      const std::size_t end = std::min(key.find('/', start), key.size());
      const std::string part = key.substr(start, end - start);
      if (part.empty() || part == "." || part == "..") fail("dataset key '" + key + "' has an empty or '.' part");
      if (end == key.size()) break;
      start = end + 1;
    }
    if (!keys.insert(key).second) fail("dataset key '" + key + "' is given twice");
  };
  for (const auto& [key, a] : r.arrays) {
    check_key(key);
    std::uint64_t n = 1;
    for (auto d : a.shape) n *= d;
    if (!a.shape.empty() && n != a.values.size()) {
      fail("array '" + key + "' has " + std::to_string(a.values.size()) + " values but its shape holds " +
           std::to_string(n));
    }
  }
  for (const auto& [key, v] : r.string_arrays) check_key(key);
  for (const auto& key : keys) {  // "a" cannot be a dataset and also the group holding "a/b"
    for (auto slash = key.find('/'); slash != std::string::npos; slash = key.find('/', slash + 1)) {
      if (keys.count(key.substr(0, slash))) fail("dataset '" + key.substr(0, slash) + "' is also a group in '" + key + "'");
    }
  }
}


// One writer at a time in a directory (sweeps, shards or array tasks given the same file, a sweep and its
// jobs): an advisory lock on ".lowmem.lock" there, held while a file is written. Where the file system has no
// locks (ENOLCK, EOPNOTSUPP), writers go on unlocked, each with its own temporary names; only a writer holding
// the lock may remove what killed writers left.
class DirectoryLock {
 public:
  DirectoryLock(const std::string& path, const std::string& dir)
      : fd_(::open((fs::path(dir) / ".lowmem.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644)) {
    int result = -1;
    if (fd_ >= 0)
      while ((result = ::flock(fd_, LOCK_EX)) != 0 && errno == EINTR) {
      }
    if (result != 0 && errno != ENOLCK && errno != EOPNOTSUPP && errno != EBADF)
      throw Error(path + ": cannot lock " + dir + "/.lowmem.lock (" + std::strerror(errno) + "); the file is unchanged");
    locked_ = result == 0;
  }
  ~DirectoryLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  bool locked() const { return locked_; }

 private:
  int fd_;
  bool locked_ = false;
};

// Temporary files of writers that were killed: "<file>.partial-<pid>" beside the file, and anything in the
// pending directory that is not a complete segment.
void remove_partials(const std::string& path) {
  std::error_code ec;
  std::vector<fs::path> stale;
  const std::string prefix = fs::path(path).filename().string() + ".partial-";
  for (const auto& entry : fs::directory_iterator(require_directory(path), ec))
    if (entry.path().filename().string().rfind(prefix, 0) == 0) stale.push_back(entry.path());
  for (const auto& entry : fs::directory_iterator(pending_dir(path), ec))
    if (segment_number(entry.path().filename().string()) < 0) stale.push_back(entry.path());
  for (const fs::path& p : stale) fs::remove(p, ec);
}

std::string new_file_id() {
  std::random_device device;
  std::mt19937_64 bits((static_cast<std::uint64_t>(device()) << 32) ^ device() ^
                       static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()));
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(bits()));
  return text;
}

// The run of a pending segment, whole.
RunRecord read_segment_run(const std::string& file, const std::string& run_id) {
  const H5::H5File segment(file, H5F_ACC_RDONLY);
  return read_whole_run(segment.openGroup("runs").openGroup(run_id), run_id);
}

// Commits `run` as segment `number` of `path`: a one-run results file, written beside its final name and
// published. Returns its size.
std::uintmax_t write_segment(const std::string& path, std::int64_t number, const RunRecord& run,
                             std::int64_t index, const std::string& file_id) {
  const std::string dir = pending_dir(path), file = segment_path(path, number);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    fs::create_directory(dir);
    fsync_path(require_directory(path), O_RDONLY | O_DIRECTORY);  // the new directory made durable
  }
  const std::string tmp = (fs::path(dir) / ("." + fs::path(file).filename().string() + ".partial-" +
                                            std::to_string(::getpid()))).string();
  const RemoveOnExit cleanup{tmp};
  check_space(path, tmp + ".space", 4 * payload_bytes(run));
  {
    H5::H5File out = create_file(tmp, false);
    put_string(out, kFileIdAttr, file_id);
    set_int(out, kSegmentAttr, number);
    write_run(out.createGroup("runs"), run, index);
    write_summary(path, out, {Row{index, without_datasets(run)}});
    out.close();
  }
  publish(tmp, file);
  return fs::file_size(file);
}

// A run for rewrite(): its id, its record (read from a segment only when written, so that a fold holds one run in
// memory at a time), and the index a segment gave it (-1: kept from the file if the run is there, else the next).
struct Source {
  std::string run_id;
  std::function<RunRecord()> load;
  std::int64_t index = -1;
};

struct Rewritten {
  std::uintmax_t bytes;
  std::int64_t next_index;
};

// Writes the file `path` anew (creating it if missing) with `sources` added, each replacing a run of its id in
// place, and publishes it. `file_id`: set where the file has none; `folded`: the last segment now in the file.
// `added_bytes`: a generous bound of what the sources add, for the disk-space check.
Rewritten rewrite(const std::string& path, const std::vector<Source>& sources,
                  const std::map<std::string, std::string>& file_attributes, std::int64_t folded,
                  const std::string& file_id, std::uintmax_t added_bytes) {
  std::error_code ec;
  std::set<std::string> ids;
  for (const Source& s : sources) ids.insert(s.run_id);
  const bool exists = fs::exists(fs::symlink_status(path, ec));
  if (exists) require_hdf5_file(path);
  // The original is only ever read; the new file is written beside it and published.
  const std::string tmp = path + ".partial-" + std::to_string(::getpid());
  const RemoveOnExit cleanup{tmp};
  const std::uintmax_t old_size = exists ? fs::file_size(path, ec) : 0;
  check_space(path, tmp + ".space", 2 * (ec ? 0 : old_size) + added_bytes);  // /summary rewritten beside the old
  std::int64_t next = 0;
  {
    std::int64_t appends = 0;
    std::map<std::string, std::int64_t> kept_index;  // runs replaced: they keep their index and row
    bool compact = true;  // a new file, or a rebuilt one
    std::vector<Row> rows;  // the other runs' summary rows, in creation order
    H5::H5File in, out;
    if (exists) in = open_existing(path, path, H5F_ACC_RDONLY);
    if (!exists || in.getNumObjs() == 0) {  // a new (or empty) file
      out = create_file(tmp);
      out.createGroup("runs");
    } else {
      const H5::Group runs = open_runs(path, in);
      next = next_index(in, runs);
      for (const Source& s : sources)
        if (const std::int64_t index = existing_index(runs, s.run_id); index >= 0) kept_index[s.run_id] = index;
      // Usually: edit a byte copy in place, cheap whatever the file holds. But HDF5 1.10 loses ~4 KiB of the
      // file on every reopening for writing, so every max(4, runs/4) rewrites the file is rebuilt compactly
      // instead; that costs O(runs), hence O(1) per rewrite on average.
      appends = get_int(in, kAppendsAttr);
      compact = appends + 1 >= std::max<std::int64_t>(4, static_cast<std::int64_t>(runs.getNumObjs() / 4));
      if (compact) {
        out = create_file(tmp);
        rows = copy_compacted(path, in, out, ids);
      } else {
        fs::copy_file(path, tmp, fs::copy_options::overwrite_existing);
        out = open_existing(path, tmp, H5F_ACC_RDWR);
        // A /summary written by lowmem (the counter says so) already holds every other run's row: no need to
        // visit every run group.
        const bool ours = in.attrExists(kAppendsAttr) && out.nameExists("summary");
        rows = ours ? summary_rows(path, out.openDataSet("summary")) : read_rows(out.openGroup("runs"));
        if (!out.attrExists("format")) put_string(out, "format", kFormat);
        for (const std::string& id : ids)
          if (out.openGroup("runs").nameExists(id)) out.openGroup("runs").unlink(id);
      }
    }
    for (const auto& [name, value] : file_attributes)
      if (!out.attrExists(name)) put_string(out, name, value);
    if (!out.attrExists(kFileIdAttr)) put_string(out, kFileIdAttr, file_id);
    std::map<std::string, std::size_t> row_of;  // run id -> its row: a fold of thousands looks each up once
    for (std::size_t k = 0; k < rows.size(); ++k) row_of.emplace(rows[k].run.run_id, k);
    for (const Source& source : sources) {
      const auto kept = kept_index.find(source.run_id);
      const std::int64_t index = source.index >= 0 ? source.index : kept != kept_index.end() ? kept->second : next;
      next = std::max(next, index + 1);
      const RunRecord run = source.load();
      write_run(out.openGroup("runs"), run, index);
      if (const auto row = row_of.find(run.run_id); row != row_of.end()) {
        rows[row->second].run = without_datasets(run);  // a replaced run keeps its row
      } else {
        row_of.emplace(run.run_id, rows.size());
        rows.push_back({index, without_datasets(run)});
      }
    }
    write_summary(path, out, rows);
    set_int(out, kNextIndexAttr, next);
    set_int(out, kAppendsAttr, compact ? 0 : appends + 1);
    set_int(out, kFoldedAttr, std::max(get_int(out, kFoldedAttr), folded));
    out.close();  // writes the file; fails if a handle were still open, rather than publishing an incomplete file
  }
  publish(tmp, path);
  return {fs::file_size(path), next};
}

}  // namespace

void check_writable_location(const std::string& requested) {
  if (requested.empty()) throw Error("empty results path; expected a file name such as results/run.h5");
  const fs::path p(requested);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    throw Error(requested + " is a directory; expected a results file path such as " + (p / "results.h5").string());
  }
  const std::string dir = require_directory(requested);
  // access() alone is not enough (root, ACLs, network file systems): also create and remove a probe file.
  const std::string probe = (fs::path(dir) / (".lowmem-probe-" + std::to_string(::getpid()))).string();
  const int fd = ::access(dir.c_str(), W_OK) == 0 ? ::open(probe.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600) : -1;
  if (fd < 0) {
    throw Error("directory " + dir + " is not writable (" + std::strerror(errno) + "); cannot write " + requested);
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

OutputChoice choose_output_path(const std::string& requested) {
  check_writable_location(requested);
  const fs::path p(requested);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(p, ec))) return {requested, ""};
  // Never overwrite: results/default.h5 -> results/default.2.h5, .3.h5, ...
  const std::string ext = p.has_extension() ? p.extension().string() : ".h5";
  const std::string stem = p.has_extension() ? requested.substr(0, requested.size() - ext.size()) : requested;
  for (int k = 2;; ++k) {
    const std::string candidate = stem + "." + std::to_string(k) + ext;
    if (!fs::exists(fs::symlink_status(candidate, ec))) {
      return {candidate, requested + " exists; writing " + candidate + " instead"};
    }
  }
}

void append_run(const std::string& path, const RunRecord& run, const std::map<std::string, std::string>& file_attributes) {
  append_runs(path, {run}, file_attributes);
}

void append_runs(const std::string& path, const std::vector<RunRecord>& added,
                 const std::map<std::string, std::string>& file_attributes) {
  ResultsWriter(path, file_attributes).append_all(added);
}

// ---- ResultsWriter --------------------------------------------------------------------------------------------

ResultsWriter::ResultsWriter(std::string path, std::map<std::string, std::string> file_attributes)
    : path_(std::move(path)), file_attributes_(std::move(file_attributes)) {
  with_hdf5(path_, "opening for appends", [&] {
    std::error_code ec;
    const DirectoryLock lock(path_, require_directory(path_));
    if (!fs::exists(fs::symlink_status(path_, ec))) {  // segments without their file: never read, so removed
      if (lock.locked()) fs::remove_all(pending_dir(path_), ec);
      return;
    }
    require_hdf5_file(path_);
    const H5::H5File main = open_existing(path_, path_, H5F_ACC_RDONLY);
    if (main.getNumObjs() == 0) return;  // an empty HDF5 file: the first append makes it a results file
    if (file_format(path_, main) == kFormat1)
      throw Error(path_ + " is a \"" + kFormat1 + "\" file, written by an older lowmem; runs are added only to \"" +
                  kFormat + "\" files: `lowmem merge " + path_ + " NEW.h5` copies its runs into one");
    next_index_ = next_index(main, open_runs(path_, main));
    main_bytes_ = fs::file_size(path_);
    if (main.attrExists(kFileIdAttr)) file_id_ = read_strings(main.openAttribute(kFileIdAttr)).at(0);
    next_number_ = get_int(main, kFoldedAttr) + 1;
    std::set<std::int64_t> read;
    for_each_segment(path_, main, [&](const Segment& s) {
      for (const auto& [name, type] : children(s.file.openGroup("runs"))) {
        const std::int64_t index = read_index(s.file.openGroup("runs").openGroup(name));
        pending_.push_back({s.number, name, index, fs::file_size(s.path)});
        pending_bytes_ += pending_.back().bytes;
        pending_index_[name] = index;
        next_index_ = std::max(next_index_, index + 1);
      }
      read.insert(s.number);
      return true;
    });
    for (const std::int64_t n : segment_numbers(path_)) {  // never reuse a number, whoever's file had it
      next_number_ = std::max(next_number_, n + 1);
      if (lock.locked() && !read.count(n)) fs::remove(segment_path(path_, n), ec);  // folded, or another file's
    }
    if (lock.locked()) remove_partials(path_);
  });
}

void ResultsWriter::append(const RunRecord& run, std::size_t runs_to_come) {
  validate(path_, run);
  if (file_id_.empty()) return append_all({run});  // a new file, or one written before segments: rewritten once
  with_hdf5(path_, "adding run '" + run.run_id + "'", [&] {
    const IgnoreFileSizeSignal file_size_limit;
    const DirectoryLock lock(path_, require_directory(path_));
    // A run given again (a resumed failure) keeps its index, hence its row; a new one takes the next.
    std::int64_t index = -1;
    if (const auto it = pending_index_.find(run.run_id); it != pending_index_.end()) index = it->second;
    else index = existing_index(open_runs(path_, open_existing(path_, path_, H5F_ACC_RDONLY)), run.run_id);
    const bool fresh = index < 0;
    if (fresh) index = next_index_;
    const std::uintmax_t bytes = write_segment(path_, next_number_, run, index, file_id_);
    pending_.push_back({next_number_++, run.run_id, index, bytes});
    pending_index_[run.run_id] = index;
    if (fresh) ++next_index_;
    pending_bytes_ += bytes;
    bytes_written_ += bytes;
  }, "; the results are unchanged");
  if (pending_bytes_ <= kFoldRatio * main_bytes_) return;
  // The runs to come, at this run's size, would they keep the pending bytes within twice the limit until the
  // sweep's own fold? Then that fold takes them all.
  const std::uintmax_t each = pending_.back().bytes, limit = 2 * kFoldRatio * main_bytes_;
  if (runs_to_come != kUnknown && runs_to_come <= (limit - std::min(limit, pending_bytes_)) / std::max<std::uintmax_t>(each, 1))
    return;
  fold();
}

void ResultsWriter::fold() {
  if (!pending_.empty()) append_all({});
}

void ResultsWriter::append_all(const std::vector<RunRecord>& added) {
  std::set<std::string> ids;
  for (const RunRecord& run : added) {
    validate(path_, run);
    if (!ids.insert(run.run_id).second) throw Error(path_ + ": run '" + run.run_id + "' is added twice");
  }
  const std::string doing = added.size() == 1 ? "adding run '" + added[0].run_id + "'"
                            : added.empty()   ? "folding " + std::to_string(pending_.size()) + " pending runs in"
                                              : "adding " + std::to_string(added.size()) + " runs";
  with_hdf5(path_, doing, [&] {
    const IgnoreFileSizeSignal file_size_limit;
    const DirectoryLock lock(path_, require_directory(path_));
    if (lock.locked()) remove_partials(path_);
    // The pending runs, then the added ones; a run id met again takes the first one's place with the later record.
    std::vector<Source> sources;
    std::map<std::string, std::size_t> place;
    std::uintmax_t bytes = 0;
    auto add = [&](Source source) {
      const auto [it, first] = place.emplace(source.run_id, sources.size());
      if (first) sources.push_back(std::move(source));
      else sources[it->second] = std::move(source);
    };
    for (const PendingRun& p : pending_) {
      const std::string file = segment_path(path_, p.number);
      add({p.run_id, [file, id = p.run_id] { return read_segment_run(file, id); }, p.index});
      bytes += 2 * p.bytes;
    }
    for (const RunRecord& run : added) {
      const auto it = pending_index_.find(run.run_id);
      add({run.run_id, [&run] { return run; }, it == pending_index_.end() ? -1 : it->second});
      bytes += 4 * payload_bytes(run);
    }
    if (file_id_.empty()) file_id_ = new_file_id();
    const Rewritten done = rewrite(path_, sources, file_attributes_, pending_.empty() ? 0 : pending_.back().number,
                                   file_id_, bytes);
    main_bytes_ = done.bytes;
    bytes_written_ += done.bytes;
    next_index_ = done.next_index;
    std::error_code ec;
    for (const PendingRun& p : pending_) fs::remove(segment_path(path_, p.number), ec);  // a kill here: ignored
    fs::remove(pending_dir(path_), ec);  // if empty
    pending_.clear();
    pending_index_.clear();
    pending_bytes_ = 0;
  }, "; the file is unchanged");
}

std::map<std::string, std::string> read_file_attributes(const std::string& path) {
  return read_file(path, "reading the file's attributes", [&](const H5::H5File& file) {
    file_format(path, file);
    std::map<std::string, std::string> attributes;
    for (const std::string& name : attribute_names(file)) {
      const H5::Attribute a = file.openAttribute(name);
      if (a.getTypeClass() == H5T_STRING) {
        const std::vector<std::string> values = read_strings(a);
        if (values.size() == 1) attributes[name] = values[0];
      }
    }
    return attributes;
  });
}

namespace {

// The run ids of the file and then of its pending segments, each once, in creation order.
std::vector<std::string> run_ids(const std::string& path, const H5::H5File& file) {
  std::vector<std::string> ids;
  std::set<std::string> seen;
  for (const auto& row : read_rows(open_runs(path, file)))
    if (seen.insert(row.run.run_id).second) ids.push_back(row.run.run_id);
  for_each_segment(path, file, [&](const Segment& segment) {
    for (const auto& row : read_rows(open_runs(segment.path, segment.file)))
      if (seen.insert(row.run.run_id).second) ids.push_back(row.run.run_id);
    return true;
  });
  return ids;
}

}  // namespace

std::vector<std::string> list_runs(const std::string& path) {
  return read_file(path, "listing runs", [&](const H5::H5File& file) {
    file_format(path, file);
    return run_ids(path, file);
  });
}

RunRecord read_run(const std::string& path, const std::string& run_id) {
  return read_file(path, "reading run '" + run_id + "'", [&](const H5::H5File& file) {
    const bool old = file_format(path, file) == kFormat1;
    const bool valid = !run_id.empty() && run_id.find('/') == std::string::npos;
    // The latest record of the run: in the last pending segment that has it, else in the file.
    std::optional<RunRecord> found;
    if (valid)
      for_each_segment(path, file, [&](const Segment& s) {
        const H5::Group pending = open_runs(s.path, s.file);
        if (!pending.nameExists(run_id)) return true;
        if (child(pending, run_id).type != H5O_TYPE_GROUP) throw InFileError(s.path + ": /runs/" + run_id + " is not a group");
        found = read_whole_run(pending.openGroup(run_id), run_id);
        return false;
      }, true);
    if (found) return *found;  // segments are written by this lowmem: format 2
    const H5::Group runs = open_runs(path, file);
    if (!valid || !runs.nameExists(run_id)) {
      std::string known;
      for (const std::string& id : run_ids(path, file)) known += (known.empty() ? "" : ", ") + id;
      throw Error(path + " has no run '" + run_id + "'; runs: " + (known.empty() ? "(none)" : known));
    }
    if (child(runs, run_id).type != H5O_TYPE_GROUP) throw InFileError("/runs/" + run_id + " is not a group");
    const H5::Group g = runs.openGroup(run_id);
    RunRecord r = read_whole_run(g, run_id);
    if (old) upgrade_format1(r);
    return r;
  });
}

}  // namespace lowmem
