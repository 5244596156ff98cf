// The six precisions: single-rounding conversion, every layer's forward in each precision against mp on the
// same (rounded) inputs and weights, the ledger's byte counts, and a few training steps in each precision.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <nlohmann/json.hpp>

#include "layer_cases.hpp"
#include "layers/conv2d.hpp"
#include "tensor/compute.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

// ---- Conversion ----

TEST(Conversion, DoubleToHalfRoundsOnceWhereEigenRoundsTwice) {
  const double x = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);  // just above the midpoint of 1 and 1 + 2^-10
  EXPECT_EQ(static_cast<float>(f16(x)), 1.0f) << "Eigen's own conversion: double -> float -> half";
  EXPECT_EQ(static_cast<float>(round_to<f16>(x)), 1.0f + std::ldexp(1.0f, -10));
  const double y = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);  // the same case for bfloat16
  EXPECT_EQ(static_cast<float>(round_to<bf16>(y)), 1.0f + std::ldexp(1.0f, -7));
  const mp z = mp(1) + ldexp(mp(1), -11) + ldexp(mp(1), -100);  // and from mp, through double and float
  EXPECT_EQ(static_cast<float>(round_to<f16>(z)), 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(static_cast<float>(round_to<f16>(mp(1) + ldexp(mp(1), -11))), 1.0f) << "an exact tie goes to even";
}

// The nearest representable value by brute force: compare the two neighbours of the truncated value exactly.
template <class T> T nearest_by_search(double x) {
  T r = T(static_cast<float>(x));  // within one ulp of the answer
  T best = r;
  for (int step = -2; step <= 2; ++step) {
    auto bits = Eigen::numext::bit_cast<std::uint16_t>(r);
    const T candidate = Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>(bits + step));
    const double d_c = std::fabs(static_cast<double>(static_cast<float>(candidate)) - x);
    const double d_b = std::fabs(static_cast<double>(static_cast<float>(best)) - x);
    const bool even = (Eigen::numext::bit_cast<std::uint16_t>(candidate) & 1) == 0;
    if (d_c < d_b || (d_c == d_b && even)) best = candidate;
  }
  return best;
}

TEST(Conversion, RoundToMatchesNearestEvenOnRandomAndNearTieValues) {
  Rng rng(7);
  for (int i = 0; i < 200000; ++i) {
    // Exact midpoints between neighbouring 16-bit values (of f16 and of bf16 in turn), nudged by a tiny amount
    // or not at all: where a double rounding goes wrong and where ties go to even.
    // Both formats stay finite: f16 below its largest value, bf16 below 2^15 (0x4700).
    const auto bits = static_cast<std::uint16_t>(rng.below(i % 2 ? 0x7bfe : 0x4700));
    auto value = [&](std::uint16_t b) {
      return static_cast<double>(i % 2 ? static_cast<float>(Eigen::numext::bit_cast<f16>(b))
                                       : static_cast<float>(Eigen::numext::bit_cast<bf16>(b)));
    };
    const double low = value(bits), high = value(static_cast<std::uint16_t>(bits + 1));
    const double nudge = i % 3 == 0 ? 0.0 : std::ldexp(rng.uniform(-1.0, 1.0), -30 - static_cast<int>(rng.below(20)));
    const double x = (rng.below(2) ? 1 : -1) * (0.5 * (low + high) + nudge * low);
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(round_to<f16>(x)), Eigen::numext::bit_cast<std::uint16_t>(nearest_by_search<f16>(x))) << x;
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(round_to<bf16>(x)), Eigen::numext::bit_cast<std::uint16_t>(nearest_by_search<bf16>(x))) << x;
  }
}

// The vectorised span conversion (F16C where available) must round exactly like the scalar conversion point.
TEST(Conversion, SpanConversionMatchesRoundTo) {
  Rng rng(13);
  std::vector<float> values;
  for (int i = 0; i < 100003; ++i) {  // odd length: the scalar tail is used too
    const float base = static_cast<float>(rng.uniform(-70000.0, 70000.0) * std::ldexp(1.0, -static_cast<int>(rng.below(30))));
    values.push_back(i % 3 == 0 ? std::nextafter(base, 0.0f) : base);
  }
  std::vector<f16> halves(values.size());
  std::vector<bf16> brains(values.size());
  convert(values.data(), halves.data(), static_cast<index_t>(values.size()));
  convert(values.data(), brains.data(), static_cast<index_t>(values.size()));
  std::vector<float> back(values.size());
  convert(halves.data(), back.data(), static_cast<index_t>(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(halves[i]), Eigen::numext::bit_cast<std::uint16_t>(round_to<f16>(values[i])));
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(brains[i]), Eigen::numext::bit_cast<std::uint16_t>(round_to<bf16>(values[i])));
    ASSERT_EQ(back[i], static_cast<float>(halves[i]));
  }
}

TEST(Conversion, MultiprecisionToDoubleIsCorrectlyRounded) {
  Rng rng(11);
  for (int i = 0; i < 20000; ++i) {
    const mp x = mp(rng.uniform(-1e3, 1e3)) + ldexp(mp(rng.uniform(-1.0, 1.0)), -60);
    const double r = round_to<double>(x);
    const mp error = abs(mp(r) - x);
    EXPECT_LE(error, abs(mp(std::nextafter(r, INFINITY)) - x));
    EXPECT_LE(error, abs(mp(std::nextafter(r, -INFINITY)) - x));
  }
}

// ---- Every layer in every precision ----

template <class T> double unit_roundoff() {
  if constexpr (std::is_same_v<T, float>) return std::ldexp(1.0, -24);
  else if constexpr (std::is_same_v<T, double>) return std::ldexp(1.0, -53);
  else if constexpr (std::is_same_v<T, f16>) return std::ldexp(1.0, -11);
  else if constexpr (std::is_same_v<T, bf16>) return std::ldexp(1.0, -8);
  else if constexpr (std::is_same_v<T, dd>) return std::ldexp(1.0, -106);
  else return std::ldexp(1.0, -113);
}

template <class T> class EveryPrecision : public ::testing::Test {};
using Precisions = ::testing::Types<float, double, f16, bf16, mp, dd>;
TYPED_TEST_SUITE(EveryPrecision, Precisions);

// The same input and weights (rounded into T, then exactly into mp): the difference is T's arithmetic alone.
TYPED_TEST(EveryPrecision, EveryLayerForwardAgreesWithMultiprecision) {
  using T = TypeParam;
  for (const testing::LayerCase& c : testing::all_layer_cases()) {
    auto layer = c.make<T>();
    auto reference = c.make<mp>();
    Rng reference_rng(3);
    reference->initialize(reference_rng);  // as every precision of a run is (dropout's key is not a parameter)
    Rng rng(3);
    layer->initialize(rng);
    const auto params = layer->params();  // two declarations: the types differ (GCC accepts one, clang does not)
    const auto ref_params = reference->params();
    for (std::size_t k = 0; k < params.size(); ++k)
      for (index_t i = 0; i < params[k]->value.numel(); ++i) {
        params[k]->value[i] = round_to<T>(to_double(params[k]->value[i]) + 0.3 * rng.normal());
        ref_params[k]->value[i] = round_to<mp>(params[k]->value[i]);
      }
    Tensor<T> x = testing::draw_input<T>(c.input, c.vocab, rng);
    Tensor<mp> x_ref(c.input, MemoryCategory::workspace);
    for (index_t i = 0; i < x.numel(); ++i) x_ref[i] = round_to<mp>(x[i]);
    const RunContext ctx{true, Accumulate::f32};
    const Tensor<T> y = layer->forward(x, ctx);
    const Tensor<mp> y_ref = reference->forward(x_ref, ctx);
    double max_error = 0, max_value = 0;
    for (index_t i = 0; i < y.numel(); ++i) {
      max_error = std::max(max_error, to_double(abs(round_to<mp>(y[i]) - y_ref[i])));
      max_value = std::max(max_value, to_double(abs(y_ref[i])));
    }
    // A few roundings, each at most u relative, with batch norm's normalisation amplifying them modestly.
    EXPECT_LE(max_error, 64 * unit_roundoff<T>() * max_value) << c.name;
    if constexpr (!std::is_same_v<T, mp>) {
      if (c.name.rfind("conv", 0) == 0 || c.name.rfind("linear", 0) == 0) {
        EXPECT_GT(max_error, 0.0) << c.name << ": a product in a rounding format should round somewhere";
      }
    }
  }
}

// "accumulate": "f16" must really round every partial sum: a convolution over 576 products each (64 channels x
// 3 x 3) loses far more accuracy than with float accumulators, which round once at the end.
TEST(Accumulation, SixteenBitAccumulationRoundsEveryPartialSum) {
  const Conv2dSpec spec{64, 4, 3, 1, 1, false};
  Conv2d<f16> conv("conv", spec);
  Conv2d<mp> reference("conv", spec);
  Rng rng(21);
  conv.initialize(rng);
  for (index_t i = 0; i < conv.params()[0]->value.numel(); ++i)
    reference.params()[0]->value[i] = round_to<mp>(conv.params()[0]->value[i]);
  Tensor<f16> x(Shape{1, 64, 6, 6}, MemoryCategory::workspace);
  Tensor<mp> x_ref(x.shape(), MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) {
    x[i] = round_to<f16>(rng.uniform(0.0, 1.0));  // same sign: the sums grow, their rounding error with them
    x_ref[i] = round_to<mp>(x[i]);
  }
  const Tensor<mp> exact = reference.forward(x_ref, RunContext{false, Accumulate::f32});
  auto error = [&](Accumulate mode) {
    const Tensor<f16> y = conv.forward(x, RunContext{false, mode});
    double worst = 0;
    for (index_t i = 0; i < y.numel(); ++i) worst = std::max(worst, to_double(abs(round_to<mp>(y[i]) - exact[i]) / abs(exact[i])));
    return worst;
  };
  const double wide = error(Accumulate::f32), narrow = error(Accumulate::storage);
  EXPECT_LE(wide, std::ldexp(1.0, -11) * 1.01);  // one rounding of the result
  EXPECT_GT(narrow, 4 * wide);
}

// LaneSum's order, as compute.hpp states it, written out the slow way: value i of each run into lane i mod 16, the
// lanes then added pairwise. Runs of lengths that are and are not multiples of 16; compared bit for bit.
TEST(Accumulation, LaneSumAddsInItsDocumentedOrder) {
  Rng rng(5);
  const std::vector<index_t> runs{37, 16, 1, 0, 203};
  std::vector<std::vector<float>> values;
  for (index_t n : runs) {
    values.emplace_back();
    for (index_t i = 0; i < n; ++i) values.back().push_back(static_cast<float>(rng.normal() * std::exp(4 * rng.normal())));
  }
  LaneSum<float> sum;
  float lane[16] = {};
  for (const std::vector<float>& run : values) {
    sum.add(static_cast<index_t>(run.size()), Accumulate::f32, [&](index_t i) { return run[i]; });
    for (std::size_t i = 0; i < run.size(); ++i) lane[i % 16] += run[i];
  }
  for (int width = 8; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  EXPECT_EQ(std::bit_cast<std::uint32_t>(sum.total(Accumulate::f32)), std::bit_cast<std::uint32_t>(lane[0]));
  // ... and the order is not a plain running sum (else this test could not tell the two apart).
  float running = 0;
  for (const std::vector<float>& run : values)
    for (float v : run) running += v;
  EXPECT_NE(std::bit_cast<std::uint32_t>(sum.total(Accumulate::f32)), std::bit_cast<std::uint32_t>(running));
}

// With 16-bit storage accumulation every partial sum of LaneSum is an f16 value. 4096 ones: each lane holds 256
// (exact in f16) and the pairwise lane sums are powers of two, so the total is exactly 4096. 65,536 ones: each
// lane stops at 2048 (2048 + 1 rounds to even, back to 2048), so the total is 16 x 2048 = 32768; in float, 65536.
TEST(Accumulation, LaneSumRoundsEveryPartialSumIn16BitStorageAccumulation) {
  auto total = [](index_t n, Accumulate mode) {
    LaneSum<f16> sum;
    sum.add(n, mode, [](index_t) { return 1.0f; });
    return sum.total(mode);
  };
  EXPECT_EQ(total(4096, Accumulate::storage), 4096.0f);
  EXPECT_EQ(total(65536, Accumulate::storage), 32768.0f);
  EXPECT_EQ(total(65536, Accumulate::f32), 65536.0f);
}

TYPED_TEST(EveryPrecision, LedgerCountsEveryByteByCategory) {
  using T = TypeParam;
  MemoryLedger ledger;
  {
    MemoryLedger::Scope scope(ledger);
    Tensor<T> a(Shape{3, 5}, MemoryCategory::workspace);
    EXPECT_EQ(ledger.current(MemoryCategory::workspace), 15 * sizeof(T));
    {
      Tensor<T> shared = a;  // copies share the buffer: no new bytes
      shared.set_category(MemoryCategory::saved_activations);
      EXPECT_EQ(ledger.current(MemoryCategory::workspace), 0u);
      EXPECT_EQ(ledger.current(MemoryCategory::saved_activations), 15 * sizeof(T));
      Tensor<T> b(Shape{2}, MemoryCategory::weights);
      EXPECT_EQ(ledger.current_total(), 17 * sizeof(T));
    }
    EXPECT_EQ(ledger.current_total(), 15 * sizeof(T));  // b freed, the shared buffer still held by a
  }
  EXPECT_EQ(ledger.current_total(), 0u);
  EXPECT_EQ(ledger.peak_total(), 17 * sizeof(T));
  EXPECT_EQ(ledger.peak(MemoryCategory::saved_activations), 15 * sizeof(T));
  EXPECT_EQ(ledger.at_total_peak(MemoryCategory::weights), 2 * sizeof(T));
}

RunConfig tiny_config(Precision p) {
  const nlohmann::json config = {
      {"precision", to_string(p)},
      {"seed", 5},
      {"model",
       {{"input", {1, 6, 6}},
        {"classes", 3},
        {"layers",
         {{{"type", "conv"}, {"out", 3}, {"pad", 1}},
          {{"type", "batchnorm"}},
          {{"type", "relu"}},
          {{"type", "maxpool"}, {"kernel", 2}},
          {{"type", "flatten"}},
          {{"type", "linear"}, {"out", 3}}}}}},
      {"data", {{"dataset", "synthetic"}, {"synthetic", {{"count", 16}, {"shape", {1, 6, 6}}, {"classes", 3}}}}},
      {"train", {{"batch", 8}, {"optimizer", {{"type", "sgd"}, {"lr", 0.1}, {"momentum", 0.9}}}}}};
  return parse_run_config(config, "");
}

// Ten steps on one batch: the loss falls, every precision starts from the same weights (rounded once), and a
// second trainer reproduces the losses bit for bit.
TYPED_TEST(EveryPrecision, TrainingStepsAreDeterministicAndReduceTheLoss) {
  using T = TypeParam;
  const RunConfig config = tiny_config(precision_of<T>());
  const DataSplit data = load_data(config.data, config.seed);
  std::vector<double> losses[2];
  for (auto& run : losses) {
    MemoryLedger ledger;
    Trainer<T> trainer(config, ledger);
    std::vector<std::int64_t> first(8);
    for (int i = 0; i < 8; ++i) first[static_cast<std::size_t>(i)] = i;
    Rng rng(0);
    std::vector<std::int32_t> labels;
    const Tensor<T> x = trainer.make_batch(data.train, first.data(), 8, Augment{}, rng, labels);
    for (int step = 0; step < 10; ++step) run.push_back(to_double(trainer.train_step(x, labels, 0.1)));
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_LT(losses[0].back(), 0.5 * losses[0].front());

  // Same initial weights in every precision: T's first conv weights are the f64 ones rounded once into T.
  MemoryLedger l1, l2;
  Trainer<T> mine(config, l1);
  const RunConfig config64 = tiny_config(Precision::f64);
  Trainer<double> wide(config64, l2);
  const Tensor<T>& w = mine.model().params()[0]->value;
  const Tensor<double>& w64 = wide.model().params()[0]->value;
  for (index_t i = 0; i < w.numel(); ++i) EXPECT_EQ(to_double(w[i]), to_double(round_to<T>(w64[i])));
}

}  // namespace
}  // namespace lowmem
