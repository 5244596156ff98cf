// Approximate activations: the K-bit quantizers' reconstruction error against their resolution, the exact ReLU
// mask, and the technique's gradients and memory.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "numerics/threads.hpp"
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

// The quantisers value by value, as they were written before compress() ran group by group (and actnn's draws
// were taken one call at a time): the restructured code must give the same codes, offsets, steps and values.
struct ValueByValue {
  std::vector<unsigned> codes;
  std::vector<float> offset, step;
};
template <class T> ValueByValue value_by_value(const Tensor<T>& t, CompressionPolicy::Method method, int bits,
                                               std::uint64_t seed, std::uint64_t call) {
  const index_t n = t.numel(), channels = t.dim(1), area = n / (t.dim(0) * channels);
  const bool blpa = method == CompressionPolicy::blpa;
  auto group = [&](index_t i) { return blpa ? (i / area) % channels : i / 256; };
  const index_t groups = blpa ? channels : (n + 255) / 256;
  const unsigned levels = 1u << bits;
  std::vector<double> a(groups, blpa ? 0 : INFINITY), b(groups, blpa ? 0 : -INFINITY);
  std::vector<index_t> count(groups, 0);
  ValueByValue out{std::vector<unsigned>(n), std::vector<float>(groups), std::vector<float>(groups)};
  for (index_t i = 0; i < n; ++i) {
    const double x = to_double(t[i]);
    if (blpa) a[group(i)] += x, b[group(i)] += x * x, ++count[group(i)];
    else a[group(i)] = std::min(a[group(i)], x), b[group(i)] = std::max(b[group(i)], x);
  }
  for (index_t g = 0; g < groups; ++g) {
    if (blpa) {
      const double mean = a[g] / count[g], sigma = std::sqrt(std::max(b[g] / count[g] - mean * mean, 1e-30));
      const double width = 6 * sigma / levels;
      out.offset[g] = static_cast<float>(std::clamp(std::floor(levels / 2.0 - std::floor(mean / width)), 1.0, levels - 1.0));
      out.step[g] = static_cast<float>(width);
    } else {
      out.offset[g] = static_cast<float>(a[g]);
      out.step[g] = static_cast<float>(std::max((b[g] - a[g]) / (levels - 1), 1e-30));
    }
  }
  Rng rng(seed, 0x51a7 + call);
  for (index_t i = 0; i < n; ++i) {
    const double x = to_double(t[i]), offset = out.offset[group(i)], step = out.step[group(i)];
    double q;
    if (blpa) q = std::round(x / step) + offset;
    else if (method == CompressionPolicy::actnn) q = std::floor((x - offset) / step + rng.uniform());
    else q = std::floor((x - offset) / step + 0.5);
    out.codes[i] = static_cast<unsigned>(std::clamp(q, 0.0, levels - 1.0));
  }
  return out;
}

// The last two shapes are large enough to be compressed over two threads (runs apart; blpa's 9 x 9 planes of
// 2-bit codes share bytes, so they are encoded in order): the codes must still be the value-by-value ones.
template <class T> void check_against_value_by_value() {
  Rng rng(5);
  const int threads_before = omp_get_max_threads();
  set_threads(2);
  for (const Shape& shape : {Shape{3, 5, 7, 9}, Shape{2, 4, 28, 28}, Shape{5, 300}, Shape{1, 3, 1, 1},
                             Shape{8, 6, 30, 30}, Shape{64, 8, 9, 9}})
    for (auto method : {CompressionPolicy::blpa, CompressionPolicy::actnn, CompressionPolicy::naive})
      for (int bits : {2, 4, 8}) {
        Tensor<T> x(shape, MemoryCategory::workspace);
        for (index_t i = 0; i < x.numel(); ++i) x[i] = round_to<T>(0.3 + rng.normal() * (i % 11 == 0 ? 5 : 1));
        CompressionPolicy policy;
        policy.method = method, policy.bits = bits, policy.seed = 9, policy.calls = 3;
        const ValueByValue want = value_by_value(x, method, bits, 9, 3);
        const CompressedTensor c = compress(x, policy);
        const Tensor<T> back = decompress<T>(c);
        for (std::size_t g = 0; g < want.offset.size(); ++g) {
          ASSERT_EQ(c.offset[g], want.offset[g]) << method << " " << bits << " group " << g;
          ASSERT_EQ(c.step[g], want.step[g]) << method << " " << bits << " group " << g;
        }
        for (index_t i = 0; i < x.numel(); ++i) {
          const unsigned code = (c.codes[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
          ASSERT_EQ(code, want.codes[i]) << method << " " << bits << " value " << i;
          const index_t g = method == CompressionPolicy::blpa ? (i / (x.numel() / (shape[0] * shape[1]))) % shape[1] : i / 256;
          const double o = want.offset[g], s = want.step[g], k = want.codes[i];
          const T expect = round_to<T>(method == CompressionPolicy::blpa ? (k - o) * s : o + k * s);
          ASSERT_EQ(to_double(back[i]), to_double(expect)) << method << " " << bits << " value " << i;
        }
      }
  set_threads(threads_before);
}

TEST(Compression, GroupByGroupEqualsValueByValueBitForBit) {
  check_against_value_by_value<float>();
  check_against_value_by_value<double>();
  check_against_value_by_value<f16>();
  check_against_value_by_value<bf16>();
}

TEST(Compression, ReconstructionErrorFollowsTheBinWidth) {
  for (auto method : {CompressionPolicy::blpa, CompressionPolicy::actnn, CompressionPolicy::naive})
    for (int bits : {2, 4, 8}) {
      const double e = reconstruction_error(method, bits, 0.5);
      std::printf("    method %d, %d bits: relative error %.3g\n", static_cast<int>(method), bits, e);
      EXPECT_LT(e, 8.0 / (1 << bits)) << method << " " << bits;  // a few bin widths of a unit-variance signal
    }
}

// ReLU keeps 1 bit per value, not a K-bit copy of its output: its input gradient is exact, bit for bit (float
// takes the vectorised path; 204 values leave a ragged end of 4; infinite gradients check the exact zero, and a
// slope that rounds to 0 in float must still multiply, as the generic loop does).
template <class T> void check_relu_mask_is_exact() {
  Tensor<T> x(Shape{4, 3, 17, 1}, MemoryCategory::workspace), dy(x.shape(), MemoryCategory::workspace);
  Rng rng(72);
  for (index_t i = 0; i < x.numel(); ++i) {
    x[i] = round_to<T>(rng.normal() * (i % 7 == 0 ? 1e-9 : 1.0));
    dy[i] = round_to<T>(i % 13 == 0 ? INFINITY : rng.normal());
  }
  for (double slope : {0.0, 0.2, 1e-50}) {
    LeakyRelu<T> exact("exact", slope), approximate("approximate", slope);
    exact.forward(x, RunContext{});
    const Tensor<T> want = exact.backward(dy, RunContext{}, true);
    CompressionPolicy policy;
    policy.bits = 2;
    {
      const CompressionHook<T> hook(policy);
      const SaveHookScope<T> scope(&hook);
      approximate.forward(x, RunContext{});
    }
    const Tensor<T> got = approximate.backward(dy, RunContext{}, true);
    for (index_t i = 0; i < x.numel(); ++i) {
      ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(T)), 0) << "slope " << slope << " at " << i;
    }
  }
}

TEST(Compression, TheReluMaskIsExact) {
  check_relu_mask_is_exact<double>();
  check_relu_mask_is_exact<float>();
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
