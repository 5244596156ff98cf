#pragma once
// Datasets held in memory as float32 NCHW, plus the pieces of an input pipeline: normalisation, epoch order and
// (augmented) batch filling. All randomness comes from lowmem::Rng so a run is reproducible from its seed.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "numerics/random.hpp"

namespace lowmem {

// A labelled image set held as float32 in NCHW order, pixel values scaled to [0,1] (before normalisation); or a
// text split (tokens): each example a window of `width` token ids (stored as float32, exact below 2^24; channels
// and height 1) labelled at every position with the token that follows it (targets = width).
struct Dataset {
  std::string source;  // e.g. "fashion-mnist train (/usr/share/datasets/fashion-mnist)"
  std::int64_t count = 0, channels = 0, height = 0, width = 0;
  int classes = 0;                   // for text: the vocabulary's size
  bool tokens = false;               // examples are token ids (text), not pixels
  std::int64_t targets = 1;          // labels per example: 1 for an image, the window's length for text
  std::vector<float> images;         // count*channels*height*width (+ tail, text)
  std::vector<std::int32_t> labels;  // count*targets (+ tail, text), each in [0, classes)
  // Text: the windows are consecutive in the split's token stream, and images and labels also hold the `tail`
  // tokens after the last one (fewer than a window), so that a window shifted later (Augment::shift) stays inside.
  std::int64_t tail = 0;
  std::int64_t image_size() const { return channels * height * width; }
  // One example's shape as the model sees it: (C, H, W), or (T) token ids.
  std::vector<std::int64_t> example_shape() const {
    return tokens ? std::vector<std::int64_t>{width} : std::vector<std::int64_t>{channels, height, width};
  }
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

// Plain text (data "text"): a file, or a directory whose files are read in name order as one text (symlinks and
// files with a NUL byte, such as fortune's .dat indexes, skipped). level "byte": every byte is a token, vocabulary
// 256; level "char": every Unicode character of the UTF-8 text is one, the vocabulary being the characters the
// corpus uses in code point order. Throws lowmem::Error naming the file: missing, unreadable, empty, or (char) not
// UTF-8 (with the byte offset).
struct TextCorpus {
  std::string source;                 // "text (/usr/share/games/fortunes, 45 files, char level)"
  std::vector<std::int32_t> tokens;   // the whole text, as ids into symbols
  std::vector<std::uint32_t> symbols; // id -> byte value or code point
};
TextCorpus read_text(const std::string& path, const std::string& level);
// The vocabulary's size of read_text(path, level), read once per process and path (a sweep's configs ask often).
int text_vocabulary(const std::string& path, const std::string& level);

// A corpus cut into a training split (the first 1 - validation of its tokens) and a validation split (the rest),
// each into consecutive windows of seq_len tokens, labelled by the seq_len tokens one position later (next-token
// prediction; window k starts at token k seq_len of its split; the tokens after the last window, fewer than
// seq_len, are kept as its tail). limits: keep the first `limit` windows (0 = all).
// Throws lowmem::Error when a split has fewer than seq_len + 1 tokens.
struct TextSplitSpec {
  std::int64_t seq_len = 128;
  double validation = 0.1;
  std::int64_t train_limit = 0, validation_limit = 0;
};
std::pair<Dataset, Dataset> split_text(const TextCorpus& corpus, const TextSplitSpec& spec);

// Per-channel mean and (population) standard deviation over the whole set, accumulated in double.
struct ChannelStats {
  std::vector<double> mean, stddev;
};
ChannelStats channel_stats(const Dataset& d);

// x = (x - mean_c) / stddev_c in place. Throws if sizes disagree or a stddev is <= 0.
void normalize(Dataset& d, const ChannelStats& s);

// Order of examples for one epoch: a permutation of [0, count) by Fisher-Yates with Rng(seed, 1000 + epoch).
std::vector<std::int64_t> epoch_order(std::int64_t count, std::uint64_t seed, int epoch);

// Images: random horizontal flip (p = 0.5); random crop of the original size after zero-padding by crop_pad.
// Text: each window read from a random 0..shift tokens later in the stream (its labels with it), so that passes
// over the split do not see the same windows; a window near the split's end shifts at most to the end.
struct Augment {
  bool flip = false;
  int crop_pad = 0;
  int shift = 0;
};

// Copies examples indices[0..n) into out (n*image_size floats, NCHW) and their labels (n*targets) into labels_out, applying
// the augmentation with rng. Draw order per example: the flip coin rng.below(2) == 1 (if flip), then the crop
// offsets dy, dx = rng.below(2*crop_pad + 1) (if crop_pad > 0). The flip is applied before the crop, so
// out(c, y, x) = flipped(c, y + dy - crop_pad, x + dx - crop_pad), zero outside the image. Text with shift > 0:
// one draw s = rng.below(m + 1), m = min(shift, tokens stored after the window), and the window read s later.
void fill_batch(const Dataset& d, const std::int64_t* indices, std::int64_t n, const Augment& aug, Rng& rng,
                float* out, std::int32_t* labels_out);

}  // namespace lowmem
