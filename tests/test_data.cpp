// Tests for lib/data: real Fashion-MNIST, loaders against files written here (IDX gz, CIFAR-10 binary), the
// synthetic set, normalisation, epoch order and batch augmentation.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>

#include "data/dataset.hpp"
#include "numerics/error.hpp"

namespace fs = std::filesystem;
using namespace lowmem;

namespace {

const std::string kFashionDir = "/usr/share/datasets/fashion-mnist";

// A unique temp directory, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;  // only for a unique name, never for data
    path = fs::temp_directory_path() / ("lowmem_test_data_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

void put_be32(std::vector<unsigned char>& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(v >> s));
}

std::vector<unsigned char> idx_bytes(std::uint32_t magic, const std::vector<std::uint32_t>& dims,
                                     const std::vector<unsigned char>& data) {
  std::vector<unsigned char> b;
  put_be32(b, magic);
  for (auto d : dims) put_be32(b, d);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

void write_gz(const fs::path& p, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

void write_raw(const fs::path& p, const std::vector<unsigned char>& bytes) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// A tiny IDX set: n images of h x w with pixel (i, y, x) = (i*h*w + y*w + x) % 256, label i % 10.
struct TinyIdx {
  int n = 3, h = 4, w = 5;
  std::vector<unsigned char> pixels, labels;
  TinyIdx() {
    for (int i = 0; i < n * h * w; ++i) pixels.push_back(static_cast<unsigned char>((i * 7) % 256));
    for (int i = 0; i < n; ++i) labels.push_back(static_cast<unsigned char>((i * 3) % 10));
  }
  std::vector<unsigned char> image_file() const { return idx_bytes(0x803, {3, 4, 5}, pixels); }
  std::vector<unsigned char> label_file() const { return idx_bytes(0x801, {3}, labels); }
};

// Runs f, expects lowmem::Error, and returns its message (empty if nothing was thrown).
std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected lowmem::Error";
  return "";
}

}  // namespace

// ---- Real Fashion-MNIST (Debian package dataset-fashion-mnist) ----

class FashionMnistReal : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { train_ = new Dataset(load_fashion_mnist(kFashionDir, true, 0)); }
  static void TearDownTestSuite() {
    delete train_;
    train_ = nullptr;
  }
  static Dataset* train_;
};
Dataset* FashionMnistReal::train_ = nullptr;

TEST_F(FashionMnistReal, TrainShapeAndCount) {
  const Dataset& d = *train_;
  EXPECT_EQ(d.count, 60000);
  EXPECT_EQ(d.channels, 1);
  EXPECT_EQ(d.height, 28);
  EXPECT_EQ(d.width, 28);
  EXPECT_EQ(d.classes, 10);
  EXPECT_EQ(d.images.size(), 60000u * 784u);
  EXPECT_EQ(d.labels.size(), 60000u);
  EXPECT_NE(d.source.find(kFashionDir), std::string::npos);
}

TEST_F(FashionMnistReal, TrainLabelHistogramIs6000PerClass) {
  std::array<int, 10> hist{};
  for (auto l : train_->labels) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, 10);
    ++hist[l];
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(hist[c], 6000) << "class " << c;
}

// Values read independently with python3 (gzip + numpy) from the package's files.
TEST_F(FashionMnistReal, KnownValues) {
  const Dataset& d = *train_;
  EXPECT_EQ(std::vector<std::int32_t>(d.labels.begin(), d.labels.begin() + 5), (std::vector<std::int32_t>{9, 0, 0, 3, 0}));
  double sum = 0;  // first image: pixel sum 76247 (in 0..255 units), maximum 255 at flat index 417
  for (int j = 0; j < 784; ++j) sum += d.images[j] * 255.0;
  EXPECT_NEAR(sum, 76247.0, 1e-2);
  EXPECT_EQ(std::max_element(d.images.begin(), d.images.begin() + 784) - d.images.begin(), 417);
  EXPECT_FLOAT_EQ(d.images[417], 1.0f);
  const auto [lo, hi] = std::minmax_element(d.images.begin(), d.images.end());
  EXPECT_EQ(*lo, 0.0f);
  EXPECT_EQ(*hi, 1.0f);
  // Whole-set statistics: numpy gives mean 0.2860406, std 0.3530242.
  const ChannelStats s = channel_stats(d);
  ASSERT_EQ(s.mean.size(), 1u);
  EXPECT_NEAR(s.mean[0], 0.2860406, 1e-6);
  EXPECT_NEAR(s.stddev[0], 0.3530242, 1e-6);
}

TEST(FashionMnist, TestSetAndLimit) {
  const Dataset t = load_fashion_mnist(kFashionDir, false, 0);
  EXPECT_EQ(t.count, 10000);
  EXPECT_EQ(t.labels.size(), 10000u);
  std::array<int, 10> hist{};
  for (auto l : t.labels) ++hist.at(l);
  for (int c = 0; c < 10; ++c) EXPECT_EQ(hist[c], 1000) << "class " << c;
  EXPECT_EQ(std::vector<std::int32_t>(t.labels.begin(), t.labels.begin() + 5), (std::vector<std::int32_t>{9, 2, 1, 1, 6}));

  const Dataset small = load_fashion_mnist(kFashionDir, false, 7);
  EXPECT_EQ(small.count, 7);
  EXPECT_EQ(small.images.size(), 7u * 784u);
  EXPECT_TRUE(std::equal(small.labels.begin(), small.labels.end(), t.labels.begin()));
  EXPECT_TRUE(std::equal(small.images.begin(), small.images.end(), t.images.begin()));
  EXPECT_EQ(load_fashion_mnist(kFashionDir, false, 20000).count, 10000);  // a limit above the size keeps all
}

// ---- IDX files written here ----

TEST(FashionMnistFiles, GzRoundTrip) {
  TempDir dir;
  TinyIdx t;
  write_gz(dir.path / "t10k-images-idx3-ubyte.gz", t.image_file());
  write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", t.label_file());
  const Dataset d = load_fashion_mnist(dir.str(), false, 0);
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.channels, 1);
  EXPECT_EQ(d.height, 4);
  EXPECT_EQ(d.width, 5);
  ASSERT_EQ(d.images.size(), t.pixels.size());
  for (size_t i = 0; i < t.pixels.size(); ++i) ASSERT_FLOAT_EQ(d.images[i], t.pixels[i] / 255.0f) << i;
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{0, 3, 6}));

  const Dataset two = load_fashion_mnist(dir.str(), false, 2);
  EXPECT_EQ(two.count, 2);
  EXPECT_EQ(two.images.size(), 40u);
  EXPECT_EQ(two.labels, (std::vector<std::int32_t>{0, 3}));
}

TEST(FashionMnistFiles, UncompressedFallback) {
  TempDir dir;
  TinyIdx t;
  write_raw(dir.path / "train-images-idx3-ubyte", t.image_file());
  write_raw(dir.path / "train-labels-idx1-ubyte", t.label_file());
  const Dataset d = load_fashion_mnist(dir.str(), true, 0);
  EXPECT_EQ(d.count, 3);
  EXPECT_FLOAT_EQ(d.images[59], t.pixels[59] / 255.0f);
  EXPECT_EQ(d.labels[2], 6);
}

TEST(FashionMnistFiles, TruncatedImageFile) {
  TempDir dir;
  TinyIdx t;
  auto img = t.image_file();
  img.resize(img.size() - 25);  // header says 3 images of 20 pixels: 60 expected, 35 present
  write_gz(dir.path / "t10k-images-idx3-ubyte.gz", img);
  write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", t.label_file());
  const std::string msg = error_message([&] { load_fashion_mnist(dir.str(), false, 0); });
  EXPECT_NE(msg.find("truncated: expected 60 bytes, got 35"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t10k-images-idx3-ubyte.gz"), std::string::npos) << msg;
  // The first two images are complete, so a limit that needs only them loads.
  EXPECT_EQ(load_fashion_mnist(dir.str(), false, 1).count, 1);
}

TEST(FashionMnistFiles, TruncatedGzipStream) {
  TempDir dir;
  TinyIdx t;
  write_gz(dir.path / "t10k-images-idx3-ubyte.gz", t.image_file());
  write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", t.label_file());
  const auto p = dir.path / "t10k-images-idx3-ubyte.gz";
  fs::resize_file(p, fs::file_size(p) / 2);  // cut the compressed stream itself
  const std::string msg = error_message([&] { load_fashion_mnist(dir.str(), false, 0); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t10k-images-idx3-ubyte.gz"), std::string::npos) << msg;
}

TEST(FashionMnistFiles, CorruptGzipData) {
  TempDir dir;
  TinyIdx t;
  write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", t.label_file());
  const auto p = dir.path / "t10k-images-idx3-ubyte.gz";
  write_gz(p, t.image_file());
  // Overwrite the deflate stream (after the 10-byte gzip header) with bytes that are not valid deflate.
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(10);
  const char junk[] = {'\xff', '\xff', '\xff', '\xff', '\xff', '\xff'};
  f.write(junk, sizeof junk);
  f.close();
  const std::string msg = error_message([&] { load_fashion_mnist(dir.str(), false, 0); });
  EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t10k-images-idx3-ubyte.gz"), std::string::npos) << msg;
}

TEST(FashionMnistFiles, BadMagic) {
  TempDir dir;
  TinyIdx t;
  write_gz(dir.path / "train-images-idx3-ubyte.gz", idx_bytes(0x801, {3, 4, 5}, t.pixels));  // label magic
  write_gz(dir.path / "train-labels-idx1-ubyte.gz", t.label_file());
  const std::string msg = error_message([&] { load_fashion_mnist(dir.str(), true, 0); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte.gz"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bad magic number 0x00000801, expected 0x00000803"), std::string::npos) << msg;
}

TEST(FashionMnistFiles, MissingDirAndFile) {
  const std::string msg = error_message([] { load_fashion_mnist("/nonexistent/lowmem-fashion", true, 0); });
  EXPECT_NE(msg.find("/nonexistent/lowmem-fashion"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dataset-fashion-mnist"), std::string::npos) << msg;

  TempDir dir;
  write_gz(dir.path / "train-images-idx3-ubyte.gz", TinyIdx().image_file());
  const std::string m2 = error_message([&] { load_fashion_mnist(dir.str(), true, 0); });
  EXPECT_NE(m2.find("train-labels-idx1-ubyte"), std::string::npos) << m2;
  EXPECT_NE(m2.find("dataset-fashion-mnist"), std::string::npos) << m2;
}

TEST(FashionMnistFiles, LabelCountMismatch) {
  TempDir dir;
  TinyIdx t;
  write_gz(dir.path / "train-images-idx3-ubyte.gz", t.image_file());
  write_gz(dir.path / "train-labels-idx1-ubyte.gz", idx_bytes(0x801, {2}, {1, 2}));
  const std::string msg = error_message([&] { load_fashion_mnist(dir.str(), true, 0); });
  EXPECT_NE(msg.find("3 images"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2 labels"), std::string::npos) << msg;
}

TEST(FashionMnistFiles, LabelOutOfRange) {
  TempDir dir;
  TinyIdx t;
  write_gz(dir.path / "train-images-idx3-ubyte.gz", t.image_file());
  write_gz(dir.path / "train-labels-idx1-ubyte.gz", idx_bytes(0x801, {3}, {1, 10, 2}));
  const std::string msg = error_message([&] { load_fashion_mnist(dir.str(), true, 0); });
  EXPECT_NE(msg.find("label 10 at index 1"), std::string::npos) << msg;
}

// ---- CIFAR-10 binary files written here ----

namespace {
// Record r: label (r % 10); pixel value of channel c, position p = (r + 3*c + p) % 256, so planes differ.
std::vector<unsigned char> cifar_records(int first, int n) {
  std::vector<unsigned char> b;
  for (int r = first; r < first + n; ++r) {
    b.push_back(static_cast<unsigned char>(r % 10));
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) b.push_back(static_cast<unsigned char>((r + 3 * c + p) % 256));
  }
  return b;
}
}  // namespace

TEST(Cifar10Files, RoundTripAndPlaneOrder) {
  TempDir dir;
  for (int b = 1; b <= 5; ++b) write_raw(dir.path / ("data_batch_" + std::to_string(b) + ".bin"), cifar_records((b - 1) * 2, 2));
  write_raw(dir.path / "test_batch.bin", cifar_records(100, 3));

  const Dataset tr = load_cifar10(dir.str(), true, 0);
  EXPECT_EQ(tr.count, 10);
  EXPECT_EQ(tr.channels, 3);
  EXPECT_EQ(tr.height, 32);
  EXPECT_EQ(tr.width, 32);
  EXPECT_EQ(tr.classes, 10);
  ASSERT_EQ(tr.images.size(), 10u * 3072u);
  EXPECT_EQ(tr.labels, (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  for (int r = 0; r < 10; ++r)
    for (int c = 0; c < 3; ++c)
      for (int p : {0, 33, 1023})  // NCHW: channel c of example r starts at (r*3 + c) * 1024
        ASSERT_FLOAT_EQ(tr.images[(r * 3 + c) * 1024 + p], ((r + 3 * c + p) % 256) / 255.0f) << r << " " << c << " " << p;
  // Plane order R, G, B: the green plane of example 0 starts with value 3, blue with 6.
  EXPECT_FLOAT_EQ(tr.images[1024], 3 / 255.0f);
  EXPECT_FLOAT_EQ(tr.images[2048], 6 / 255.0f);

  const Dataset te = load_cifar10(dir.str(), false, 0);
  EXPECT_EQ(te.count, 3);
  EXPECT_EQ(te.labels, (std::vector<std::int32_t>{0, 1, 2}));
  EXPECT_FLOAT_EQ(te.images[3072 + 1024 + 5], ((101 + 3 + 5) % 256) / 255.0f);
}

TEST(Cifar10Files, LimitReadsOnlyNeededBatches) {
  TempDir dir;
  write_raw(dir.path / "data_batch_1.bin", cifar_records(0, 2));
  write_raw(dir.path / "data_batch_2.bin", cifar_records(2, 2));
  const Dataset d = load_cifar10(dir.str(), true, 3);  // spans two batches; batches 3..5 are not needed
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{0, 1, 2}));
  EXPECT_FLOAT_EQ(d.images[2 * 3072 + 7], ((2 + 7) % 256) / 255.0f);
  // All of the training set needs all five batches.
  const std::string msg = error_message([&] { load_cifar10(dir.str(), true, 0); });
  EXPECT_NE(msg.find("data_batch_3.bin"), std::string::npos) << msg;
}

TEST(Cifar10Files, WrongSize) {
  TempDir dir;
  auto b = cifar_records(0, 2);
  b.pop_back();
  write_raw(dir.path / "test_batch.bin", b);
  const std::string msg = error_message([&] { load_cifar10(dir.str(), false, 0); });
  EXPECT_NE(msg.find("test_batch.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("6145 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("multiple of 3073"), std::string::npos) << msg;
}

TEST(Cifar10Files, MissingTestBatchAndDir) {
  TempDir dir;
  write_raw(dir.path / "data_batch_1.bin", cifar_records(0, 1));
  const std::string msg = error_message([&] { load_cifar10(dir.str(), false, 0); });
  EXPECT_NE(msg.find("test_batch.bin"), std::string::npos) << msg;
  const std::string m2 = error_message([] { load_cifar10("/nonexistent/lowmem-cifar", false, 0); });
  EXPECT_NE(m2.find("/nonexistent/lowmem-cifar"), std::string::npos) << m2;
  EXPECT_NE(m2.find("data_batch_1.bin"), std::string::npos) << m2;
}

TEST(Cifar10Files, LabelOutOfRange) {
  TempDir dir;
  auto b = cifar_records(0, 2);
  b[3073] = 11;  // label byte of record 1
  write_raw(dir.path / "test_batch.bin", b);
  const std::string msg = error_message([&] { load_cifar10(dir.str(), false, 0); });
  EXPECT_NE(msg.find("label 11 in record 1"), std::string::npos) << msg;
}

// ---- Synthetic ----

TEST(Synthetic, DeterministicAndSeedDependent) {
  SyntheticSpec spec;
  spec.count = 200;
  spec.channels = 2;
  spec.height = 6;
  spec.width = 5;
  spec.classes = 4;
  const Dataset a = make_synthetic(spec, 42, true), b = make_synthetic(spec, 42, true);
  const Dataset c = make_synthetic(spec, 43, true), t = make_synthetic(spec, 42, false);
  EXPECT_EQ(a.count, 200);
  EXPECT_EQ(a.image_size(), 60);
  ASSERT_EQ(a.images.size(), 200u * 60u);
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.images, c.images);
  EXPECT_NE(a.labels, c.labels);
  EXPECT_NE(a.images, t.images);  // train and test come from different streams
  std::array<int, 4> hist{};
  for (auto l : a.labels) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, 4);
    ++hist[l];
  }
  for (int h : hist) EXPECT_GT(h, 25);  // uniform labels: ~50 each
  for (float v : a.images) {
    ASSERT_GE(v, 0.0f);
    ASSERT_LE(v, 1.0f);
  }
}

TEST(Synthetic, LearnableFromSharedPrototypes) {
  // The class means estimated from train classify test far above chance (prototypes are shared).
  SyntheticSpec spec;
  spec.count = 500;
  const Dataset tr = make_synthetic(spec, 7, true), te = make_synthetic(spec, 7, false);
  const auto n = tr.image_size();
  std::vector<double> mean(10 * n, 0.0);
  std::vector<int> cnt(10, 0);
  for (std::int64_t i = 0; i < tr.count; ++i) {
    ++cnt[tr.labels[i]];
    for (std::int64_t j = 0; j < n; ++j) mean[tr.labels[i] * n + j] += tr.images[i * n + j];
  }
  for (int k = 0; k < 10; ++k)
    for (std::int64_t j = 0; j < n; ++j) mean[k * n + j] /= std::max(cnt[k], 1);
  int correct = 0;
  for (std::int64_t i = 0; i < te.count; ++i) {
    int best = -1;
    double best_d = 1e300;
    for (int k = 0; k < 10; ++k) {
      double dist = 0;
      for (std::int64_t j = 0; j < n; ++j) dist += std::pow(te.images[i * n + j] - mean[k * n + j], 2);
      if (dist < best_d) best_d = dist, best = k;
    }
    correct += best == te.labels[i];
  }
  EXPECT_GT(correct, 450);
}

TEST(Synthetic, RejectsBadSpec) {
  SyntheticSpec spec;
  spec.classes = 0;
  EXPECT_THROW(make_synthetic(spec, 1, true), Error);
}

// ---- Normalisation ----

TEST(Normalize, MeanZeroStdOnePerChannel) {
  SyntheticSpec spec;
  spec.count = 300;
  spec.channels = 3;
  spec.height = 8;
  spec.width = 8;
  Dataset d = make_synthetic(spec, 5, true);
  const ChannelStats before = channel_stats(d);
  ASSERT_EQ(before.mean.size(), 3u);
  for (int c = 0; c < 3; ++c) {
    EXPECT_GT(before.mean[c], 0.2);  // not already normalised
    EXPECT_LT(before.stddev[c], 0.6);
  }
  normalize(d, before);
  const ChannelStats after = channel_stats(d);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(after.mean[c], 0.0, 1e-6) << c;
    EXPECT_NEAR(after.stddev[c], 1.0, 1e-6) << c;
  }
}

TEST(Normalize, ChannelStatsHandComputed) {
  // 2 examples, 2 channels, 1x2: channel 0 values {0, 1, 1, 1}, channel 1 values {0.5 x4}.
  Dataset d;
  d.count = 2, d.channels = 2, d.height = 1, d.width = 2, d.classes = 2;
  d.images = {0, 1, 0.5f, 0.5f, 1, 1, 0.5f, 0.5f};
  d.labels = {0, 1};
  const ChannelStats s = channel_stats(d);
  EXPECT_DOUBLE_EQ(s.mean[0], 0.75);
  EXPECT_DOUBLE_EQ(s.stddev[0], std::sqrt(0.1875));
  EXPECT_DOUBLE_EQ(s.mean[1], 0.5);
  EXPECT_DOUBLE_EQ(s.stddev[1], 0.0);
  EXPECT_THROW(normalize(d, s), Error);  // channel 1 has zero stddev
  EXPECT_THROW(normalize(d, ChannelStats{{0.5}, {1.0}}), Error);  // one channel's stats for two channels
  normalize(d, ChannelStats{{0.75, 0.5}, {0.5, 2.0}});
  EXPECT_EQ(d.images, (std::vector<float>{-1.5f, 0.5f, 0, 0, 0.5f, 0.5f, 0, 0}));
}

// ---- Epoch order ----

TEST(EpochOrder, PermutationDeterministicAndEpochDependent) {
  const auto a = epoch_order(1000, 9, 0);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (std::int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(a, epoch_order(1000, 9, 0));
  EXPECT_NE(a, epoch_order(1000, 9, 1));
  EXPECT_NE(a, epoch_order(1000, 10, 0));
  int fixed = 0;  // a shuffle, not the identity: ~1 fixed point expected
  for (std::int64_t i = 0; i < 1000; ++i) fixed += a[i] == i;
  EXPECT_LT(fixed, 10);
  EXPECT_TRUE(epoch_order(0, 9, 0).empty());
  EXPECT_EQ(epoch_order(1, 9, 0), (std::vector<std::int64_t>{0}));
}

TEST(EpochOrder, MatchesFisherYatesWithStream1000PlusEpoch) {
  Rng rng(3, 1000 + 2);
  std::vector<std::int64_t> want{0, 1, 2, 3, 4, 5, 6, 7};
  for (std::int64_t i = 7; i > 0; --i) std::swap(want[i], want[rng.below(i + 1)]);
  EXPECT_EQ(epoch_order(8, 3, 2), want);
}

// ---- Batches and augmentation ----

namespace {
// 2 examples of 2 channels, 3 rows, 4 columns; value = 1 + example*100 + c*20 + y*4 + x (never 0, so padding shows).
Dataset grid_dataset() {
  Dataset d;
  d.count = 2, d.channels = 2, d.height = 3, d.width = 4, d.classes = 5;
  for (int i = 0; i < 2; ++i)
    for (int c = 0; c < 2; ++c)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x) d.images.push_back(static_cast<float>(1 + i * 100 + c * 20 + y * 4 + x));
  d.labels = {3, 4};
  return d;
}
float at(const Dataset& d, std::int64_t i, std::int64_t c, std::int64_t y, std::int64_t x) {
  return d.images[((i * d.channels + c) * d.height + y) * d.width + x];
}
}  // namespace

TEST(FillBatch, CopiesWithoutAugmentation) {
  const Dataset d = grid_dataset();
  const std::int64_t idx[] = {1, 0, 1};
  std::vector<float> out(3 * 24);
  std::vector<std::int32_t> lab(3);
  Rng rng(1);
  const Rng untouched = rng;
  fill_batch(d, idx, 3, Augment{}, rng, out.data(), lab.data());
  EXPECT_EQ(lab, (std::vector<std::int32_t>{4, 3, 4}));
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + 24, d.images.begin() + 24));
  EXPECT_TRUE(std::equal(out.begin() + 24, out.begin() + 48, d.images.begin()));
  Rng copy = untouched;
  EXPECT_EQ(rng.next_u64(), copy.next_u64());  // no augmentation draws nothing
  const std::int64_t bad[] = {2};
  EXPECT_THROW(fill_batch(d, bad, 1, Augment{}, rng, out.data(), lab.data()), Error);
}

TEST(FillBatch, FlipMirrorsRows) {
  const Dataset d = grid_dataset();
  const int n = 64;
  std::vector<std::int64_t> idx(n, 0);
  std::vector<float> out(n * 24);
  std::vector<std::int32_t> lab(n);
  Rng rng(11), replay(11);
  fill_batch(d, idx.data(), n, Augment{true, 0}, rng, out.data(), lab.data());
  int flipped = 0;
  for (int k = 0; k < n; ++k) {
    const bool flip = replay.below(2) == 1;  // the documented draw order
    flipped += flip;
    for (int c = 0; c < 2; ++c)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x)
          ASSERT_EQ(out[k * 24 + (c * 3 + y) * 4 + x], at(d, 0, c, y, flip ? 3 - x : x)) << k << c << y << x;
  }
  EXPECT_GT(flipped, 10);  // p = 0.5: both outcomes occur
  EXPECT_LT(flipped, n - 10);
}

TEST(FillBatch, CropShiftsContentAndPadsWithZeros) {
  const Dataset d = grid_dataset();
  const int n = 50, pad = 2;
  std::vector<std::int64_t> idx(n, 1);
  std::vector<float> out(n * 24);
  std::vector<std::int32_t> lab(n);
  Rng rng(5), replay(5);
  fill_batch(d, idx.data(), n, Augment{false, pad}, rng, out.data(), lab.data());
  std::set<std::pair<int, int>> offsets;
  for (int k = 0; k < n; ++k) {
    const int dy = static_cast<int>(replay.below(2 * pad + 1)) - pad;
    const int dx = static_cast<int>(replay.below(2 * pad + 1)) - pad;
    offsets.insert({dy, dx});
    for (int c = 0; c < 2; ++c)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x) {
          const int sy = y + dy, sx = x + dx;
          const bool inside = sy >= 0 && sy < 3 && sx >= 0 && sx < 4;
          ASSERT_EQ(out[k * 24 + (c * 3 + y) * 4 + x], inside ? at(d, 1, c, sy, sx) : 0.0f) << k << c << y << x;
        }
    EXPECT_EQ(lab[k], 4);
  }
  EXPECT_GT(offsets.size(), 10u);  // 25 possible offsets
  EXPECT_TRUE(offsets.count({1, -1}));
}

TEST(FillBatch, KnownShiftByHand) {
  // Find a seed whose first crop draw is (dy, dx) = (+1, -1) relative to centre, then check pixels by hand.
  const Dataset d = grid_dataset();
  std::uint64_t seed = 0;
  for (;; ++seed) {
    Rng r(seed);
    if (r.below(3) == 2 && r.below(3) == 0) break;  // pad 1: draws 2 and 0 mean dy = +1, dx = -1
  }
  Rng rng(seed);
  const std::int64_t idx[] = {0};
  std::vector<float> out(24);
  std::int32_t lab;
  fill_batch(d, idx, 1, Augment{false, 1}, rng, out.data(), &lab);
  // Output row y shows input row y+1, column x shows input column x-1: row 2 and column 0 are padding.
  EXPECT_EQ(out[0 * 4 + 0], 0.0f);
  EXPECT_EQ(out[0 * 4 + 1], at(d, 0, 0, 1, 0));  // = 5
  EXPECT_EQ(out[1 * 4 + 3], at(d, 0, 0, 2, 2));  // = 11
  EXPECT_EQ(out[2 * 4 + 2], 0.0f);
  EXPECT_EQ(out[12 + 0 * 4 + 1], 25.0f);  // channel 1, input (1, 0)
}

// ---- Text (data "text") ----

namespace {

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream(file, std::ios::binary) << bytes;
}

std::string thrown(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Text, ByteLevelTokensAreTheBytes) {
  TempDir dir;
  write_bytes(dir.path / "a.txt", std::string("ab\xC3\xA9", 4));
  const TextCorpus c = read_text((dir.path / "a.txt").string(), "byte");
  EXPECT_EQ(c.symbols.size(), 256u);
  EXPECT_EQ(c.tokens, (std::vector<std::int32_t>{'a', 'b', 0xC3, 0xA9}));
}

TEST(Text, CharLevelVocabularyIsTheCodePointsInOrder) {
  TempDir dir;
  write_bytes(dir.path / "a.txt", "b\xC3\xA9" "a\xE2\x82\xAC" "b");  // b, e-acute (U+E9), a, euro (U+20AC), b
  const TextCorpus c = read_text((dir.path / "a.txt").string(), "char");
  EXPECT_EQ(c.symbols, (std::vector<std::uint32_t>{'a', 'b', 0xE9, 0x20AC}));
  EXPECT_EQ(c.tokens, (std::vector<std::int32_t>{1, 2, 0, 3, 1}));
  EXPECT_EQ(text_vocabulary((dir.path / "a.txt").string(), "char"), 4);
}

TEST(Text, ADirectoryIsItsTextFilesInNameOrder) {
  TempDir dir;
  write_bytes(dir.path / "b", "cd");
  write_bytes(dir.path / "a", "ab");
  write_bytes(dir.path / "a.dat", std::string("\0\1x", 3));  // an index with NUL bytes: not text, skipped
  fs::create_symlink(dir.path / "a", dir.path / "a.u8");      // a second name for a: skipped
  const TextCorpus c = read_text(dir.str(), "byte");
  EXPECT_EQ(c.tokens, (std::vector<std::int32_t>{'a', 'b', 'c', 'd'}));
  EXPECT_NE(c.source.find("2 files"), std::string::npos) << c.source;
}

TEST(Text, BadInputIsOneLineNamingTheFile) {
  TempDir dir;
  write_bytes(dir.path / "bad.txt", "ok\xC3(");  // a lead byte followed by a non-continuation byte
  write_bytes(dir.path / "empty.txt", "");
  EXPECT_NE(thrown([&] { read_text((dir.path / "bad.txt").string(), "char"); }).find("bad.txt is not UTF-8 at byte 2"),
            std::string::npos);
  EXPECT_NO_THROW(read_text((dir.path / "bad.txt").string(), "byte"));  // any bytes are bytes
  EXPECT_NE(thrown([&] { read_text((dir.path / "empty.txt").string(), "byte"); }).find("has no text"), std::string::npos);
  EXPECT_NE(thrown([&] { read_text((dir.path / "missing").string(), "byte"); }).find("missing does not exist"),
            std::string::npos);
  write_bytes(dir.path / "over.txt", "\xF4\x90\x80\x80");  // past U+10FFFF
  EXPECT_NE(thrown([&] { read_text((dir.path / "over.txt").string(), "char"); }).find("not UTF-8 at byte 0"),
            std::string::npos);
}

// Windows of seq_len inputs, labelled by the next token at each position; the last `validation` held out.
TEST(Text, SplitIntoNextTokenWindows) {
  TextCorpus c;
  c.source = "test";
  c.symbols.resize(30);
  for (int i = 0; i < 30; ++i) c.tokens.push_back(i);  // token i at position i
  const auto [train, validation] = split_text(c, {4, 0.25, 0, 0});
  // 30 tokens, 7 held out (7.5 rounded down): train has tokens 0..22, and windows of 4 inputs and the token after:
  // (23 - 1) / 4 = 5 of them; validation (7 - 1) / 4 = 1.
  EXPECT_EQ(train.count, 5);
  EXPECT_EQ(validation.count, 1);
  EXPECT_TRUE(train.tokens);
  EXPECT_EQ(train.targets, 4);
  EXPECT_EQ(train.example_shape(), (std::vector<std::int64_t>{4}));
  EXPECT_EQ(train.classes, 30);
  for (std::int64_t k = 0; k < train.count; ++k)
    for (std::int64_t t = 0; t < 4; ++t) {
      EXPECT_EQ(train.images[k * 4 + t], static_cast<float>(4 * k + t));
      EXPECT_EQ(train.labels[k * 4 + t], 4 * k + t + 1);
    }
  EXPECT_EQ(validation.images[0], 23.0f);  // the held-out part starts after the training tokens
  EXPECT_EQ(validation.labels[0], 24);
  // fill_batch copies a window's labels with it.
  std::vector<float> x(8);
  std::vector<std::int32_t> labels(8);
  const std::int64_t indices[] = {3, 1};
  Rng rng(0);
  fill_batch(train, indices, 2, Augment{}, rng, x.data(), labels.data());
  EXPECT_EQ(x[0], 12.0f);
  EXPECT_EQ(labels[0], 13);
  EXPECT_EQ(labels[7], 8);
  EXPECT_EQ(split_text(c, {4, 0.25, 2, 1}).first.count, 2);  // limits
  EXPECT_NE(thrown([&] { split_text(c, {9, 0.25, 0, 0}); }).find("data.seq_len 9 is too long for the validation split"),
            std::string::npos);
}

// augment.shift: a training window read s = 0..shift tokens later, its labels with it, never past the stored tail.
TEST(Text, ShiftedWindowsStayInTheStream) {
  TextCorpus c;
  c.source = "test";
  c.symbols.resize(40);
  for (int i = 0; i < 40; ++i) c.tokens.push_back(i);
  const Dataset train = split_text(c, {4, 0.25, 0, 0}).first;  // tokens 0..29: 7 windows, then 1 token of tail
  ASSERT_EQ(train.count, 7);
  EXPECT_EQ(train.tail, 1);
  ASSERT_EQ(train.images.size(), 29u);
  std::vector<float> x(4);
  std::vector<std::int32_t> labels(4);
  Rng rng(5);
  std::set<std::int64_t> seen_first, seen_last;
  for (int draw = 0; draw < 200; ++draw)
    for (std::int64_t idx : {std::int64_t{0}, std::int64_t{6}}) {
      fill_batch(train, &idx, 1, Augment{false, 0, 3}, rng, x.data(), labels.data());
      const auto start = static_cast<std::int64_t>(x[0]);
      for (int t = 0; t < 4; ++t) {
        EXPECT_EQ(x[t], static_cast<float>(start + t));
        EXPECT_EQ(labels[t], start + t + 1);
      }
      (idx == 0 ? seen_first : seen_last).insert(start);
    }
  EXPECT_EQ(seen_first, (std::set<std::int64_t>{0, 1, 2, 3}));  // every shift 0..3 occurs
  EXPECT_EQ(seen_last, (std::set<std::int64_t>{24, 25}));       // the last window: only as far as its tail
  Rng a(9), b(9);
  const std::int64_t idx = 2;
  fill_batch(train, &idx, 1, Augment{}, a, x.data(), labels.data());
  EXPECT_EQ(x[0], 8.0f) << "no shift: the window in place";
  EXPECT_EQ(a.below(1000), b.below(1000)) << "no shift draws nothing";
}

// The default corpus (Debian's fortunes, installed by scripts/install-deps.sh): plain UTF-8 English text.
TEST(Text, FortunesCorpus) {
  if (!fs::exists("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  const TextCorpus c = read_text("/usr/share/games/fortunes", "char");
  EXPECT_GT(c.tokens.size(), 2'000'000u);
  EXPECT_GT(c.symbols.size(), 90u);
  EXPECT_LE(c.symbols.size(), 256u);  // within what bf16 holds exactly
}
