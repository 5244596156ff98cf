// Small HDF5 helpers of the results file (declared in hdf5_util.hpp): the error handler behind with_hdf5,
// strings, attributes, datasets, and the check that a path is an HDF5 file.
#include "io/hdf5_util.hpp"

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
  const auto n = static_cast<std::size_t>(space.getSimpleExtentNpoints());
  std::vector<std::string> out;
  if (n == 0) return out;
  if (type.isVariableStr()) {
    std::vector<char*> ptrs(n, nullptr);
    read_raw(obj, type, ptrs.data());
    for (const char* p : ptrs) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(type.getId(), space.getId(), H5P_DEFAULT, ptrs.data());
  } else {
    const std::size_t size = type.getSize();
    std::vector<char> buf(n * size);
    read_raw(obj, type, buf.data());
    for (std::size_t i = 0; i < n; ++i) out.emplace_back(&buf[i * size], strnlen(&buf[i * size], size));
  }
  return out;
}
template std::vector<std::string> read_strings(const H5::Attribute& obj);
template std::vector<std::string> read_strings(const H5::DataSet& obj);

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

// Names of a group's links and of an object's attributes, in one pass each: getObjnameByIdx and
// openAttribute(idx) rebuild and sort the whole table on every call, quadratic in the number of runs.
std::vector<std::string> child_names(const H5::Group& g) {
  std::vector<std::string> names;
  auto add = [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  if (H5Literate(g.getId(), H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, add, &names) < 0) {
    throw H5::GroupIException("H5Literate", "cannot list group");
  }
  return names;
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

void copy_attributes(const H5::H5Object& in, const H5::H5Object& out) {
  for (const auto& name : attribute_names(in)) {
    if (out.attrExists(name)) continue;
    const H5::Attribute a = in.openAttribute(name);
    const H5::DataType type = a.getDataType();
    const H5::DataSpace space = a.getSpace();
    H5::Attribute copy = out.createAttribute(name, type, space);
    std::vector<char> buf(type.getSize() * static_cast<std::size_t>(space.getSimpleExtentNpoints()));
    if (buf.empty()) continue;
    a.read(type, buf.data());
    copy.write(type, buf.data());
    H5Dvlen_reclaim(type.getId(), space.getId(), H5P_DEFAULT, buf.data());  // frees variable-length data only
  }
}

std::int64_t get_int(const H5::H5Object& obj, const char* name) {
  std::int64_t v = 0;
  if (obj.attrExists(name)) obj.openAttribute(name).read(H5::PredType::NATIVE_INT64, &v);
  return v;
}

void set_int(const H5::H5Object& obj, const char* name, std::int64_t v) {
  if (obj.attrExists(name)) obj.removeAttr(name);
  obj.createAttribute(name, H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_INT64, &v);
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

}  // namespace lowmem::io_detail
