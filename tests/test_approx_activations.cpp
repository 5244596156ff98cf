// Approximate activations: the K-bit quantizers' reconstruction error against their resolution, the exact ReLU
// mask, and the technique's gradients and memory.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "technique_step.hpp"
#include "layers/activations.hpp"
#include "layers/groupnorm.hpp"
#include "techniques/approx_activations.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

double reconstruction_error(CompressionPolicy::Method method, int bits, double mean) {
  Tensor<double> x(Shape{16, 4, 8, 8}, MemoryCategory::workspace);
  Rng rng(71);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = mean + rng.normal();
  CompressionPolicy policy;
  policy.method = method, policy.bits = bits;
  const Tensor<double> back = decompress<double>(compress(x, policy));
  double error = 0, signal = 0;
  for (index_t i = 0; i < x.numel(); ++i) error += (back[i] - x[i]) * (back[i] - x[i]), signal += x[i] * x[i];
  return std::sqrt(error / signal);
}

TEST(Compression, ReconstructionErrorFollowsTheBinWidth) {
  for (auto method : {CompressionPolicy::blpa, CompressionPolicy::actnn, CompressionPolicy::naive})
    for (int bits : {2, 4, 8}) {
      const double e = reconstruction_error(method, bits, 0.5);
      std::printf("    method %d, %d bits: relative error %.3g\n", static_cast<int>(method), bits, e);
      EXPECT_LT(e, 8.0 / (1 << bits)) << method << " " << bits;  // a few bin widths of a unit-variance signal
    }
}

// ReLU keeps 1 bit per value, not a K-bit copy of its output: its input gradient is exact, bit for bit.
TEST(Compression, TheReluMaskIsExact) {
  Tensor<double> x(Shape{4, 3, 5, 5}, MemoryCategory::workspace), dy(x.shape(), MemoryCategory::workspace);
  Rng rng(72);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal() * (i % 7 == 0 ? 1e-9 : 1.0), dy[i] = rng.normal();
  for (double slope : {0.0, 0.2}) {
    LeakyRelu<double> exact("exact", slope), approximate("approximate", slope);
    exact.forward(x, RunContext{});
    const Tensor<double> want = exact.backward(dy, RunContext{}, true);
    CompressionPolicy policy;
    policy.bits = 2;
    {
      const CompressionHook<double> hook(policy);
      const SaveHookScope<double> scope(&hook);
      approximate.forward(x, RunContext{});
    }
    const Tensor<double> got = approximate.backward(dy, RunContext{}, true);
    for (index_t i = 0; i < x.numel(); ++i) ASSERT_EQ(got[i], want[i]) << "slope " << slope << " at " << i;
  }
}

nlohmann::json config_with(const nlohmann::json& technique) {
  return {{"precision", "f64"},
          {"study", "gradient"},
          {"model", {{"arch", "cnn"}, {"channels", {6, 6}}, {"input", {1, 8, 8}}, {"classes", 4}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"classes", 4}}}}},
          {"train", {{"batch", 16}, {"optimizer", {{"lr", 0.1}}}}}};
}

testing::TechniqueStep step(const nlohmann::json& technique) { return testing::technique_step(config_with(technique), 73); }
using testing::relative_difference;

// On data without repeated values (Gaussian inputs), 8-bit activations give gradients within 5 % of exact ones
// for every method (measured below), fewer bits a larger error, and saved activations shrink with the bits.
TEST(ApproxActivations, EightBitGradientsStayCloseAndMemoryShrinks) {
  const testing::TechniqueStep exact = step({{"type", "store_all"}});
  for (const std::string method : {"blpa", "actnn", "naive"}) {
    double previous_error = 0;
    std::size_t previous_saved = exact.saved_peak;
    for (int bits : {8, 4, 2}) {
      const testing::TechniqueStep s = step({{"type", "approx_activations"}, {"bits", bits}, {"method", method}});
      const double error = relative_difference(s.gradients, exact.gradients);
      std::printf("    %-5s %d bits: gradient relative error %.3g, saved activations %zu of %zu bytes\n",
                  method.c_str(), bits, error, s.saved_peak, exact.saved_peak);
      if (bits == 8) { EXPECT_LT(error, 0.05) << method; }
      EXPECT_GT(error, previous_error) << method << " " << bits;
      EXPECT_LT(s.saved_peak, previous_saved) << method << " " << bits;
      previous_error = error, previous_saved = s.saved_peak;
    }
  }
}

// Group norm's per-sample statistics are kept exact, as batch norm's are: under a compression policy its input is
// stored in K bits and its means and inverse deviations (N groups values each, in the wide type) whole.
TEST(ApproxActivations, GroupNormStatisticsStayExact) {
  MemoryLedger ledger;
  MemoryLedger::Scope scope(ledger);
  GroupNorm<double> layer("gn", 6, 3, 1e-5);
  Rng rng(5);
  layer.initialize(rng);
  Tensor<double> x(Shape{2, 6, 4, 4}, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  CompressionPolicy policy;
  policy.method = CompressionPolicy::blpa;
  std::size_t packed = 0;
  {
    const CompressedTensor c = compress(x, policy);
    packed = c.codes.bytes() + c.offset.bytes() + c.step.bytes();
  }
  const CompressionHook<double> hook(policy);
  const SaveHookScope<double> approximate(&hook);
  const std::size_t before = ledger.current(MemoryCategory::saved_activations);
  const Tensor<double> y = layer.forward(x, RunContext{});
  EXPECT_EQ(ledger.current(MemoryCategory::saved_activations) - before, packed + 2 * 2 * 3 * sizeof(double));
}

TEST(ApproxActivations, BitsOutsideTheSupportedSetAreRefused) {
  try {
    parse_run_config(config_with({{"type", "approx_activations"}, {"bits", 3}}), "cfg.json");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: /technique/bits"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2, 4 or 8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowmem
