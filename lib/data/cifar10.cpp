// CIFAR-10, binary version: each file is a sequence of 3073-byte records, 1 label byte then 3072 pixel bytes
// (R plane, G plane, B plane, each 32x32 row-major), which is already the CHW layout we store.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "data/dataset.hpp"
#include "numerics/error.hpp"

namespace lowmem {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kPixels = 3 * 32 * 32;
constexpr std::int64_t kRecord = 1 + kPixels;

const char* const kLayoutHint =
    "(expected the CIFAR-10 binary version: data_batch_1.bin..data_batch_5.bin and test_batch.bin)";

// Appends up to `want` records of `path` to d; returns how many were appended.
std::int64_t append_file(Dataset& d, const fs::path& path, std::int64_t want) {
  if (!fs::is_regular_file(path)) throw Error("cifar-10: file " + path.string() + " not found " + kLayoutHint);
  const auto size = static_cast<std::int64_t>(fs::file_size(path));
  if (size % kRecord != 0)
    throw Error("cifar-10: " + path.string() + " has " + std::to_string(size) +
                " bytes, expected a multiple of 3073 (1 label byte + 3072 pixel bytes per record)");
  const std::int64_t n = std::min(want, size / kRecord);

  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> buf(n * kRecord);
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  if (in.gcount() != static_cast<std::streamsize>(buf.size()))
    throw Error("cifar-10: " + path.string() + ": truncated: expected " + std::to_string(buf.size()) +
                " bytes, got " + std::to_string(in.gcount()));

  d.images.resize((d.count + n) * kPixels);
  d.labels.resize(d.count + n);
  for (std::int64_t r = 0; r < n; ++r) {
    const unsigned char* rec = buf.data() + r * kRecord;
    if (rec[0] >= d.classes)
      throw Error("cifar-10: " + path.string() + ": label " + std::to_string(rec[0]) + " in record " +
                  std::to_string(r) + ", expected 0..9");
    d.labels[d.count + r] = rec[0];
    std::transform(rec + 1, rec + kRecord, d.images.begin() + (d.count + r) * kPixels,
                   [](unsigned char v) { return v / 255.0f; });
  }
  d.count += n;
  return n;
}

}  // namespace

Dataset load_cifar10(const std::string& dir, bool train, std::int64_t limit) {
  if (limit < 0) throw Error("cifar-10: limit is " + std::to_string(limit) + ", expected >= 0 (0 = all)");
  if (!fs::is_directory(dir)) throw Error("cifar-10: directory " + dir + " not found " + kLayoutHint);
  Dataset d;
  d.source = "cifar-10 " + std::string(train ? "train" : "test") + " (" + dir + ")";
  d.channels = 3;
  d.height = d.width = 32;
  d.classes = 10;

  std::vector<std::string> files;
  if (train)
    for (int b = 1; b <= 5; ++b) files.push_back("data_batch_" + std::to_string(b) + ".bin");
  else
    files.push_back("test_batch.bin");

  const std::int64_t target = limit > 0 ? limit : INT64_MAX;
  // Batches are opened only while the limit is not yet reached, so a small limit needs only data_batch_1.bin.
  for (const auto& f : files) {
    if (d.count >= target) break;
    append_file(d, fs::path(dir) / f, target - d.count);
  }
  return d;
}

}  // namespace lowmem
