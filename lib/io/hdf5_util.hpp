#pragma once
// Small HDF5 helpers of the results file: error translation under the process-wide HDF5 mutex, strings,
// attributes, datasets. Internal to lib/io: only lib/io/*.cpp include it (it pulls in H5Cpp.h).
#include <H5Cpp.h>

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

// Whole-dataset reads and writes with a small type-conversion buffer.
void read_dataset(const H5::DataSet& d, void* buf, const H5::DataType& t);
void write_dataset(const H5::DataSet& d, const void* buf, const H5::DataType& t);

// Whole string array (or scalar string) of an attribute or dataset; fixed-length (h5py 'S') or variable-length.
// Obj: H5::Attribute or H5::DataSet.
template <class Obj>
std::vector<std::string> read_strings(const Obj& obj);
void write_strings(const H5::Group& g, const std::string& name, const std::vector<std::string>& values,
                   const H5::LinkCreatPropList& lcpl);

// Names of a group's links and of an object's attributes, in one pass each.
std::vector<std::string> child_names(const H5::Group& g);
std::vector<std::string> attribute_names(const H5::H5Object& obj);

// Copies every attribute `out` lacks as stored (type, shape, bytes), whatever wrote it.
void copy_attributes(const H5::H5Object& in, const H5::H5Object& out);
// Scalar int64 attributes; get_int reads 0 where the attribute is missing, set_int replaces it.
std::int64_t get_int(const H5::H5Object& obj, const char* name);
void set_int(const H5::H5Object& obj, const char* name, std::int64_t v);

// Cheap checks first, so that a missing or non-HDF5 file gets a plain message rather than an HDF5 trace.
void require_hdf5_file(const std::string& path);

}  // namespace lowmem::io_detail
