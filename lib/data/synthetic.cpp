// A learnable stand-in for a real dataset: class prototypes plus noise. Cheap, seeded, and any shape, so tests and
// studies can run without files and at sizes a real dataset does not come in.
#include <algorithm>

#include "data/dataset.hpp"
#include "numerics/error.hpp"

namespace lowmem {

Dataset make_synthetic(const SyntheticSpec& spec, std::uint64_t seed, bool train) {
  if (spec.count < 0 || spec.channels <= 0 || spec.height <= 0 || spec.width <= 0 || spec.classes <= 0)
    throw Error("synthetic: spec count=" + std::to_string(spec.count) + " shape=" + std::to_string(spec.channels) +
                "x" + std::to_string(spec.height) + "x" + std::to_string(spec.width) +
                " classes=" + std::to_string(spec.classes) + ", expected count >= 0 and positive shape and classes");
  Dataset d;
  d.count = spec.count;
  d.channels = spec.channels;
  d.height = spec.height;
  d.width = spec.width;
  d.classes = spec.classes;
  d.source = "synthetic " + std::string(train ? "train" : "test") + " (seed " + std::to_string(seed) + ", " +
             std::to_string(d.channels) + "x" + std::to_string(d.height) + "x" + std::to_string(d.width) + ", " +
             std::to_string(d.classes) + " classes)";
  const std::int64_t size = d.image_size();

  // Prototypes: (classes, C, H, W), uniform in [0, 1), shared by train and test.
  std::vector<float> proto(d.classes * size);
  Rng proto_rng(seed, 1);
  for (auto& v : proto) v = static_cast<float>(proto_rng.uniform());

  // Examples: per example the label, then one noise draw per pixel.
  Rng rng(seed, train ? 2 : 3);
  d.images.resize(d.count * size);
  d.labels.resize(d.count);
  for (std::int64_t i = 0; i < d.count; ++i) {
    d.labels[i] = static_cast<std::int32_t>(rng.below(d.classes));
    const float* p = proto.data() + d.labels[i] * size;
    float* x = d.images.data() + i * size;
    for (std::int64_t j = 0; j < size; ++j)
      x[j] = std::clamp(p[j] + 0.3f * static_cast<float>(rng.normal()), 0.0f, 1.0f);
  }
  return d;
}

}  // namespace lowmem
