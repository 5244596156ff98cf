// The results file's public functions and its crash-safe write protocol: the new file written beside the old,
// synced and renamed over it, the lock file .lowmem.lock, the disk-space probe, compaction. Layout in
// results_file.hpp; run groups and /summary in results_layout.cpp; HDF5 helpers in hdf5_util.cpp.
#include "io/results_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <set>

#include "io/hdf5_util.hpp"
#include "io/results_layout.hpp"
#include "numerics/error.hpp"

namespace lowmem {
using namespace io_detail;
namespace {

constexpr const char* kFormat = "lowmem results 1";
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

// A new, empty results file.
H5::H5File create_file(const std::string& file) {
  H5::FileCreatPropList fcpl;
  // Persistent free-space tracking: space freed by a replaced run or the old /summary is reused by later
  // appends instead of growing the file.
  fcpl.setFileSpaceStrategy(H5F_FSPACE_STRATEGY_FSM_AGGR, true, 1);
  H5::FileAccPropList fapl;
  // v1.8+ object format: an attribute over 64 KiB (a huge config) can go to dense attribute storage.
  fapl.setLibverBounds(H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  // close() then fails while a handle is open, instead of silently deferring the close past our rename.
  fapl.setFcloseDegree(H5F_CLOSE_SEMI);
  H5::H5File out(file, H5F_ACC_TRUNC, fcpl, fapl);
  put_string(out, "format", kFormat);
  return out;
}

// Checks that the disk has room for the new file before HDF5 writes any of it: HDF5 1.10 does not survive a
// write that fails halfway through its structures (a full disk made it crash closing the file), while a failed
// check is an ordinary error. A probe file of a generous bound is allocated and removed: twice the old file (the
// rewritten /summary may sit beside the old one), four times every value and string the new runs add, and 64 KiB.
void check_space(const std::string& path, const std::string& probe, const std::vector<RunRecord>& added) {
  std::error_code ec;
  const std::uintmax_t old_size = fs::exists(path, ec) ? fs::file_size(path, ec) : 0;
  std::uintmax_t bytes = ec ? 0 : 2 * old_size;
  for (const RunRecord& run : added) {
    std::uintmax_t payload = run.config_json.size() + run.message.size() + 4096;
    for (const auto& [key, value] : run.labels) payload += key.size() + value.size() + 64;
    for (const auto& [key, value] : run.attributes) payload += key.size() + value.size() + 64;
    payload += run.scalars.size() * 96;
    for (const auto& [key, array] : run.arrays) payload += key.size() + array.values.size() * sizeof(double) + 512;
    for (const auto& [key, strings] : run.string_arrays)
      for (const std::string& text : strings) payload += text.size() + 32;
    bytes += 4 * payload;
  }
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

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return;  // best effort: the rename is what makes the new file visible
  ::fsync(fd);
  ::close(fd);
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
  std::set<std::string> ids;
  for (const RunRecord& run : added) {
    validate(path, run);
    if (!ids.insert(run.run_id).second) throw Error(path + ": run '" + run.run_id + "' is added twice");
  }
  const std::string doing = added.size() == 1 ? "adding run '" + added[0].run_id + "'"
                                              : "adding " + std::to_string(added.size()) + " runs";
  with_hdf5(path, doing, [&] {
    const IgnoreFileSizeSignal file_size_limit;
    std::error_code ec;
    const std::string dir = require_directory(path);
    // One writer at a time in a directory (sweeps, shards or array tasks given the same file, a sweep and its
    // jobs): an advisory lock on a file there, held until the new file has replaced the old. Where the file
    // system has no locks (ENOLCK, EOPNOTSUPP), writers go on unlocked, each with its own temporary name.
    struct Lock {
      int fd;
      ~Lock() {
        if (fd >= 0) ::close(fd);  // releases the lock
      }
    } lock{::open((fs::path(dir) / ".lowmem.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644)};
    int locked = -1;
    if (lock.fd >= 0)
      while ((locked = ::flock(lock.fd, LOCK_EX)) != 0 && errno == EINTR) {
      }
    if (locked != 0 && errno != ENOLCK && errno != EOPNOTSUPP && errno != EBADF)
      throw Error(path + ": cannot lock " + dir + "/.lowmem.lock (" + std::strerror(errno) + "); the file is unchanged");
    if (locked == 0)  // temporary copies left by writers that were killed: nobody else is writing now
      for (const auto& entry : fs::directory_iterator(dir, ec))
        if (entry.path().filename().string().rfind(fs::path(path).filename().string() + ".partial-", 0) == 0)
          fs::remove(entry.path(), ec);
    const bool exists = fs::exists(fs::symlink_status(path, ec));
    if (exists) require_hdf5_file(path);
    // Crash safety: the original is only ever read. The new file is written beside it and renamed over it
    // once complete and on disk, so a kill at any moment leaves the old file or the new one, both whole.
    const std::string tmp = path + ".partial-" + std::to_string(::getpid());
    struct RemoveTmp {
      std::string p;
      ~RemoveTmp() {
        std::error_code e;
        fs::remove(p, e);
      }
    } cleanup{tmp};
    check_space(path, tmp + ".space", added);
    {
      std::int64_t appends = 0, next = 0;
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
        for (const RunRecord& run : added)
          if (const std::int64_t index = existing_index(runs, run.run_id); index >= 0) kept_index[run.run_id] = index;
        // Usually: edit a byte copy in place, cheap whatever the file holds. But HDF5 1.10 loses ~4 KiB of the
        // file on every reopening for writing, so every max(4, runs/4) appends the file is rebuilt compactly
        // instead; that costs O(runs), hence O(1) per append on average.
        appends = get_int(in, kAppendsAttr);
        compact = appends + 1 >= std::max<std::int64_t>(4, static_cast<std::int64_t>(runs.getNumObjs() / 4));
        if (compact) {
          out = create_file(tmp);
          rows = copy_compacted(path, in, out, ids);
        } else {
          fs::copy_file(path, tmp, fs::copy_options::overwrite_existing);
          out = open_existing(path, tmp, H5F_ACC_RDWR);
          // A /summary written by append_run (the counter says so) already holds every other run's row: no
          // need to visit every run group.
          const bool ours = in.attrExists(kAppendsAttr) && out.nameExists("summary");
          rows = ours ? summary_rows(path, out.openDataSet("summary")) : read_rows(out.openGroup("runs"));
          if (!out.attrExists("format")) put_string(out, "format", kFormat);
          for (const RunRecord& run : added)
            if (out.openGroup("runs").nameExists(run.run_id)) out.openGroup("runs").unlink(run.run_id);
        }
      }
      for (const auto& [name, value] : file_attributes)
        if (!out.attrExists(name)) put_string(out, name, value);
      for (const RunRecord& run : added) {
        const auto kept = kept_index.find(run.run_id);
        const std::int64_t index = kept != kept_index.end() ? kept->second : next++;
        write_run(out.openGroup("runs"), run, index);
        auto row = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.run.run_id == run.run_id; });
        if (row != rows.end()) row->run = without_datasets(run);  // a replaced run keeps its row
        else rows.push_back({index, without_datasets(run)});
      }
      write_summary(path, out, rows);
      set_int(out, kNextIndexAttr, next);
      set_int(out, kAppendsAttr, compact ? 0 : appends + 1);
      out.close();  // writes the file; fails if a handle were still open, rather than renaming an incomplete file
    }
    fsync_path(tmp, O_RDONLY);
    fs::rename(tmp, path);
    fsync_path(dir, O_RDONLY | O_DIRECTORY);  // make the rename durable
  }, "; the file is unchanged");
}

std::map<std::string, std::string> read_file_attributes(const std::string& path) {
  return read_file(path, "reading the file's attributes", [&](const H5::H5File& file) {
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

std::vector<std::string> list_runs(const std::string& path) {
  return read_file(path, "listing runs", [&](const H5::H5File& file) {
    std::vector<std::string> ids;
    for (const auto& row : read_rows(open_runs(path, file))) ids.push_back(row.run.run_id);
    return ids;
  });
}

RunRecord read_run(const std::string& path, const std::string& run_id) {
  return read_file(path, "reading run '" + run_id + "'", [&](const H5::H5File& file) {
    const H5::Group runs = open_runs(path, file);
    if (run_id.empty() || run_id.find('/') != std::string::npos || !runs.nameExists(run_id)) {
      std::string known;
      for (const auto& row : read_rows(runs)) known += (known.empty() ? "" : ", ") + row.run.run_id;
      throw Error(path + " has no run '" + run_id + "'; runs: " + (known.empty() ? "(none)" : known));
    }
    if (child(runs, run_id).type != H5O_TYPE_GROUP) throw InFileError("/runs/" + run_id + " is not a group");
    const H5::Group g = runs.openGroup(run_id);
    RunRecord r = read_run_attributes(g, run_id);
    read_datasets(g, "", r);
    return r;
  });
}

}  // namespace lowmem
