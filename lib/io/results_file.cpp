// The HDF5 results file (layout in results_file.hpp). HDF5's C++ API is used from one thread at a time (a
// process-wide mutex), and every H5::Exception becomes a lowmem::Error that names the file.
#include "io/results_file.hpp"

#include <H5Cpp.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <set>
#include <variant>

#include "numerics/error.hpp"

namespace lowmem {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFormat = "lowmem results 1";
// Root attributes besides "format", both int64: the creation index of the next new run, and the number of
// appends since the file was last rebuilt compactly (see append_run).
constexpr const char* kNextIndexAttr = "next_index";
constexpr const char* kAppendsAttr = "appends_since_compaction";
// Attribute names append_run uses itself; labels, scalars and provenance attributes may not take them.
const std::set<std::string> kReserved = {"config", "status", "message", "index", "label_keys", "run_id"};

// HDF5 puts the real reason for a failure ("truncated file: eof = ...") on its error stack, but the destructors
// that run while the H5::Exception unwinds clear that stack. So the automatic error handler, instead of
// printing, keeps the innermost description for our message.
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

std::mutex g_hdf5_mutex;  // the C++ API is not thread safe, even in a thread-safe build

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

// ---- small HDF5 helpers -------------------------------------------------------------------------------------

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

// HDF5 1.10 callocs a type-conversion buffer of this size (default 1 MiB) on every dataset read and write, even
// when no conversion is needed; for many small datasets that zeroing dominated the time of append_run.
H5::DSetMemXferPropList small_transfer() {
  H5::DSetMemXferPropList xfer;
  xfer.setBuffer(64 * 1024, nullptr, nullptr);
  return xfer;
}

void read_dataset(const H5::DataSet& d, void* buf, const H5::DataType& t) {
  d.read(buf, t, H5::DataSpace::ALL, H5::DataSpace::ALL, small_transfer());
}
void write_dataset(const H5::DataSet& d, const void* buf, const H5::DataType& t) {
  d.write(buf, t, H5::DataSpace::ALL, H5::DataSpace::ALL, small_transfer());
}

// Attribute::read and DataSet::read take their arguments in different orders.
void read_raw(const H5::Attribute& a, const H5::DataType& t, void* buf) { a.read(t, buf); }
void read_raw(const H5::DataSet& d, const H5::DataType& t, void* buf) { read_dataset(d, buf, t); }

// Whole string array (or scalar string) of an attribute or dataset; fixed-length (h5py 'S') or variable-length.
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

// ---- run groups ---------------------------------------------------------------------------------------------

constexpr std::int64_t kNoIndex = std::numeric_limits<std::int64_t>::max();  // groups without one sort last

std::int64_t read_index(const H5::Group& run) {
  std::int64_t index = kNoIndex;
  if (run.attrExists("index")) run.openAttribute("index").read(H5::PredType::NATIVE_INT64, &index);
  return index;
}

// Everything on the run group itself: config, status, message, labels, scalars, provenance attributes.
RunRecord read_run_attributes(const H5::Group& g, const std::string& run_id) {
  RunRecord r;
  r.run_id = run_id;
  std::set<std::string> label_keys;
  if (g.attrExists("label_keys")) {
    for (auto& k : read_strings(g.openAttribute("label_keys"))) label_keys.insert(k);
  }
  for (const auto& name : attribute_names(g)) {
    if (name == "index" || name == "label_keys") continue;
    const H5::Attribute a = g.openAttribute(name);
    const H5T_class_t cls = a.getTypeClass();
    if (cls == H5T_FLOAT || cls == H5T_INTEGER) {
      if (a.getSpace().getSimpleExtentNpoints() != 1) continue;  // not something append_run writes
      double v = 0;
      a.read(H5::PredType::NATIVE_DOUBLE, &v);
      r.scalars[name] = v;
    } else if (cls == H5T_STRING) {
      const auto values = read_strings(a);
      const std::string v = values.empty() ? "" : values.front();
      if (name == "config") r.config_json = v;
      else if (name == "status") r.status = v;
      else if (name == "message") r.message = v;
      else if (label_keys.count(name)) r.labels[name] = v;
      else r.attributes[name] = v;
    }
  }
  return r;
}

void read_datasets(const H5::Group& g, const std::string& prefix, RunRecord& r) {
  for (const auto& name : child_names(g)) {
    const std::string key = prefix.empty() ? name : prefix + "/" + name;
    const H5O_type_t kind = g.childObjType(name);
    if (kind == H5O_TYPE_GROUP) {
      read_datasets(g.openGroup(name), key, r);
    } else if (kind == H5O_TYPE_DATASET) {
      const H5::DataSet d = g.openDataSet(name);
      if (d.getTypeClass() == H5T_STRING) {
        r.string_arrays[key] = read_strings(d);
        continue;
      }
      const H5::DataSpace space = d.getSpace();
      std::vector<hsize_t> dims(static_cast<std::size_t>(space.getSimpleExtentNdims()));
      space.getSimpleExtentDims(dims.data());
      RunRecord::Array a;
      a.shape.assign(dims.begin(), dims.end());
      a.values.resize(static_cast<std::size_t>(space.getSimpleExtentNpoints()));
      if (!a.values.empty()) read_dataset(d, a.values.data(), H5::PredType::NATIVE_DOUBLE);
      r.arrays[key] = std::move(a);
    }
  }
}

void write_run(const H5::Group& runs, const RunRecord& run, std::int64_t index) {
  // Attributes in the object header (compact), however many: smaller and faster than the default dense
  // storage beyond 8 attributes. One over 64 KiB (a huge config) still goes to dense storage by itself.
  H5::PropList gcpl(H5P_GROUP_CREATE);
  H5Pset_attr_phase_change(gcpl.getId(), 65535, 0);
  const hid_t id = H5Gcreate2(runs.getId(), run.run_id.c_str(), H5P_DEFAULT, gcpl.getId(), H5P_DEFAULT);
  if (id < 0) throw H5::GroupIException("H5Gcreate2", "cannot create run group " + run.run_id);
  const H5::Group g(id);
  H5Idec_ref(id);  // H5::Group(id) took its own reference
  put_string(g, "config", run.config_json);
  put_string(g, "status", run.status);
  put_string(g, "message", run.message);
  g.createAttribute("index", H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR))
      .write(H5::PredType::NATIVE_INT64, &index);
  // Labels and provenance are both string attributes; this list tells the summary which are columns.
  std::vector<const char*> keys;
  for (const auto& [k, v] : run.labels) keys.push_back(k.c_str());
  const hsize_t n = keys.size();
  const H5::StrType t = vlen_string();
  H5::Attribute label_keys = g.createAttribute("label_keys", t, H5::DataSpace(1, &n));
  if (n) label_keys.write(t, keys.data());
  for (const auto& [k, v] : run.labels) put_string(g, k, v);
  for (const auto& [k, v] : run.scalars) put_double(g, k, v);
  for (const auto& [k, v] : run.attributes) put_string(g, k, v);

  H5::LinkCreatPropList lcpl;  // "curves/train_loss" creates the group "curves" on the way
  lcpl.setCreateIntermediateGroup(true);
  for (const auto& [key, a] : run.arrays) {
    std::vector<hsize_t> dims(a.shape.begin(), a.shape.end());
    if (dims.empty()) dims.push_back(a.values.size());
    H5::DataSet d = g.createDataSet(key, H5::PredType::IEEE_F64LE,
                                    H5::DataSpace(static_cast<int>(dims.size()), dims.data()),
                                    H5::DSetCreatPropList::DEFAULT, H5::DSetAccPropList::DEFAULT, lcpl);
    if (!a.values.empty()) write_dataset(d, a.values.data(), H5::PredType::NATIVE_DOUBLE);
  }
  for (const auto& [key, values] : run.string_arrays) write_strings(g, key, values, lcpl);
}

// A run's row in /summary: its creation index and the attributes of its group.
struct Row {
  std::int64_t index;
  RunRecord run;  // without datasets
};

RunRecord without_datasets(RunRecord run) {
  run.arrays.clear();
  run.string_arrays.clear();
  return run;
}

void sort_rows(std::vector<Row>& rows) {
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.index < b.index; });
}

// All run groups (attributes only), in creation order.
std::vector<Row> read_rows(const H5::Group& runs) {
  std::vector<Row> rows;
  for (const auto& name : child_names(runs)) {
    if (runs.childObjType(name) != H5O_TYPE_GROUP) continue;
    const H5::Group g = runs.openGroup(name);
    rows.push_back({read_index(g), read_run_attributes(g, name)});
  }
  sort_rows(rows);
  return rows;
}

// ---- /summary -----------------------------------------------------------------------------------------------

void write_summary(const std::string& path, const H5::H5File& file, const std::vector<Row>& rows) {
  std::vector<const RunRecord*> runs;
  for (const auto& row : rows) runs.push_back(&row.run);
  std::set<std::string> label_keys, scalar_keys;
  for (const RunRecord* r : runs) {
    for (const auto& [k, v] : r->labels) label_keys.insert(k);
    for (const auto& [k, v] : r->scalars) scalar_keys.insert(k);
  }
  for (const auto& k : label_keys) {
    if (scalar_keys.count(k)) {
      throw Error(path + ": summary column '" + k + "' is a label (string) in one run and a scalar in another");
    }
  }
  // Columns in the promised order; a string column is as wide as its longest cell + 1 (NUL), at least 1.
  struct Column {
    std::string name;
    bool is_string;
    std::size_t size = 8, offset = 0;
  };
  std::vector<Column> cols;
  for (const char* c : {"run_id", "status", "message"}) cols.push_back({c, true});
  for (const auto& k : label_keys) cols.push_back({k, true});
  for (const auto& k : scalar_keys) cols.push_back({k, false});
  auto text = [](const RunRecord& r, const std::string& col) -> std::string {
    if (col == "run_id") return r.run_id;
    if (col == "status") return r.status;
    if (col == "message") return r.message;
    auto it = r.labels.find(col);
    return it == r.labels.end() ? "" : it->second;
  };
  std::size_t row_size = 0;
  for (auto& c : cols) {
    if (c.is_string) {
      c.size = 1;
      for (const RunRecord* r : runs) c.size = std::max(c.size, text(*r, c.name).size() + 1);
    }
    c.offset = row_size;
    row_size += c.size;
  }
  H5::CompType type(row_size);
  for (const auto& c : cols) {
    if (c.is_string) {
      H5::StrType s(H5::PredType::C_S1, c.size);
      s.setCset(H5T_CSET_UTF8);
      s.setStrpad(H5T_STR_NULLTERM);
      type.insertMember(c.name, c.offset, s);
    } else {
      type.insertMember(c.name, c.offset, H5::PredType::NATIVE_DOUBLE);
    }
  }
  std::vector<char> buf(runs.size() * row_size, 0);
  for (std::size_t i = 0; i < runs.size(); ++i) {
    for (const auto& c : cols) {
      char* cell = buf.data() + i * row_size + c.offset;
      if (c.is_string) {
        const std::string s = text(*runs[i], c.name);
        std::memcpy(cell, s.data(), s.size());
      } else {
        auto it = runs[i]->scalars.find(c.name);
        const double v = it == runs[i]->scalars.end() ? std::nan("") : it->second;
        std::memcpy(cell, &v, sizeof v);
      }
    }
  }
  const hsize_t n = runs.size();
  if (file.nameExists("summary")) file.unlink("summary");
  H5::DataSet d = file.createDataSet("summary", type, H5::DataSpace(1, &n));
  if (n) write_dataset(d, buf.data(), type);
}

// /summary as typed cells: strings as stored, every number as double.
struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::variant<std::string, double>>> rows;
};

Table read_table(const std::string& path, const H5::DataSet& d) {
  if (d.getTypeClass() != H5T_COMPOUND) throw Error(path + ": /summary is not a table (compound dataset)");
  const H5::CompType file_type = d.getCompType();
  // Memory layout of our own: strings as stored (fixed or variable length), every number as double.
  struct Column {
    std::string name;
    enum { kFixed, kVariable, kNumber } kind;
    std::size_t size, offset;
    H5T_cset_t cset = H5T_CSET_ASCII;  // must match the file's: HDF5 converts no character sets
  };
  std::vector<Column> cols;
  std::size_t row_size = 0;
  for (unsigned m = 0; m < static_cast<unsigned>(file_type.getNmembers()); ++m) {
    const H5T_class_t cls = file_type.getMemberClass(m);
    Column c{file_type.getMemberName(m), Column::kNumber, sizeof(double), 0};
    if (cls == H5T_STRING) {
      const H5::StrType s = file_type.getMemberStrType(m);
      c.kind = s.isVariableStr() ? Column::kVariable : Column::kFixed;
      c.size = s.isVariableStr() ? sizeof(char*) : s.getSize();
      c.cset = s.getCset();
    } else if (cls != H5T_FLOAT && cls != H5T_INTEGER) {
      continue;  // nothing printable
    }
    c.offset = row_size;
    row_size += c.size;
    cols.push_back(c);
  }
  Table t;
  for (const auto& c : cols) t.columns.push_back(c.name);
  const H5::DataSpace space = d.getSpace();
  const auto n = static_cast<std::size_t>(space.getSimpleExtentNpoints());
  if (n == 0 || cols.empty()) return t;
  H5::CompType mem(row_size);
  for (const auto& c : cols) {
    if (c.kind == Column::kNumber) {
      mem.insertMember(c.name, c.offset, H5::PredType::NATIVE_DOUBLE);
      continue;
    }
    H5::StrType s(H5::PredType::C_S1, c.kind == Column::kVariable ? H5T_VARIABLE : c.size);
    s.setCset(c.cset);
    mem.insertMember(c.name, c.offset, s);
  }
  std::vector<char> buf(n * row_size, 0);
  read_dataset(d, buf.data(), mem);
  for (std::size_t i = 0; i < n; ++i) {
    auto& row = t.rows.emplace_back();
    for (const auto& c : cols) {
      const char* cell = buf.data() + i * row_size + c.offset;
      if (c.kind == Column::kFixed) {
        row.emplace_back(std::string(cell, strnlen(cell, c.size)));
      } else if (c.kind == Column::kVariable) {
        const char* str = nullptr;
        std::memcpy(&str, cell, sizeof str);
        row.emplace_back(std::string(str ? str : ""));
      } else {
        double v;
        std::memcpy(&v, cell, sizeof v);
        row.emplace_back(v);
      }
    }
  }
  H5Dvlen_reclaim(mem.getId(), space.getId(), H5P_DEFAULT, buf.data());  // frees variable-length cells only
  return t;
}

// The rows of an existing /summary, in its order. Empty labels and NaN scalars read as absent, which is
// how /summary shows them anyway.
std::vector<Row> summary_rows(const std::string& path, const H5::DataSet& d) {
  const Table t = read_table(path, d);
  std::vector<Row> rows;
  for (const auto& cells : t.rows) {
    RunRecord r;
    for (std::size_t c = 0; c < t.columns.size(); ++c) {
      const std::string& col = t.columns[c];
      if (const double* v = std::get_if<double>(&cells[c])) {
        if (!std::isnan(*v)) r.scalars[col] = *v;
        continue;
      }
      const std::string& text = std::get<std::string>(cells[c]);
      if (col == "run_id") r.run_id = text;
      else if (col == "status") r.status = text;
      else if (col == "message") r.message = text;
      else if (!text.empty()) r.labels[col] = text;
    }
    rows.push_back({static_cast<std::int64_t>(rows.size()), std::move(r)});
  }
  return rows;
}

// ---- files --------------------------------------------------------------------------------------------------

// Cheap checks first, so that a missing or non-HDF5 file gets a plain message rather than an HDF5 trace.
void require_hdf5_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("results file " + path + " does not exist");
  if (fs::is_directory(path, ec)) throw Error(path + " is a directory; expected an HDF5 results file");
  if (!fs::is_regular_file(path, ec)) throw Error(path + " is not a regular file; expected an HDF5 results file");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    throw Error(path + " is not an HDF5 file (or is damaged beyond recognition); expected a lowmem results file");
  }
}

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
  if (!file.nameExists("runs") || file.childObjType("runs") != H5O_TYPE_GROUP) {
    throw Error(path + " has no /runs group; expected a lowmem results file");
  }
  return file.openGroup("runs");
}

// Copies every attribute `out` lacks as stored (type, shape, bytes), whatever wrote it.
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
  for (const auto& name : child_names(in)) {
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
  for (const auto& name : child_names(runs_in)) {
    if (runs_in.childObjType(name) != H5O_TYPE_GROUP) continue;
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
  for (const auto& name : child_names(runs)) {
    if (runs.childObjType(name) != H5O_TYPE_GROUP) continue;
    const std::int64_t i = read_index(runs.openGroup(name));
    if (i != kNoIndex) next = std::max(next, i + 1);
  }
  return next;
}

// The index of an existing run (it keeps its row when replaced), or -1.
std::int64_t existing_index(const H5::Group& runs, const std::string& run_id) {
  if (!runs.nameExists(run_id) || runs.childObjType(run_id) != H5O_TYPE_GROUP) return -1;
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

std::string format_number(double v) {
  if (std::isnan(v)) return "-";
  char buf[32];
  // Whole numbers (byte counts, steps) exactly: memory figures are compared to the byte.
  if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
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
  return with_hdf5(path, "reading the file's attributes", [&] {
    require_hdf5_file(path);
    const H5::H5File file(path, H5F_ACC_RDONLY);
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
  return with_hdf5(path, "listing runs", [&] {
    require_hdf5_file(path);
    const H5::H5File file(path, H5F_ACC_RDONLY);
    std::vector<std::string> ids;
    for (const auto& row : read_rows(open_runs(path, file))) ids.push_back(row.run.run_id);
    return ids;
  });
}

RunRecord read_run(const std::string& path, const std::string& run_id) {
  return with_hdf5(path, "reading run '" + run_id + "'", [&] {
    require_hdf5_file(path);
    const H5::H5File file(path, H5F_ACC_RDONLY);
    const H5::Group runs = open_runs(path, file);
    if (run_id.empty() || run_id.find('/') != std::string::npos || !runs.nameExists(run_id)) {
      std::string known;
      for (const auto& row : read_rows(runs)) known += (known.empty() ? "" : ", ") + row.run.run_id;
      throw Error(path + " has no run '" + run_id + "'; runs: " + (known.empty() ? "(none)" : known));
    }
    const H5::Group g = runs.openGroup(run_id);
    RunRecord r = read_run_attributes(g, run_id);
    read_datasets(g, "", r);
    return r;
  });
}

SummaryTable read_summary(const std::string& path) {
  return with_hdf5(path, "reading /summary", [&] {
    require_hdf5_file(path);
    const H5::H5File file(path, H5F_ACC_RDONLY);
    if (!file.nameExists("summary") || file.childObjType("summary") != H5O_TYPE_DATASET) {
      throw Error(path + " has no /summary table; expected a lowmem results file");
    }
    const Table table = read_table(path, file.openDataSet("summary"));
    SummaryTable t;
    t.columns = table.columns;
    for (const auto& cells : table.rows) {
      std::vector<std::string> row;
      for (const auto& cell : cells) {
        row.push_back(std::holds_alternative<double>(cell) ? format_number(std::get<double>(cell))
                                                           : std::get<std::string>(cell));
      }
      t.rows.push_back(std::move(row));
    }
    return t;
  });
}

std::string format_table(const SummaryTable& t, const std::vector<std::string>& columns) {
  auto position = [&](const std::string& c) {
    return static_cast<std::size_t>(std::find(t.columns.begin(), t.columns.end(), c) - t.columns.begin());
  };
  std::vector<std::size_t> chosen;
  if (columns.empty()) {
    for (const char* c : {"run_id", "study", "precision", "status", "wall_seconds", "peak_bytes",
                          "activation_peak_bytes", "final_train_loss", "test_accuracy", "message"}) {
      if (position(c) < t.columns.size()) chosen.push_back(position(c));
    }
  } else {
    for (const auto& c : columns) {
      if (position(c) == t.columns.size()) {
        std::string valid;
        for (const auto& v : t.columns) valid += (valid.empty() ? "" : ", ") + v;
        throw Error("unknown column '" + c + "'; valid columns: " + valid);
      }
      chosen.push_back(position(c));
    }
  }
  // One line per cell (messages may hold newlines); numbers right-aligned, text left-aligned.
  auto cell = [&](const std::vector<std::string>& row, std::size_t i) {
    std::string s = i < row.size() ? row[i] : "";
    std::replace(s.begin(), s.end(), '\n', ' ');
    std::replace(s.begin(), s.end(), '\t', ' ');
    return s;
  };
  auto is_number = [](const std::string& s) {
    if (s == "-") return true;
    char* end = nullptr;
    std::strtod(s.c_str(), &end);
    return !s.empty() && end && *end == '\0';
  };
  std::vector<std::size_t> width;
  std::vector<bool> right;
  for (std::size_t i : chosen) {
    std::size_t w = t.columns[i].size();
    bool numeric = !t.rows.empty();
    for (const auto& row : t.rows) {
      w = std::max(w, cell(row, i).size());
      numeric = numeric && is_number(cell(row, i));
    }
    width.push_back(w);
    right.push_back(numeric);
  }
  auto line = [&](auto&& text_of) {
    std::string out;
    for (std::size_t k = 0; k < chosen.size(); ++k) {
      const std::string s = text_of(chosen[k]);
      const std::string pad(width[k] - s.size(), ' ');
      out += (k ? "  " : "") + (right[k] ? pad + s : s + pad);
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line([&](std::size_t i) { return t.columns[i]; });
  for (const auto& row : t.rows) out += line([&](std::size_t i) { return cell(row, i); });
  return out;
}

}  // namespace lowmem
