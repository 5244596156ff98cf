// The input pipeline after loading: normalisation, the order of examples per epoch, and batch assembly with
// augmentation.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "data/dataset.hpp"
#include "numerics/error.hpp"

namespace lowmem {

ChannelStats channel_stats(const Dataset& d) {
  if (d.count <= 0) throw Error("channel_stats: dataset " + d.source + " is empty, expected at least one example");
  const std::int64_t plane = d.height * d.width;
  const double n = static_cast<double>(d.count * plane);
  ChannelStats s{std::vector<double>(d.channels, 0.0), std::vector<double>(d.channels, 0.0)};
  // Two passes (mean, then squared deviations): sum(x^2) - n*mean^2 cancels badly in large sets.
  for (std::int64_t i = 0; i < d.count; ++i)
    for (std::int64_t c = 0; c < d.channels; ++c) {
      const float* x = d.images.data() + (i * d.channels + c) * plane;
      s.mean[c] += std::accumulate(x, x + plane, 0.0);
    }
  for (auto& m : s.mean) m /= n;
  for (std::int64_t i = 0; i < d.count; ++i)
    for (std::int64_t c = 0; c < d.channels; ++c) {
      const float* x = d.images.data() + (i * d.channels + c) * plane;
      double acc = 0.0;
      for (std::int64_t j = 0; j < plane; ++j) acc += (x[j] - s.mean[c]) * (x[j] - s.mean[c]);
      s.stddev[c] += acc;
    }
  for (auto& v : s.stddev) v = std::sqrt(v / n);
  return s;
}

void normalize(Dataset& d, const ChannelStats& s) {
  if (std::ssize(s.mean) != d.channels || std::ssize(s.stddev) != d.channels)
    throw Error("normalize: stats have " + std::to_string(s.mean.size()) + " means and " +
                std::to_string(s.stddev.size()) + " stddevs, expected " + std::to_string(d.channels) +
                " (the channels of " + d.source + ")");
  for (std::int64_t c = 0; c < d.channels; ++c)
    if (!(s.stddev[c] > 0.0))  // also rejects NaN
      throw Error("normalize: stddev of channel " + std::to_string(c) + " is " + std::to_string(s.stddev[c]) +
                  ", expected > 0");
  const std::int64_t plane = d.height * d.width;
  for (std::int64_t i = 0; i < d.count; ++i)
    for (std::int64_t c = 0; c < d.channels; ++c) {
      float* x = d.images.data() + (i * d.channels + c) * plane;
      const double m = s.mean[c], inv = 1.0 / s.stddev[c];
      for (std::int64_t j = 0; j < plane; ++j) x[j] = static_cast<float>((x[j] - m) * inv);
    }
}

std::vector<std::int64_t> epoch_order(std::int64_t count, std::uint64_t seed, int epoch) {
  if (count < 0 || epoch < 0)
    throw Error("epoch_order: count " + std::to_string(count) + ", epoch " + std::to_string(epoch) +
                ", expected both >= 0");
  std::vector<std::int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed, 1000 + static_cast<std::uint64_t>(epoch));
  for (std::int64_t i = count - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
  return order;
}

void fill_batch(const Dataset& d, const std::int64_t* indices, std::int64_t n, const Augment& aug, Rng& rng,
                float* out, std::int32_t* labels_out) {
  if (aug.crop_pad < 0 || aug.crop_pad > d.height || aug.crop_pad > d.width)
    throw Error("fill_batch: crop_pad " + std::to_string(aug.crop_pad) + ", expected 0..min(height, width) of " +
                d.source);
  const std::int64_t H = d.height, W = d.width, size = d.image_size(), pad = aug.crop_pad;
  for (std::int64_t k = 0; k < n; ++k) {
    const std::int64_t idx = indices[k];
    if (idx < 0 || idx >= d.count)
      throw Error("fill_batch: index " + std::to_string(idx) + " at batch position " + std::to_string(k) +
                  ", expected 0.." + std::to_string(d.count - 1) + " for " + d.source);
    const bool flip = aug.flip && rng.below(2) == 1;
    const std::int64_t dy = pad > 0 ? static_cast<std::int64_t>(rng.below(2 * pad + 1)) - pad : 0;
    const std::int64_t dx = pad > 0 ? static_cast<std::int64_t>(rng.below(2 * pad + 1)) - pad : 0;
    if (d.tokens) {  // a window of the stream, perhaps shifted later
      const std::int64_t room = (d.count - 1 - idx) * size + d.tail;  // tokens stored after this window
      const auto s = aug.shift > 0 ? static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(std::min<std::int64_t>(aug.shift, room) + 1))) : std::int64_t{0};
      std::copy_n(d.images.begin() + idx * size + s, size, out + k * size);
      std::copy_n(d.labels.begin() + idx * d.targets + s, d.targets, labels_out + k * d.targets);
      continue;
    }
    const float* src = d.images.data() + idx * size;  // (C, H, W)
    float* dst = out + k * size;                      // (C, H, W)
    for (std::int64_t c = 0; c < d.channels; ++c)
      for (std::int64_t y = 0; y < H; ++y) {
        const std::int64_t sy = y + dy;
        for (std::int64_t x = 0; x < W; ++x) {
          const std::int64_t sx = x + dx;  // column in the flipped image
          const bool inside = sy >= 0 && sy < H && sx >= 0 && sx < W;
          dst[(c * H + y) * W + x] = inside ? src[(c * H + sy) * W + (flip ? W - 1 - sx : sx)] : 0.0f;
        }
      }
    std::copy_n(d.labels.begin() + idx * d.targets, d.targets, labels_out + k * d.targets);
  }
}

}  // namespace lowmem
