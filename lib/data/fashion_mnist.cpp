// Fashion-MNIST from IDX files (gzip or plain). IDX: big-endian int32 magic 0x00000800 | ndims (0x803 images,
// 0x801 labels), then ndims big-endian int32 dims, then uint8 values.
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "data/dataset.hpp"
#include "numerics/error.hpp"

namespace lowmem {
namespace {

namespace fs = std::filesystem;

const char* const kPackageHint =
    "(Debian's package dataset-fashion-mnist provides /usr/share/datasets/fashion-mnist)";

// An open IDX file. gzread also reads uncompressed files transparently, so one reader serves both forms.
class IdxReader {
 public:
  explicit IdxReader(std::string path) : path_(std::move(path)), f_(gzopen(path_.c_str(), "rb"), &gzclose) {
    if (!f_) throw Error("fashion-mnist: cannot open " + path_);
    gzbuffer(f_.get(), 1 << 18);
  }
  const std::string& path() const { return path_; }

  // Reads exactly n bytes or throws, naming the file; `what` says which part of the file was being read.
  std::vector<unsigned char> read(std::int64_t n, const char* what) {
    std::vector<unsigned char> buf;
    // Grow in chunks instead of trusting n up front: a corrupt header must not trigger a huge allocation.
    constexpr std::int64_t kChunk = 1 << 22;
    while (static_cast<std::int64_t>(buf.size()) < n) {
      const auto have = static_cast<std::int64_t>(buf.size());
      const auto want = std::min(kChunk, n - have);
      buf.resize(have + want);
      const int got = gzread(f_.get(), buf.data() + have, static_cast<unsigned>(want));
      int err = Z_OK;
      const char* msg = gzerror(f_.get(), &err);
      if (got < 0 || (err != Z_OK && err != Z_BUF_ERROR))
        throw Error("fashion-mnist: " + path_ + ": corrupt gzip data while reading the " + what + ": " + msg);
      buf.resize(have + got);
      if (got < want) {  // end of file (Z_BUF_ERROR = gzip stream cut short)
        throw Error("fashion-mnist: " + path_ + ": truncated: expected " + std::to_string(n) + " bytes, got " +
                    std::to_string(buf.size()) + " (" + what + ")" +
                    (err == Z_BUF_ERROR ? std::string(", gzip stream ends early") : std::string()));
      }
    }
    return buf;
  }

  // Reads the magic number and the dimensions; checks the magic and that every dimension is positive.
  std::vector<std::int64_t> header(std::uint32_t magic, int ndims) {
    const auto b = read(4 * (1 + ndims), "header");
    auto be32 = [&](int i) {
      return std::uint32_t(b[4 * i]) << 24 | std::uint32_t(b[4 * i + 1]) << 16 | std::uint32_t(b[4 * i + 2]) << 8 |
             std::uint32_t(b[4 * i + 3]);
    };
    if (be32(0) != magic) {
      char got[16], want[16];
      std::snprintf(got, sizeof got, "0x%08x", be32(0));
      std::snprintf(want, sizeof want, "0x%08x", magic);
      throw Error("fashion-mnist: " + path_ + ": bad magic number " + got + ", expected " + want);
    }
    std::vector<std::int64_t> dims;
    for (int i = 1; i <= ndims; ++i) {
      const auto d = static_cast<std::int32_t>(be32(i));
      if (d <= 0 || (i > 1 && d > 65536))
        throw Error("fashion-mnist: " + path_ + ": dimension " + std::to_string(i - 1) + " is " + std::to_string(d) +
                    ", expected a positive size");
      dims.push_back(d);
    }
    return dims;
  }

 private:
  std::string path_;
  std::unique_ptr<gzFile_s, int (*)(gzFile)> f_;
};

// Prefers name.gz, falls back to the uncompressed name.
std::string find_file(const fs::path& dir, const std::string& name) {
  for (const auto& p : {dir / (name + ".gz"), dir / name})
    if (fs::is_regular_file(p)) return p.string();
  throw Error("fashion-mnist: neither " + (dir / (name + ".gz")).string() + " nor " + (dir / name).string() +
              " exists " + kPackageHint);
}

}  // namespace

Dataset load_fashion_mnist(const std::string& dir, bool train, std::int64_t limit) {
  if (limit < 0) throw Error("fashion-mnist: limit is " + std::to_string(limit) + ", expected >= 0 (0 = all)");
  if (!fs::is_directory(dir)) throw Error("fashion-mnist: directory " + dir + " not found " + kPackageHint);
  const std::string prefix = train ? "train" : "t10k";
  IdxReader images(find_file(dir, prefix + "-images-idx3-ubyte"));
  IdxReader labels(find_file(dir, prefix + "-labels-idx1-ubyte"));

  const auto idims = images.header(0x00000803, 3);  // (N, H, W)
  const auto ldims = labels.header(0x00000801, 1);  // (N)
  if (idims[0] != ldims[0])
    throw Error("fashion-mnist: " + images.path() + " holds " + std::to_string(idims[0]) + " images but " +
                labels.path() + " holds " + std::to_string(ldims[0]) + " labels; expected equal counts");

  Dataset d;
  d.source = "fashion-mnist " + std::string(train ? "train" : "test") + " (" + dir + ")";
  d.count = limit > 0 ? std::min(limit, idims[0]) : idims[0];
  d.channels = 1;
  d.height = idims[1];
  d.width = idims[2];
  d.classes = 10;

  // Only the first d.count examples are read: a limit makes small experiments start fast.
  const auto pixels = images.read(d.count * d.image_size(), "pixels");
  d.images.resize(pixels.size());
  std::transform(pixels.begin(), pixels.end(), d.images.begin(), [](unsigned char v) { return v / 255.0f; });

  const auto raw = labels.read(d.count, "labels");
  d.labels.resize(raw.size());
  for (std::int64_t i = 0; i < d.count; ++i) {
    if (raw[i] >= d.classes)
      throw Error("fashion-mnist: " + labels.path() + ": label " + std::to_string(raw[i]) + " at index " +
                  std::to_string(i) + ", expected 0..9");
    d.labels[i] = raw[i];
  }
  return d;
}

}  // namespace lowmem
