// Small HDF5 helpers of the results file (declared in hdf5_util.hpp): the error handler behind with_hdf5,
// strings, attributes, datasets, and the check that a path is an HDF5 file.
#include "io/hdf5_util.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace lowmem::io_detail {

thread_local std::string g_hdf5_reason;
herr_t keep_reason(hid_t stack, void*) {
  g_hdf5_reason.clear();
  H5Ewalk2(stack, H5E_WALK_UPWARD,
           [](unsigned n, const H5E_error2_t* e, void*) -> herr_t {
             if (n == 0 && e->desc) g_hdf5_reason = e->desc;
             return 0;
           },
           nullptr);
  return 0;
}

std::mutex g_hdf5_mutex;

std::string one_line(std::string text) {
  if (text.size() > 2000) text = text.substr(0, 1000) + " ... " + text.substr(text.size() - 500);
  for (char& c : text)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return text;
}

H5::StrType vlen_string() {
  H5::StrType t(H5::PredType::C_S1, H5T_VARIABLE);
  t.setCset(H5T_CSET_UTF8);
  return t;
}

void put_string(const H5::H5Object& obj, const std::string& name, const std::string& value) {
  const H5::StrType t = vlen_string();
  obj.createAttribute(name, t, H5::DataSpace(H5S_SCALAR)).write(t, value);
}

void put_double(const H5::H5Object& obj, const std::string& name, double value) {
  obj.createAttribute(name, H5::PredType::IEEE_F64LE, H5::DataSpace(H5S_SCALAR))
      .write(H5::PredType::NATIVE_DOUBLE, &value);
}

void put_fixed_strings(const H5::H5Object& obj, const std::string& name, const std::vector<std::string>& values) {
  std::size_t width = 1;
  for (const auto& v : values) width = std::max(width, v.size() + 1);
  H5::StrType t(H5::PredType::C_S1, width);
  t.setCset(H5T_CSET_UTF8);
  t.setStrpad(H5T_STR_NULLTERM);
  std::vector<char> buf(values.size() * width, 0);
  for (std::size_t i = 0; i < values.size(); ++i) std::memcpy(buf.data() + i * width, values[i].data(), values[i].size());
  const hsize_t n = values.size();
  const H5::DataSpace space = values.size() == 1 ? H5::DataSpace(H5S_SCALAR) : H5::DataSpace(1, &n);
  obj.createAttribute(name, t, space).write(t, buf.data());
}

namespace {

// HDF5 1.10 callocs a type-conversion buffer of this size (default 1 MiB) on every dataset read and write, even
// when no conversion is needed; for many small datasets that zeroing dominated the time of append_run.
H5::DSetMemXferPropList small_transfer() {
  H5::DSetMemXferPropList xfer;
  xfer.setBuffer(64 * 1024, nullptr, nullptr);
  return xfer;
}

// Attribute::read and DataSet::read take their arguments in different orders.
void read_raw(const H5::Attribute& a, const H5::DataType& t, void* buf) { a.read(t, buf); }
void read_raw(const H5::DataSet& d, const H5::DataType& t, void* buf) { read_dataset(d, buf, t); }

}  // namespace

void read_dataset(const H5::DataSet& d, void* buf, const H5::DataType& t) {
  d.read(buf, t, H5::DataSpace::ALL, H5::DataSpace::ALL, small_transfer());
}
void write_dataset(const H5::DataSet& d, const void* buf, const H5::DataType& t) {
  d.write(buf, t, H5::DataSpace::ALL, H5::DataSpace::ALL, small_transfer());
}

template <class Obj>
std::vector<std::string> read_strings(const Obj& obj) {
  const H5::StrType type = obj.getStrType();
  const H5::DataSpace space = obj.getSpace();
  const std::size_t n = checked_count(obj);
  std::vector<std::string> out;
  if (n == 0) return out;
  if (type.isVariableStr()) {
    std::vector<char*> ptrs(n, nullptr);
    read_raw(obj, type, ptrs.data());
    for (const char* p : ptrs) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(type.getId(), space.getId(), H5P_DEFAULT, ptrs.data());
  } else {
    // Read as stored (the file's own type): a conversion to NUL-terminated strings would drop the last character
    // of a string that fills its width.
    const std::size_t size = type.getSize();
    std::vector<char> buf(n * size);
    read_raw(obj, type, buf.data());
    for (std::size_t i = 0; i < n; ++i) out.push_back(fixed_text(&buf[i * size], size, type.getStrpad()));
  }
  return out;
}
template std::vector<std::string> read_strings(const H5::Attribute& obj);
template std::vector<std::string> read_strings(const H5::DataSet& obj);

std::string fixed_text(const char* cell, std::size_t size, H5T_str_t pad) {
  std::string text(cell, strnlen(cell, size));
  if (pad == H5T_STR_SPACEPAD) text.erase(text.find_last_not_of(' ') + 1);
  return text;
}

void write_strings(const H5::Group& g, const std::string& name, const std::vector<std::string>& values,
                   const H5::LinkCreatPropList& lcpl) {
  std::vector<const char*> ptrs;
  for (const auto& s : values) ptrs.push_back(s.c_str());
  const hsize_t n = values.size();
  const H5::StrType t = vlen_string();
  H5::DataSet d = g.createDataSet(name, t, H5::DataSpace(1, &n), H5::DSetCreatPropList::DEFAULT,
                                  H5::DSetAccPropList::DEFAULT, lcpl);
  if (n) write_dataset(d, ptrs.data(), t);
}

// ---- reading files from elsewhere ----------------------------------------------------------------------------

namespace {

std::string link_path(const H5::Group& g, const std::string& name) {
  const std::string parent = g.getObjName();
  return (parent == "/" ? "" : parent) + "/" + name;
}

}  // namespace

Child child(const H5::Group& g, const std::string& name) {
  H5L_info_t link;
  if (H5Lget_info(g.getId(), name.c_str(), &link, H5P_DEFAULT) < 0)
    throw H5::GroupIException("H5Lget_info", "cannot read the link " + link_path(g, name));
  if (link.type != H5L_TYPE_HARD)
    throw InFileError(link_path(g, name) + (link.type == H5L_TYPE_SOFT ? " is a soft" : " is an external") +
                      " link; a lowmem results file holds none (lowmem follows no links)");
  H5O_info_t object;
  if (H5Oget_info_by_name2(g.getId(), name.c_str(), &object, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
    throw H5::GroupIException("H5Oget_info_by_name2", "cannot read the object " + link_path(g, name));
  if (object.rc != 1)
    throw InFileError(link_path(g, name) + " is an object with " + std::to_string(object.rc) +
                      " links (a link back to a parent, or one object under two names); a lowmem results file "
                      "links every object once");
  return {name, object.type};
}

// Names first, in one pass: getObjnameByIdx rebuilds and sorts the whole table on every call, quadratic in the
// number of runs.
std::vector<Child> children(const H5::Group& g) {
  std::vector<std::string> names;
  auto add = [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  if (H5Literate(g.getId(), H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, add, &names) < 0) {
    throw H5::GroupIException("H5Literate", "cannot list group");
  }
  std::vector<Child> out;
  for (const std::string& name : names) out.push_back(child(g, name));
  return out;
}

std::vector<std::string> attribute_names(const H5::H5Object& obj) {
  std::vector<std::string> names;
  auto add = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  if (H5Aiterate2(obj.getId(), H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, add, &names) < 0) {
    throw H5::AttributeIException("H5Aiterate2", "cannot list attributes");
  }
  return names;
}

namespace {

constexpr hsize_t kDeflateMaxRatio = 1032;
constexpr hsize_t kAlwaysReadable = 64 << 10;

std::string object_path(hid_t id) {
  const ssize_t n = H5Iget_name(id, nullptr, 0);
  if (n <= 0) return "?";
  std::string name(static_cast<std::size_t>(n) + 1, '\0');
  H5Iget_name(id, name.data(), name.size());
  name.resize(static_cast<std::size_t>(n));
  return name;
}

// The one rule of checked_count, for a dataset or attribute described by `where`.
std::size_t admit(const std::string& where, const H5::DataSpace& space, std::size_t value_size, hsize_t stored,
                  bool compressed) {
  const hssize_t declared = space.getSimpleExtentNpoints();
  if (declared < 0) throw InFileError(where + ": its dataspace cannot be read");
  const auto count = static_cast<hsize_t>(declared);
  using Wide = unsigned __int128;  // products of 64-bit sizes, without overflow
  const Wide bound = std::max<Wide>(kAlwaysReadable, Wide{stored} * (compressed ? kDeflateMaxRatio : 1));
  if (Wide{count} * value_size > bound)
    throw InFileError(where + ": declares " + std::to_string(count) + " values of " + std::to_string(value_size) +
                      " bytes, but the file stores " + std::to_string(stored) + " bytes for it (a damaged or "
                      "hostile extent; lowmem refuses to allocate for it)");
  return static_cast<std::size_t>(count);
}

}  // namespace

std::size_t checked_count(const H5::DataSet& d) {
  const bool compressed = d.getCreatePlist().getNfilters() > 0;
  return admit(d.getObjName(), d.getSpace(), d.getDataType().getSize(), d.getStorageSize(), compressed);
}

std::size_t checked_count(const H5::Attribute& a) {
  return admit(attribute_path(a), a.getSpace(), a.getDataType().getSize(), a.getStorageSize(), false);
}

std::string attribute_path(const H5::Attribute& a) {
  return object_path(a.getId()) + " attribute '" + a.getName() + "'";
}

void copy_attributes(const H5::H5Object& in, const H5::H5Object& out) {
  for (const auto& name : attribute_names(in)) {
    if (out.attrExists(name)) continue;
    const H5::Attribute a = in.openAttribute(name);
    const H5::DataType type = a.getDataType();
    const H5::DataSpace space = a.getSpace();
    H5::Attribute copy = out.createAttribute(name, type, space);
    std::vector<char> buf(type.getSize() * checked_count(a));
    if (buf.empty()) continue;
    a.read(type, buf.data());
    copy.write(type, buf.data());
    H5Dvlen_reclaim(type.getId(), space.getId(), H5P_DEFAULT, buf.data());  // frees variable-length data only
  }
}

void read_one(const H5::Attribute& a, const H5::DataType& type, void* value) {
  if (checked_count(a) != 1) throw InFileError(attribute_path(a) + ": expected a single value");
  a.read(type, value);
}

std::int64_t get_int(const H5::H5Object& obj, const char* name, std::int64_t missing) {
  std::int64_t v = missing;
  if (obj.attrExists(name)) read_one(obj.openAttribute(name), H5::PredType::NATIVE_INT64, &v);
  return v;
}

void set_int(const H5::H5Object& obj, const char* name, std::int64_t v) {
  if (obj.attrExists(name)) obj.removeAttr(name);
  obj.createAttribute(name, H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_INT64, &v);
}

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void publish(const std::string& tmp, const std::string& path) {
  fsync_path(tmp, O_RDONLY);
  fs::rename(tmp, path);
  const fs::path parent = fs::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), O_RDONLY | O_DIRECTORY);
}

void require_hdf5_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("results file " + path + " does not exist");
  if (fs::is_directory(path, ec)) throw Error(path + " is a directory; expected an HDF5 results file");
  if (!fs::is_regular_file(path, ec)) throw Error(path + " is not a regular file; expected an HDF5 results file");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    throw Error(path + " is not an HDF5 file (or is damaged beyond recognition); expected a lowmem results file");
  }
}

namespace {

// The lines the handler prints, made before the read begins: a handler may call write() and _exit(), nothing
// that allocates.
char g_stop_lines[2][1024];

extern "C" void stop_read(int signal) {
  const char* line = g_stop_lines[signal == SIGINT ? 0 : 1];
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, line, std::strlen(line));
  ::_exit(128 + signal);
}

}  // namespace

StopReadOnSignal::StopReadOnSignal(const std::string& path) {
  const std::string file = one_line(path.size() > 900 ? "..." + path.substr(path.size() - 900) : path);
  for (int k = 0; k < 2; ++k)
    std::snprintf(g_stop_lines[k], sizeof g_stop_lines[k], "lowmem: %s: stopped by %s while reading; nothing was written\n",
                  file.c_str(), kSignals[k] == SIGINT ? "SIGINT (Ctrl-C)" : "SIGTERM");
  struct sigaction stop {};
  stop.sa_handler = stop_read;
  sigemptyset(&stop.sa_mask);
  for (int k = 0; k < 2; ++k) {
    sigaction(kSignals[k], nullptr, &previous_[k]);
    installed_[k] = previous_[k].sa_handler == SIG_DFL && sigaction(kSignals[k], &stop, nullptr) == 0;
  }
}

StopReadOnSignal::~StopReadOnSignal() {
  for (int k = 0; k < 2; ++k)
    if (installed_[k]) sigaction(kSignals[k], &previous_[k], nullptr);
}

}  // namespace lowmem::io_detail
