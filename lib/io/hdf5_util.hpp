#pragma once
// Small HDF5 helpers of the results file: error translation under the process-wide HDF5 mutex, strings,
// attributes, datasets. Internal to lib/io: only lib/io/*.cpp include it (it pulls in H5Cpp.h).
#include <H5Cpp.h>

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "numerics/error.hpp"

namespace lowmem::io_detail {

namespace fs = std::filesystem;

// HDF5 puts the real reason for a failure ("truncated file: eof = ...") on its error stack, but the destructors
// that run while the H5::Exception unwinds clear that stack. So the automatic error handler, instead of
// printing, keeps the innermost description for our message.
extern thread_local std::string g_hdf5_reason;
herr_t keep_reason(hid_t stack, void*);

extern std::mutex g_hdf5_mutex;  // the C++ API is not thread safe, even in a thread-safe build

// Something wrong inside a results file, said as "<HDF5 path>: <what>": with_hdf5 puts the file's name in front, so the walks need not carry it.
struct InFileError : Error {
  using Error::Error;
};
// Names inside a file may hold anything: control characters become '?' and the middle of a very long text is
// cut, so that a message stays one readable line.
std::string one_line(std::string text);

// Runs `f` holding the HDF5 lock; turns H5::Exception into Error("<path>: <doing> failed (<reason>)<note>").
template <class F>
auto with_hdf5(const std::string& path, const std::string& doing, F&& f, const std::string& note = "")
    -> decltype(f()) {
  std::lock_guard<std::mutex> lock(g_hdf5_mutex);
  H5::Exception::dontPrint();
  H5Eset_auto2(H5E_DEFAULT, keep_reason, nullptr);
  g_hdf5_reason.clear();
  try {
    return f();
  } catch (const InFileError& e) {
    throw Error(path + ": " + one_line(e.what()) + note);
  } catch (const H5::Exception& e) {
    const std::string why = g_hdf5_reason.empty() ? e.getDetailMsg() : g_hdf5_reason;
    throw Error(path + ": " + doing + " failed (HDF5: " + why + ")" + note);
  } catch (const fs::filesystem_error& e) {
    throw Error(path + ": " + doing + " failed (" + e.code().message() + ")" + note);
  }
}

H5::StrType vlen_string();
void put_string(const H5::H5Object& obj, const std::string& name, const std::string& value);
void put_double(const H5::H5Object& obj, const std::string& name, double value);
// Short strings (units) as a fixed-length UTF-8 attribute, as wide as the longest: kept in the object's header,
// not in the file's global heap, where every few variable-length strings of a one-run file cost a new 4 KiB
// collection. One value: a scalar attribute; else a 1-D array.
void put_fixed_strings(const H5::H5Object& obj, const std::string& name, const std::vector<std::string>& values);

// Whole-dataset reads and writes with a small type-conversion buffer.
void read_dataset(const H5::DataSet& d, void* buf, const H5::DataType& t);
void write_dataset(const H5::DataSet& d, const void* buf, const H5::DataType& t);

// Whole string array (or scalar string) of an attribute or dataset, each string at its full width: fixed-length
// (NUL-terminated, NUL-padded or space-padded, as h5py writes np.bytes_) or variable-length.
// Obj: H5::Attribute or H5::DataSet.
template <class Obj>
std::vector<std::string> read_strings(const Obj& obj);
// The text of one fixed-length string cell of `size` bytes, padding removed.
std::string fixed_text(const char* cell, std::size_t size, H5T_str_t pad);
void write_strings(const H5::Group& g, const std::string& name, const std::vector<std::string>& values,
                   const H5::LinkCreatPropList& lcpl);

// ---- reading files from elsewhere ----------------------------------------------------------------------------
// A results file may come from anywhere (h5py, another tool, a fuzzer, a damaged disk), so every walk and every
// read of one goes through the checks below; what they refuse is an InFileError naming the HDF5 path.

// A link of a group to an object that the walks may enter: a hard link to an object with no other link.
// Soft and external links, and objects linked twice (a group linking back to its parent, the same dataset
// under two runs), are refused, so no walk can loop or read one object twice.
struct Child {
  std::string name;
  H5O_type_t type;
};
Child child(const H5::Group& g, const std::string& name);
std::vector<Child> children(const H5::Group& g);  // every link of `g`, each checked as by child()
std::vector<std::string> attribute_names(const H5::H5Object& obj);  // in one pass

// The number of values of a dataset or attribute, once the file is shown to hold them: lowmem stores every
// value it declares, so a declared extent beyond the stored bytes (a huge shape over unwritten chunks, a
// damaged dataspace) is refused before anything is allocated; compressed data may expand by at most deflate's
// largest ratio, 1032:1. Reads of up to 64 KiB pass whatever is stored (fill values of small h5py datasets).
std::size_t checked_count(const H5::DataSet& d);
std::size_t checked_count(const H5::Attribute& a);
// "<object path> attribute '<name>'", for messages.
std::string attribute_path(const H5::Attribute& a);

// Copies every attribute `out` lacks as stored (type, shape, bytes), whatever wrote it.
void copy_attributes(const H5::H5Object& in, const H5::H5Object& out);
// Reads an attribute that must hold exactly one value.
void read_one(const H5::Attribute& a, const H5::DataType& type, void* value);
// Scalar int64 attributes; get_int reads `missing` where the attribute is absent, set_int replaces it.
std::int64_t get_int(const H5::H5Object& obj, const char* name, std::int64_t missing = 0);
void set_int(const H5::H5Object& obj, const char* name, std::int64_t v);

// ---- files written whole -------------------------------------------------------------------------------------

// fsync of a file or directory opened with `flags`; best effort (the rename is what makes a new file visible).
void fsync_path(const std::string& path, int flags);
// Makes the complete file `tmp` the file `path`: synced, renamed over it, and the rename made durable. A kill
// at any moment leaves the old `path` or the new one, both whole.
void publish(const std::string& tmp, const std::string& path);
// Removes a temporary file on the way out, whatever happened.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

// Cheap checks first, so that a missing or non-HDF5 file gets a plain message rather than an HDF5 trace.
void require_hdf5_file(const std::string& path);

// SIGINT and SIGTERM during a read that nobody else handles them for (show, merge, the start of a resume):
// instead of killing the process without a word, they end it at once with one line, "lowmem: <file>: stopped
// by SIGTERM while reading; nothing was written", and status 128 + the signal (130 for Ctrl-C, as a stopped
// sweep). At once, not at the next object, since the read may be stuck inside libhdf5 on a damaged file; a read
// writes nothing, so nothing is lost. Where a handler is installed already (a sweep's, which lets the commit in
// progress finish), it is left alone.
class StopReadOnSignal {
 public:
  explicit StopReadOnSignal(const std::string& path);
  ~StopReadOnSignal();
  StopReadOnSignal(const StopReadOnSignal&) = delete;
  StopReadOnSignal& operator=(const StopReadOnSignal&) = delete;

 private:
  static constexpr int kSignals[2] = {SIGINT, SIGTERM};
  struct sigaction previous_[2]{};
  bool installed_[2]{};
};

// A read-only look at a results file: with_hdf5, the cheap checks, SIGINT/SIGTERM stopping the read, and `f`
// given the file opened read-only (reading never modifies it).
template <class F>
auto read_file(const std::string& path, const std::string& doing, F&& f) {
  return with_hdf5(path, doing, [&] {
    const StopReadOnSignal stop(path);
    require_hdf5_file(path);
    return f(H5::H5File(path, H5F_ACC_RDONLY));
  });
}

}  // namespace lowmem::io_detail
