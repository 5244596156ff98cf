// Fuzz target "idx": a Fashion-MNIST training split (IDX files, gzip or plain) loaded and normalised as a run
// loads it. Input layout: 1 byte example limit (0 = all), 2 bytes little-endian length L of the labels file,
// L bytes labels file, the rest is the images file.
#include <algorithm>

#include "common.hpp"
#include "data/dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::int64_t limit = data[0];
  const std::size_t labels = std::min<std::size_t>(data[1] | data[2] << 8, size - 3);
  // Named .gz: lowmem prefers that name, and zlib reads an uncompressed file through it unchanged.
  fuzz::write_file("train-labels-idx1-ubyte.gz", data + 3, labels);
  fuzz::write_file("train-images-idx3-ubyte.gz", data + 3 + labels, size - 3 - labels);
  fuzz::expect_errors([&] {
    lowmem::Dataset d = lowmem::load_fashion_mnist(fuzz::scratch_path(""), true, limit);
    lowmem::normalize(d, lowmem::channel_stats(d));
  });
  return 0;
}
