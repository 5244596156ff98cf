#pragma once
// Datasets held in memory as float32 NCHW, plus the pieces of an input pipeline: normalisation, epoch order and
// (augmented) batch filling. All randomness comes from lowmem::Rng so a run is reproducible from its seed.
#include <cstdint>
#include <string>
#include <vector>

#include "numerics/random.hpp"

namespace lowmem {

// A labelled image set held as float32 in NCHW order, pixel values scaled to [0,1] (before normalisation).
struct Dataset {
  std::string source;  // e.g. "fashion-mnist train (/usr/share/datasets/fashion-mnist)"
  std::int64_t count = 0, channels = 0, height = 0, width = 0;
  int classes = 0;
  std::vector<float> images;         // count*channels*height*width
  std::vector<std::int32_t> labels;  // count, each in [0, classes)
  std::int64_t image_size() const { return channels * height * width; }
};

// Fashion-MNIST from IDX files: {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, or the same names without .gz.
// limit: keep the first `limit` examples in file order (0 = all). Throws lowmem::Error on a missing directory or
// file, a bad magic number, image/label counts that disagree, a label >= 10, or a truncated/corrupt file.
Dataset load_fashion_mnist(const std::string& dir, bool train, std::int64_t limit);

// CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32, i.e. already CHW).
// train = data_batch_1.bin..data_batch_5.bin read in order until `limit` is reached (all five when limit = 0);
// test = test_batch.bin. Throws lowmem::Error on a missing file or a file size that is not a multiple of 3073.
Dataset load_cifar10(const std::string& dir, bool train, std::int64_t limit);

struct SyntheticSpec {
  std::int64_t count = 1000;
  std::int64_t channels = 1, height = 28, width = 28;
  int classes = 10;
};
// A seeded learnable dataset: each class has a fixed uniform random prototype image (from Rng(seed, stream 1));
// each example is its class prototype plus Gaussian noise (sigma 0.3), clipped to [0,1]; labels uniform.
// train and test draw examples from different streams (2 and 3) around the same prototypes.
Dataset make_synthetic(const SyntheticSpec& spec, std::uint64_t seed, bool train);

// Per-channel mean and (population) standard deviation over the whole set, accumulated in double.
struct ChannelStats {
  std::vector<double> mean, stddev;
};
ChannelStats channel_stats(const Dataset& d);

// x = (x - mean_c) / stddev_c in place. Throws if sizes disagree or a stddev is <= 0.
void normalize(Dataset& d, const ChannelStats& s);

// Order of examples for one epoch: a permutation of [0, count) by Fisher-Yates with Rng(seed, 1000 + epoch).
std::vector<std::int64_t> epoch_order(std::int64_t count, std::uint64_t seed, int epoch);

// Random horizontal flip (p = 0.5); random crop of the original size after zero-padding by crop_pad.
struct Augment {
  bool flip = false;
  int crop_pad = 0;
};

// Copies examples indices[0..n) into out (n*image_size floats, NCHW) and their labels into labels_out, applying
// the augmentation with rng. Draw order per example: the flip coin rng.below(2) == 1 (if flip), then the crop
// offsets dy, dx = rng.below(2*crop_pad + 1) (if crop_pad > 0). The flip is applied before the crop, so
// out(c, y, x) = flipped(c, y + dy - crop_pad, x + dx - crop_pad), zero outside the image.
void fill_batch(const Dataset& d, const std::int64_t* indices, std::int64_t n, const Augment& aug, Rng& rng,
                float* out, std::int32_t* labels_out);

}  // namespace lowmem
