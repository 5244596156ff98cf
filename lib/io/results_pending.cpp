// Pending segments (declared in results_pending.hpp): their names, and the ones readers include.
#include "io/results_pending.hpp"

#include <algorithm>
#include <cstdio>

namespace lowmem::io_detail {

std::string pending_dir(const std::string& path) { return path + ".pending"; }

std::string segment_path(const std::string& path, std::int64_t number) {
  char name[32];
  std::snprintf(name, sizeof name, "%08lld.h5", static_cast<long long>(number));
  return (fs::path(pending_dir(path)) / name).string();
}

std::int64_t segment_number(const std::string& name) {
  // At least 8 digits, then ".h5": temporary files (".00000001.h5.partial-<pid>") and anything else are not.
  if (name.size() < 11 || name.compare(name.size() - 3, 3, ".h5") != 0) return -1;
  const std::string digits = name.substr(0, name.size() - 3);
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

std::vector<std::int64_t> segment_numbers(const std::string& path) {
  std::vector<std::int64_t> numbers;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(pending_dir(path), ec))
    if (const std::int64_t n = segment_number(entry.path().filename().string()); n >= 0) numbers.push_back(n);
  std::sort(numbers.begin(), numbers.end());
  return numbers;
}

namespace {

std::string string_attribute(const H5::H5Object& obj, const char* name) {
  if (!obj.attrExists(name)) return "";
  const auto values = read_strings(obj.openAttribute(name));
  return values.size() == 1 ? values[0] : "";
}

}  // namespace

void for_each_segment(const std::string& path, const H5::H5File& main, const std::function<bool(const Segment&)>& f,
                      bool newest_first) {
  const std::string id = string_attribute(main, kFileIdAttr);
  if (id.empty()) return;  // a file written before segments existed
  const std::int64_t folded = get_int(main, kFoldedAttr);
  std::vector<std::int64_t> numbers = segment_numbers(path);
  if (newest_first) std::reverse(numbers.begin(), numbers.end());
  for (const std::int64_t n : numbers) {
    if (n <= folded) continue;  // folded in already; left by a writer killed before it removed them
    const std::string file = segment_path(path, n);
    H5::H5File h5;
    try {
      h5 = H5::H5File(file, H5F_ACC_RDONLY);
    } catch (const H5::Exception&) {
      throw InFileError("pending segment " + file + " is corrupt or unreadable (HDF5: " + g_hdf5_reason +
                        "); move it away to read the rest");
    }
    if (string_attribute(h5, kFileIdAttr) != id) continue;  // another file's, left behind under this name
    if (!f(Segment{n, file, std::move(h5)})) return;
  }
}

}  // namespace lowmem::io_detail
