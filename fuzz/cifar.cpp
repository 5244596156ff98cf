// Fuzz target "cifar": CIFAR-10 binary batches loaded and normalised as a run loads them. Input layout: 1 byte
// example limit (0 = all), the rest is the file, read as every data_batch_N.bin and as test_batch.bin.
#include <filesystem>

#include "common.hpp"
#include "data/dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::int64_t limit = data[0];
  fuzz::write_file("test_batch.bin", data + 1, size - 1);
  for (int b = 1; b <= 5; ++b)
    fuzz::write_file("data_batch_" + std::to_string(b) + ".bin", data + 1, size - 1);
  for (const bool train : {true, false})
    fuzz::expect_errors([&] {
      lowmem::Dataset d = lowmem::load_cifar10(fuzz::scratch_path(""), train, limit);
      lowmem::normalize(d, lowmem::channel_stats(d));
    });
  return 0;
}
