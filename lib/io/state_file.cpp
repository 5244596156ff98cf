// A run's state saved in flight, as an HDF5 file (layout in state_file.hpp).
#include "io/state_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include "io/hdf5_util.hpp"

namespace lowmem {
using namespace io_detail;

namespace {
constexpr const char* kStateFormat = "lowmem state 1";
}  // namespace

void write_state_file(const std::string& path, const SavedState& state) {
  with_hdf5(path, "saving the run's state", [&] {
    const fs::path dir = fs::path(path).parent_path();
    if (!dir.empty() && !fs::is_directory(dir)) {
      fs::create_directories(dir);
      fsync_path(dir.parent_path().empty() ? "." : dir.parent_path().string(), O_RDONLY | O_DIRECTORY);
    }
    const std::string tmp = path + ".partial-" + std::to_string(::getpid());
    const RemoveOnExit cleanup{tmp};
    {
      H5::H5File out(tmp, H5F_ACC_TRUNC);
      put_string(out, "format", kStateFormat);
      for (const auto& [name, value] : state.attributes) put_string(out, name, value);
      std::vector<std::string> names;
      const H5::Group blocks = out.createGroup("blocks");
      for (const auto& [name, bytes] : state.blocks) {
        const hsize_t n = bytes.size();
        H5::DataSet d = blocks.createDataSet(std::to_string(names.size()), H5::PredType::STD_U8LE, H5::DataSpace(1, &n));
        if (n) write_dataset(d, bytes.data(), H5::PredType::NATIVE_UCHAR);
        names.push_back(name);
      }
      write_strings(out, "names", names, H5::LinkCreatPropList::DEFAULT);
      out.close();
    }
    publish(tmp, path);
  });
}

SavedState read_state_file(const std::string& path) {
  return read_file(path, "reading the run's saved state", [&](const H5::H5File& file) {
    SavedState state;
    const auto format = file.attrExists("format") ? read_strings(file.openAttribute("format")) : std::vector<std::string>{};
    if (format.size() != 1 || format[0] != kStateFormat)
      throw InFileError("not a lowmem saved state (format \"" + (format.empty() ? "" : format[0]) + "\", expected \"" +
                        kStateFormat + "\")");
    for (const std::string& name : attribute_names(file))
      if (name != "format" && file.openAttribute(name).getTypeClass() == H5T_STRING) {
        const auto values = read_strings(file.openAttribute(name));
        if (values.size() == 1) state.attributes[name] = values[0];
      }
    const std::vector<std::string> names = read_strings(file.openDataSet("names"));
    const H5::Group blocks = file.openGroup("blocks");
    for (std::size_t k = 0; k < names.size(); ++k) {
      const H5::DataSet d = blocks.openDataSet(std::to_string(k));
      std::vector<unsigned char>& bytes = state.blocks[names[k]];
      bytes.resize(checked_count(d));
      if (!bytes.empty()) read_dataset(d, bytes.data(), H5::PredType::NATIVE_UCHAR);
    }
    return state;
  });
}

}  // namespace lowmem
