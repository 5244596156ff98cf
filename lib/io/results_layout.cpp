// The results layout (declared in results_layout.hpp): run groups under /runs, written and read, and the
// /summary table, written after every append and read back.
#include "io/results_layout.hpp"

#include <hdf5_hl.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <tuple>

namespace lowmem::io_detail {

// ---- formats --------------------------------------------------------------------------------------------------

std::string file_format(const std::string& path, const H5::H5File& file) {
  if (!file.attrExists("format")) return "";
  const auto values = read_strings(file.openAttribute("format"));
  const std::string format = values.size() == 1 ? values[0] : "";
  if (format != kFormat && format != kFormat1)
    throw Error(path + " is a results file of format \"" + one_line(format.substr(0, 80)) + "\"; this lowmem reads \"" +
                kFormat + "\" and \"" + kFormat1 + "\" (was it written by a newer lowmem?)");
  return format;
}

void upgrade_format1(RunRecord& r) {
  const auto whole = [](const std::string& text, std::int64_t& v) {
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
    return error == std::errc() && end == text.data() + text.size();
  };
  std::int64_t v = 0;
  if (const auto it = r.labels.find("seed"); it != r.labels.end() && whole(it->second, v))
    r.scalars["seed"] = static_cast<double>(v), r.labels.erase(it);
  for (const char* name : {"threads", "sweep_index"})
    if (const auto it = r.attributes.find(name); it != r.attributes.end() && whole(it->second, v) && v >= 0)
      r.integers[name] = v, r.attributes.erase(it);
}

// ---- run groups ---------------------------------------------------------------------------------------------

std::int64_t read_index(const H5::Group& run) { return get_int(run, "index", kNoIndex); }

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
      if (checked_count(a) != 1) continue;  // not something append_run writes
      if (cls == H5T_INTEGER) {
        std::int64_t v = 0;
        a.read(H5::PredType::NATIVE_INT64, &v);
        r.integers[name] = v;
        continue;
      }
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
  // lowmem nests three deep (memory/timeline/events); a bound keeps a hostile chain of groups from exhausting
  // the stack or the memory of the keys.
  constexpr std::ptrdiff_t kMaxDepth = 32;
  if (std::count(prefix.begin(), prefix.end(), '/') >= kMaxDepth)
    throw InFileError(g.getObjName() + ": groups nested more than " + std::to_string(kMaxDepth) +
                      " deep in a run; a lowmem results file nests 3");
  for (const auto& [name, kind] : children(g)) {
    const std::string key = prefix.empty() ? name : prefix + "/" + name;
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
      a.values.resize(checked_count(d));
      if (!a.values.empty()) read_dataset(d, a.values.data(), H5::PredType::NATIVE_DOUBLE);
      r.arrays[key] = std::move(a);
    }
  }
}

namespace {

// The curves' step axes as HDF5 dimension scales (h5py: dset.dims[0][0]): curves/step for the curves with one
// value per step, curves/test_step for those with one per evaluation (told apart by length; the step's when both
// fit).
void attach_step_scales(const H5::Group& g, const RunRecord& run) {
  const auto length = [&](const std::string& key) {
    const auto it = run.arrays.find(key);
    return it == run.arrays.end() || it->second.shape.size() > 1 ? std::size_t{0} : it->second.values.size();
  };
  const std::size_t steps = length("curves/step"), evaluations = length("curves/test_step");
  if (steps == 0 && evaluations == 0) return;
  const H5::Group curves = g.openGroup("curves");
  if (steps) H5DSset_scale(curves.openDataSet("step").getId(), "step");
  if (evaluations) H5DSset_scale(curves.openDataSet("test_step").getId(), "step of each evaluation");
  for (const auto& [key, a] : run.arrays) {
    if (key.rfind("curves/", 0) != 0 || key == "curves/step" || key == "curves/test_step") continue;
    const std::size_t n = length(key);
    const char* scale = n == 0 ? nullptr : n == steps ? "step" : n == evaluations ? "test_step" : nullptr;
    if (!scale) continue;
    const H5::DataSet d = curves.openDataSet(key.substr(7)), s = curves.openDataSet(scale);
    if (H5DSattach_scale(d.getId(), s.getId(), 0) < 0) throw H5::DataSetIException("H5DSattach_scale", key);
  }
}

}  // namespace

RunRecord read_whole_run(const H5::Group& g, const std::string& run_id) {
  RunRecord r = read_run_attributes(g, run_id);
  read_datasets(g, "", r);
  return r;
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
  for (const auto& [k, v] : run.integers) set_int(g, k.c_str(), v);

  H5::LinkCreatPropList lcpl;  // "curves/train_loss" creates the group "curves" on the way
  lcpl.setCreateIntermediateGroup(true);
  for (const auto& [key, a] : run.arrays) {
    std::vector<hsize_t> dims(a.shape.begin(), a.shape.end());
    if (dims.empty()) dims.push_back(a.values.size());
    H5::DataSet d = g.createDataSet(key, H5::PredType::IEEE_F64LE,
                                    H5::DataSpace(static_cast<int>(dims.size()), dims.data()),
                                    H5::DSetCreatPropList::DEFAULT, H5::DSetAccPropList::DEFAULT, lcpl);
    if (!a.values.empty()) write_dataset(d, a.values.data(), H5::PredType::NATIVE_DOUBLE);
    const std::string unit = unit_of(key.substr(key.rfind('/') + 1));
    if (!unit.empty()) put_fixed_strings(d, "units", {unit});
  }
  for (const auto& [key, values] : run.string_arrays) write_strings(g, key, values, lcpl);
  attach_step_scales(g, run);
}

RunRecord without_datasets(RunRecord run) {
  run.arrays.clear();
  run.string_arrays.clear();
  return run;
}

void sort_rows(std::vector<Row>& rows) {
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.index < b.index; });
}

std::vector<Row> read_rows(const H5::Group& runs) {
  std::vector<Row> rows;
  for (const auto& [name, type] : children(runs)) {
    if (type != H5O_TYPE_GROUP) continue;
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
  std::vector<std::string> units;
  for (const auto& c : cols) units.push_back(unit_of(c.name));
  put_fixed_strings(d, "units", units);
}

Table read_table(const std::string& path, const H5::DataSet& d) {
  if (d.getTypeClass() != H5T_COMPOUND) throw Error(path + ": /summary is not a table (compound dataset)");
  const H5::CompType file_type = d.getCompType();
  // Memory layout of our own: strings as stored (fixed or variable length), every number as double.
  struct Column {
    std::string name;
    enum { kFixed, kVariable, kNumber } kind;
    std::size_t size, offset;
    H5::StrType str;  // a string column's type in the file
  };
  std::vector<Column> cols;
  std::size_t row_size = 0;
  for (unsigned m = 0; m < static_cast<unsigned>(file_type.getNmembers()); ++m) {
    const H5T_class_t cls = file_type.getMemberClass(m);
    Column c{file_type.getMemberName(m), Column::kNumber, sizeof(double), 0, {}};
    if (cls == H5T_STRING) {
      const H5::StrType s = file_type.getMemberStrType(m);
      c.kind = s.isVariableStr() ? Column::kVariable : Column::kFixed;
      c.size = s.isVariableStr() ? sizeof(char*) : s.getSize();
      c.str = s;
    } else if (cls != H5T_FLOAT && cls != H5T_INTEGER) {
      continue;  // nothing printable
    }
    c.offset = row_size;
    row_size += c.size;
    cols.push_back(c);
  }
  Table t;
  for (const auto& c : cols) t.columns.push_back(c.name), t.numeric.push_back(c.kind == Column::kNumber);
  const H5::DataSpace space = d.getSpace();
  const std::size_t n = checked_count(d);
  if (n == 0 || cols.empty()) return t;
  H5::CompType mem(row_size);
  for (const auto& c : cols) {
    if (c.kind == Column::kNumber) {
      mem.insertMember(c.name, c.offset, H5::PredType::NATIVE_DOUBLE);
      continue;
    }
    if (c.kind == Column::kFixed) {  // as stored: a conversion to NUL-terminated would cut a full-width string
      mem.insertMember(c.name, c.offset, c.str);
      continue;
    }
    H5::StrType s(H5::PredType::C_S1, H5T_VARIABLE);
    s.setCset(c.str.getCset());  // must match the file's: HDF5 converts no character sets
    mem.insertMember(c.name, c.offset, s);
  }
  std::vector<char> buf(n * row_size, 0);
  read_dataset(d, buf.data(), mem);
  for (std::size_t i = 0; i < n; ++i) {
    auto& row = t.rows.emplace_back();
    for (const auto& c : cols) {
      const char* cell = buf.data() + i * row_size + c.offset;
      if (c.kind == Column::kFixed) {
        row.emplace_back(fixed_text(cell, c.size, c.str.getStrpad()));
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

void add_rows(Table& all, const std::vector<Table>& later) {
  using Cell = std::variant<std::string, double>;
  const auto blank = [](bool numeric) { return numeric ? Cell(std::nan("")) : Cell(std::string()); };
  const auto id_at = [](const Table& t) {
    return static_cast<std::size_t>(std::find(t.columns.begin(), t.columns.end(), "run_id") - t.columns.begin());
  };
  const std::size_t all_id = id_at(all);
  std::map<std::string, std::size_t> row_of;  // run id -> row of all
  for (std::size_t r = 0; r < all.rows.size() && all_id < all.columns.size(); ++r)
    if (const auto* id = std::get_if<std::string>(&all.rows[r][all_id])) row_of[*id] = r;
  for (const Table& part : later) {
    std::vector<std::size_t> to;  // where each of part's columns goes in all
    for (std::size_t c = 0; c < part.columns.size(); ++c) {
      const auto it = std::find(all.columns.begin(), all.columns.end(), part.columns[c]);
      to.push_back(static_cast<std::size_t>(it - all.columns.begin()));
      if (it != all.columns.end()) continue;
      all.columns.push_back(part.columns[c]);
      all.numeric.push_back(part.numeric[c]);
      for (auto& row : all.rows) row.push_back(blank(part.numeric[c]));
    }
    const std::size_t part_id = id_at(part);
    for (const auto& cells : part.rows) {
      std::vector<Cell> row;
      for (std::size_t c = 0; c < all.columns.size(); ++c) row.push_back(blank(all.numeric[c]));
      for (std::size_t c = 0; c < cells.size(); ++c) row[to[c]] = cells[c];
      const auto* id = part_id < cells.size() ? std::get_if<std::string>(&cells[part_id]) : nullptr;
      const auto same = id ? row_of.find(*id) : row_of.end();
      if (same != row_of.end()) {
        all.rows[same->second] = std::move(row);
        continue;
      }
      if (id) row_of[*id] = all.rows.size();
      all.rows.push_back(std::move(row));
    }
  }
  if (later.empty()) return;
  // The columns in write_summary's order, so that the set reads as it will once folded into one file.
  std::vector<std::size_t> order(all.columns.size());
  for (std::size_t c = 0; c < order.size(); ++c) order[c] = c;
  const auto rank = [&](std::size_t c) {
    const std::string& name = all.columns[c];
    const int fixed = name == "run_id" ? 0 : name == "status" ? 1 : name == "message" ? 2 : 3;
    return std::make_tuple(fixed, all.numeric[c], name);
  };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return rank(a) < rank(b); });
  Table sorted;
  for (std::size_t c : order) sorted.columns.push_back(all.columns[c]), sorted.numeric.push_back(all.numeric[c]);
  for (const auto& row : all.rows) {
    auto& out = sorted.rows.emplace_back();
    for (std::size_t c : order) out.push_back(row[c]);
  }
  all = std::move(sorted);
}

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

}  // namespace lowmem::io_detail

namespace lowmem {

std::string unit_of(const std::string& name) {
  const auto ends = [&](const std::string& tail) {
    return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  if (ends("bytes")) return name.rfind("pixel_", 0) == 0 ? "bytes/pixel" : "bytes";
  if (ends("seconds")) return "s";
  return "";
}

}  // namespace lowmem
