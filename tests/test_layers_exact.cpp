// Small hand-computed cases: what the generic checks cannot see (running statistics, evaluation mode, model
// factory structure, memory kept for backward).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <tuple>
#include <omp.h>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "layers/activations.hpp"
#include "layers/batchnorm.hpp"
#include "layers/conv2d.hpp"
#include "layers/groupnorm.hpp"
#include "layers/linear.hpp"
#include "layers/pooling.hpp"
#include "training/model_factory.hpp"
#include "training/trainer.hpp"
#include "layer_test_tools.hpp"
#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {
namespace {

// Max pooling in f16 and bf16 compares bits, not values: on windows built from every pair of special values
// (signed zeros, subnormals, infinities, quiet, signalling and negative NaNs) and random patterns, its maximum and
// the position backward sends the gradient to must be those of the rule in float: the first largest value wins,
// and a NaN wins over a number.
template <class T> void expect_pooling_compares_as_float() {
  const bool half = std::is_same_v<T, f16>;
  std::vector<std::uint16_t> bits{0x0000, 0x8000, 0x0001, 0x8001, 0x3C00, 0xBC00, 0x3C01,
                                  half ? std::uint16_t{0x7BFF} : std::uint16_t{0x7F7F},
                                  half ? std::uint16_t{0xFBFF} : std::uint16_t{0xFF7F},
                                  half ? std::uint16_t{0x7C00} : std::uint16_t{0x7F80},
                                  half ? std::uint16_t{0xFC00} : std::uint16_t{0xFF80},
                                  half ? std::uint16_t{0x7E00} : std::uint16_t{0x7FC0},
                                  half ? std::uint16_t{0x7C01} : std::uint16_t{0x7F81},
                                  half ? std::uint16_t{0xFE00} : std::uint16_t{0xFFC0}};
  Rng rng(3);
  for (int i = 0; i < 30; ++i) bits.push_back(static_cast<std::uint16_t>(rng.next_u64()));
  const index_t pairs = static_cast<index_t>(bits.size() * bits.size());
  // Window p: (a, b) = pair p in the first row, two random patterns from the list in the second.
  Tensor<T> x(Shape{1, pairs, 2, 2}, MemoryCategory::workspace);
  for (index_t p = 0; p < pairs; ++p) {
    const std::uint16_t w[4] = {bits[p / bits.size()], bits[p % bits.size()], bits[rng.next_u64() % bits.size()],
                                bits[rng.next_u64() % bits.size()]};
    for (int k = 0; k < 4; ++k) x[4 * p + k] = Eigen::numext::bit_cast<T>(w[k]);
  }
  MaxPool<T> pool("pool", 2, 2);
  const Tensor<T> y = pool.forward(x, RunContext{});
  Tensor<T> dy(y.shape(), MemoryCategory::workspace);
  dy.fill(T(1));
  const Tensor<T> dx = pool.backward(dy, RunContext{}, true);
  for (index_t p = 0; p < pairs; ++p) {
    int best = 0;
    float top = static_cast<float>(x[4 * p]);
    for (int k = 1; k < 4; ++k) {
      const float v = static_cast<float>(x[4 * p + k]);
      if (v > top || (std::isnan(v) && !std::isnan(top))) best = k, top = v;
    }
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(y[p]), Eigen::numext::bit_cast<std::uint16_t>(x[4 * p + best]))
        << "window " << p;
    for (int k = 0; k < 4; ++k) ASSERT_EQ(static_cast<float>(dx[4 * p + k]), k == best ? 1.0f : 0.0f) << "window " << p;
  }
}
TEST(PoolingExact, SixteenBitMaxPoolingComparesAsFloatOnSpecialValues) {
  expect_pooling_compares_as_float<f16>();
  expect_pooling_compares_as_float<bf16>();
}

// Max pooling 2 x 2 takes a row's windows in vector registers, eight at a time (f16 and bf16 widened in blocks
// of 32): on windows side by side in rows of 29 (blocks of eight, then a masked one; one masked block of 32) built
// from every pair of special values, the maximum and the argmax must be the rule's, bit for bit.
template <class T, class Bits> void expect_pooling_rows_follow_the_rule(std::vector<Bits> bits) {
  Rng rng(5);
  for (int i = 0; i < 20; ++i) bits.push_back(static_cast<Bits>(rng.next_u64()));
  const index_t windows = static_cast<index_t>(bits.size() * bits.size()), per_row = 29;
  const index_t rows = (windows + per_row - 1) / per_row;
  Tensor<T> x(Shape{1, 1, 2 * rows, 2 * per_row}, MemoryCategory::workspace);
  const index_t w = 2 * per_row;
  for (index_t p = 0; p < rows * per_row; ++p) {
    const index_t q = p % windows, corner = (p / per_row) * 2 * w + (p % per_row) * 2;
    const Bits v[4] = {bits[q / bits.size()], bits[q % bits.size()], bits[rng.next_u64() % bits.size()],
                       bits[rng.next_u64() % bits.size()]};
    for (int k = 0; k < 4; ++k) x[corner + (k / 2) * w + k % 2] = Eigen::numext::bit_cast<T>(v[k]);
  }
  MaxPool<T> pool("pool", 2, 2);
  const Tensor<T> y = pool.forward(x, RunContext{});
  Tensor<T> dy(y.shape(), MemoryCategory::workspace);
  dy.fill(T(1));
  const Tensor<T> dx = pool.backward(dy, RunContext{}, true);
  for (index_t p = 0; p < rows * per_row; ++p) {
    const index_t corner = (p / per_row) * 2 * w + (p % per_row) * 2;
    int best = 0;
    float top = static_cast<float>(x[corner]);
    for (int k = 1; k < 4; ++k) {
      const float v = static_cast<float>(x[corner + (k / 2) * w + k % 2]);
      if (v > top || (std::isnan(v) && !std::isnan(top))) best = k, top = v;
    }
    ASSERT_EQ(Eigen::numext::bit_cast<Bits>(y[p]), Eigen::numext::bit_cast<Bits>(x[corner + (best / 2) * w + best % 2]))
        << "window " << p;
    for (int k = 0; k < 4; ++k)
      ASSERT_EQ(static_cast<float>(dx[corner + (k / 2) * w + k % 2]), k == best ? 1.0f : 0.0f)
          << "window " << p << " value " << k;
  }
}
TEST(PoolingExact, MaxPoolingRowsFollowTheRuleOnSpecialValues) {
  expect_pooling_rows_follow_the_rule<float, std::uint32_t>(
      {0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x3F800000, 0xBF800000, 0x3F800001, 0x7F7FFFFF, 0xFF7FFFFF,
       0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00000});
  expect_pooling_rows_follow_the_rule<f16, std::uint16_t>({0x0000, 0x8000, 0x0001, 0x8001, 0x3C00, 0xBC00, 0x3C01,
                                                           0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00});
  expect_pooling_rows_follow_the_rule<bf16, std::uint16_t>({0x0000, 0x8000, 0x0001, 0x8001, 0x3F80, 0xBF80, 0x3F81,
                                                            0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC0});
}

TEST(BatchNormExact, RunningStatisticsAndEvaluationModeFollowPyTorch) {
  BatchNorm<double> bn("bn", 1, 0.1, 1e-5);
  Rng rng(0);
  bn.initialize(rng);
  Tensor<double> x(Shape{4, 1}, MemoryCategory::workspace);
  for (int i = 0; i < 4; ++i) x[i] = i + 1;  // mean 2.5, biased variance 1.25, unbiased 5/3
  const Tensor<double> y = bn.forward(x, RunContext{true, Accumulate::f32});
  EXPECT_NEAR(y[0], (1 - 2.5) / std::sqrt(1.25 + 1e-5), 1e-15);
  EXPECT_DOUBLE_EQ(bn.running_mean()[0], 0.1 * 2.5);
  EXPECT_DOUBLE_EQ(bn.running_var()[0], 0.9 * 1.0 + 0.1 * (5.0 / 3.0));
  const Tensor<double> z = bn.forward(x, RunContext{false, Accumulate::f32});
  for (int i = 0; i < 4; ++i)
    EXPECT_NEAR(z[i], (x[i] - 0.25) / std::sqrt(0.9 + 0.1 * 5.0 / 3.0 + 1e-5), 1e-15);
}

TEST(ConvExact, HandComputedStrideAndPadding) {
  // 1 channel 3x3 input 1..9, kernel of ones 2x2, stride 2, pad 1: windows see {1}, {2,3}, {4,7}, {5,6,8,9}.
  Conv2d<double> conv("conv", Conv2dSpec{1, 1, 2, 2, 1, true});
  conv.params()[0]->value.fill(1.0);
  conv.params()[1]->value.fill(0.5);
  Tensor<double> x(Shape{1, 1, 3, 3}, MemoryCategory::workspace);
  for (int i = 0; i < 9; ++i) x[i] = i + 1;
  const Tensor<double> y = conv.forward(x, RunContext{});
  ASSERT_EQ(y.shape(), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(y[0], 1 + 0.5);
  EXPECT_EQ(y[1], 2 + 3 + 0.5);
  EXPECT_EQ(y[2], 4 + 7 + 0.5);
  EXPECT_EQ(y[3], 5 + 6 + 8 + 9 + 0.5);
}

// Narrower bands of output rows (RunContext::conv_band_columns) hold a smaller column matrix and compute the same
// output, input gradient and weight gradient (to rounding: a weight gradient sums its bands in another grouping).
TEST(ConvExact, NarrowerBandsHoldLessAndComputeTheSame) {
  struct Result {
    std::vector<double> values;
    std::size_t workspace_peak;
  };
  const auto run = [](index_t band_columns) {
    MemoryLedger ledger;
    MemoryLedger::Scope scope(ledger);
    Conv2d<double> conv("conv", Conv2dSpec{3, 4, 3, 1, 1, true});
    Rng rng(4);
    conv.initialize(rng);
    Tensor<double> x(Shape{2, 3, 9, 7}, MemoryCategory::workspace), dy(Shape{2, 4, 9, 7}, MemoryCategory::workspace);
    for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
    for (index_t i = 0; i < dy.numel(); ++i) dy[i] = rng.normal();
    RunContext ctx;
    ctx.conv_band_columns = band_columns;
    const std::size_t before = ledger.current_total();
    const Tensor<double> y = conv.forward(x, ctx);
    const Tensor<double> dx = conv.backward(dy, ctx, true);
    Result r{{}, ledger.peak_total() - before};
    const std::vector<const Tensor<double>*> outputs = {&y, &dx, &conv.params()[0]->grad, &conv.params()[1]->grad};
    for (const Tensor<double>* t : outputs)
      for (index_t i = 0; i < t->numel(); ++i) r.values.push_back((*t)[i]);
    return r;
  };
  const Result whole = run(256), rows2 = run(14), row = run(1);  // 9 rows of 7: one band, bands of 2 rows, of 1
  ASSERT_EQ(whole.values.size(), row.values.size());
  for (std::size_t i = 0; i < whole.values.size(); ++i) {
    EXPECT_NEAR(rows2.values[i], whole.values[i], 1e-12 * (1 + std::fabs(whole.values[i]))) << i;
    EXPECT_NEAR(row.values[i], whole.values[i], 1e-12 * (1 + std::fabs(whole.values[i]))) << i;
  }
  EXPECT_LT(rows2.workspace_peak, whole.workspace_peak);
  EXPECT_LT(row.workspace_peak, rows2.workspace_peak);
}

// The model of a config whose only interesting part is `model` (synthetic data shaped like its input).
ModelSpec model_spec(const nlohmann::json& model) {
  const nlohmann::json config = {
      {"model", model},
      {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", model.at("input")}}}}},
      {"train", {{"optimizer", {{"lr", 0.1}}}}}};
  return parse_run_config(config, "").model;
}

// A model built on a dry-run ledger: structure and shapes, no memory. The ledger outlives the model's tensors.
struct DryModel {
  explicit DryModel(const ModelSpec& spec) {
    ledger.set_dry_run(true);
    MemoryLedger::Scope scope(ledger);
    model = std::make_unique<Sequential<float>>(build_model<float>(spec));
  }
  MemoryLedger ledger;
  std::unique_ptr<Sequential<float>> model;
};

ModelSpec resnet_spec(int depth, int widen, int base) {
  return model_spec({{"arch", "resnet"}, {"depth", depth}, {"widen", widen}, {"base_width", base}, {"input", {3, 32, 32}}});
}

TEST(ModelFactory, WideResNet28x2HasTheParametersItsStructureImplies) {
  // Stem conv 3->16 (432) + BN (32); stages of 4 blocks at widths 32, 64, 128 (strides 1, 2, 2); each stage's
  // first block has a 1x1 projection + BN. Stage 1: 14,528 + 3 x 18,560; stage 2: 57,728 + 3 x 73,984;
  // stage 3: 230,144 + 3 x 295,424; linear 128->10: 1,290. Total 1,468,058 (the paper's WRN-28-2: 1.5M).
  const DryModel wrn(resnet_spec(28, 2, 16));
  EXPECT_EQ(wrn.model->parameter_count(), 1468058);
  EXPECT_EQ(wrn.model->size(), 3u + 12u + 2u);  // stem, 12 residual blocks, pool + linear
  EXPECT_EQ(wrn.model->output_shape(), (Shape{10}));
  // Reduced width (WRN-16-4 at base width 4) is expressible and builds.
  EXPECT_EQ(DryModel(resnet_spec(16, 4, 4)).model->size(), 3u + 6u + 2u);
}

TEST(ModelFactory, RevNetStagesOfCouplingBlocks) {
  const nlohmann::json model = {{"arch", "revnet"}, {"stages", 3}, {"blocks", 2}, {"width", 8}, {"input", {1, 28, 28}}};
  const DryModel revnet(model_spec(model));
  Sequential<float>& net = *revnet.model;
  // stem (3) + 3 stages x 2 blocks + 2 pixel shuffles + pool + linear
  ASSERT_EQ(net.size(), 3u + 6u + 2u + 2u);
  int couplings = 0;
  for (std::size_t i = 0; i < net.size(); ++i) couplings += std::string(net.layer(i).kind()) == "coupling";
  EXPECT_EQ(couplings, 6);
  // Channels 8 -> 32 -> 128 through the pixel shuffles; 28 -> 14 -> 7.
  EXPECT_EQ(net.layer(11).output_shape(Shape{128, 7, 7}), (Shape{128}));
  // 4 stages would need a pixel shuffle of 7 x 7: refused, naming the layer.
  nlohmann::json deeper = model;
  deeper["stages"] = 4;
  try {
    DryModel refused(model_spec(deeper));
    FAIL() << "odd spatial size accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pixel_shuffle"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("even"), std::string::npos) << e.what();
  }
}

TEST(ModelFactory, FlatNetworkIsInvertibleLayerByLayer) {
  const nlohmann::json model = {{"arch", "flat"}, {"stages", 2}, {"blocks", 3}, {"width", 4}, {"slope", 0.1},
                                {"input", {1, 8, 8}}};
  const DryModel flat(model_spec(model));
  Sequential<float>& net = *flat.model;
  // stem (3) + 2 stages x 3 x (coupling conv, inv BN, leaky ReLU) + 1 pixel shuffle + pool + linear
  ASSERT_EQ(net.size(), 3u + 18u + 1u + 2u);
  EXPECT_STREQ(net.layer(3).kind(), "coupling");
  EXPECT_STREQ(net.layer(4).kind(), "inv_batchnorm");
  EXPECT_STREQ(net.layer(5).kind(), "leaky_relu");
  EXPECT_EQ(net.layer(3).children().size(), 2u);  // F and G: one half-channel conv each
  nlohmann::json zero_slope = model;
  zero_slope["slope"] = 0.0;
  EXPECT_THROW(model_spec(zero_slope), Error);
}

using testing::random_tensor;
using testing::randomize;
using testing::same_bits;

// Linear's products are split among the threads (by rows of the result, or by its columns where it has more) once
// they reach a million multiply-adds: y = x W^T + b, dW, db and dx are the same bits on one thread and on two, and
// two hold a packing row each (more workspace).
template <class T> void expect_linear_same_bits_on_one_thread_and_two(Accumulate mode) {
  struct Result {
    std::vector<T> values;
    std::size_t workspace;
  };
  auto run = [mode](int threads, index_t rows, index_t in, index_t out) {
    set_threads(threads);
    MemoryLedger ledger;
    MemoryLedger::Scope scope(ledger);
    Linear<T> layer("linear", in, out, true);
    Rng rng(5);
    randomize(layer, rng);
    const RunContext ctx{true, mode};
    const Tensor<T> y = layer.forward(random_tensor<T>(Shape{rows, in}, rng), ctx);
    const Tensor<T> dx = layer.backward(random_tensor<T>(y.shape(), rng), ctx, true);
    Result r{{}, ledger.peak(MemoryCategory::workspace)};
    std::vector<const Tensor<T>*> outputs{&y, &dx};
    for (Param<T>* p : layer.params()) outputs.push_back(&p->grad);
    for (const Tensor<T>* t : outputs) r.values.insert(r.values.end(), t->data(), t->data() + t->numel());
    return r;
  };
  const int before = omp_get_max_threads();
  // (rows, in, out): more rows than outputs (split by rows), and fewer (split by columns), an odd split.
  for (const auto& [rows, in, out] : {std::tuple<index_t, index_t, index_t>{1000, 96, 40}, {40, 300, 520}}) {
    const Result one = run(1, rows, in, out), two = run(2, rows, in, out);
    ASSERT_EQ(one.values.size(), two.values.size());
    for (std::size_t i = 0; i < one.values.size(); ++i)
      ASSERT_TRUE(same_bits(one.values[i], two.values[i])) << rows << " x " << in << " -> " << out << " value " << i;
    EXPECT_GT(two.workspace, one.workspace);
  }
  set_threads(before);
}

TEST(Linear, SameBitsOnOneThreadAndTwo) {
  expect_linear_same_bits_on_one_thread_and_two<float>(Accumulate::f32);
  expect_linear_same_bits_on_one_thread_and_two<double>(Accumulate::f32);
  expect_linear_same_bits_on_one_thread_and_two<bf16>(Accumulate::f32);
  expect_linear_same_bits_on_one_thread_and_two<f16>(Accumulate::f32);
  expect_linear_same_bits_on_one_thread_and_two<dd>(Accumulate::f32);
}

// Every parameter of a model with its path ("2/attn/out_proj.weight"), in params() order.
template <class T> void collect_params(Layer<T>& layer, const std::string& path, std::map<std::string, Param<T>*>& out) {
  const auto children = layer.children();
  if (children.empty()) {
    for (Param<T>* p : layer.params()) out[path + "/" + p->name] = p;
    return;
  }
  for (const auto& [name, child] : children) collect_params(*child, path + "/" + name, out);
}

template <class T> std::map<std::string, Param<T>*> model_params(Sequential<T>& model) {
  std::map<std::string, Param<T>*> all;
  for (std::size_t i = 0; i < model.size(); ++i) collect_params(model.layer(i), std::to_string(i), all);
  return all;
}

double sample_std(const Tensor<float>& t) {
  double sum = 0, squares = 0;
  for (index_t i = 0; i < t.numel(); ++i) sum += t[i], squares += double(t[i]) * t[i];
  const double n = static_cast<double>(t.numel()), mean = sum / n;
  return std::sqrt(squares / n - mean * mean);
}

// a b + c as GCC compiles the layers' sums: fused (one rounding) where W has a hardware FMA, -ffp-contract=fast
// being its default for C++.
template <class W> W fused(const W& a, const W& b, const W& c) {
  if constexpr (std::is_floating_point_v<W>) return std::fma(a, b, c);
  else return W(W(a * b) + c);
}

// A layer norm over features (area 1) forms its sums for many channels or groups at once: the bits must be those
// of the group-by-group and channel-by-channel LaneSums it replaces, in which each sample or channel adds its one
// value to the first lane and the other lanes add zeros: a sum in order from 0, each product fused into it as GCC
// fused it there. x^ comes from a probe layer with gamma 1 and beta 0 (or none) on the same x, whose output is x^
// itself (rounded once into T = W); the statistics are the forward's, spelled out here and checked against it.
// gamma is not 1, so that a product g dy fused into a sum or not shows.
template <class T> void expect_layer_norm_sums_in_order(index_t groups, bool affine) {
  using W = wide_t<T>;
  const index_t n = 150, channels = 80, per_group = channels / groups;  // a block edge (64) inside a group
  const Accumulate f32 = Accumulate::f32;
  MemoryLedger ledger;
  MemoryLedger::Scope scope(ledger);
  GroupNorm<T> probe("probe", channels, groups, 1e-5, affine), norm("ln", channels, groups, 1e-5, affine);
  Rng rng(4);
  probe.initialize(rng);
  norm.initialize(rng);
  if (affine)
    for (Param<T>* p : norm.params())
      for (index_t c = 0; c < channels; ++c) p->value[c] = round_to<T>(1.0 + 0.5 * rng.normal());
  auto g_at = [&](index_t c) { return affine ? round_to<W>(norm.params()[0]->value[c]) : W(1); };
  Tensor<T> x(Shape{n, channels}, MemoryCategory::workspace), dy(Shape{n, channels}, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) {
    x[i] = round_to<T>(3.0 * rng.normal() + 1.0);
    dy[i] = round_to<T>(rng.normal());
  }
  const std::vector<T> dy_values(dy.data(), dy.data() + dy.numel());
  const Tensor<T> y = probe.forward(x, RunContext{});  // x^
  norm.forward(x, RunContext{});
  const Tensor<T> dx = norm.backward(dy, RunContext{}, true);
  auto d_at = [&](index_t at) { return round_to<W>(dy_values[static_cast<std::size_t>(at)]); };
  auto xhat_at = [&](index_t at) { return round_to<W>(y[at]); };
  for (index_t c = 0; c < (affine ? channels : 0); ++c) {  // parameter gradients: the samples in order
    W sum_dy = W(0), sum_dy_xhat = W(0);
    for (index_t s = 0; s < n; ++s) {
      sum_dy = W(sum_dy + d_at(s * channels + c));
      sum_dy_xhat = fused(d_at(s * channels + c), xhat_at(s * channels + c), sum_dy_xhat);
    }
    EXPECT_TRUE(same_bits(norm.params()[0]->grad[c], round_to<T>(sum_dy_xhat))) << c;
    EXPECT_TRUE(same_bits(norm.params()[1]->grad[c], round_to<T>(sum_dy))) << c;
  }
  const W count = round_to<W>(static_cast<double>(per_group)), eps = round_to<W>(1e-5);
  for (index_t sg = 0; sg < n * groups; ++sg) {  // dx: each group's channels in order
    const index_t first = sg * per_group, c0 = (sg % groups) * per_group;
    LaneSum<T> sum, sum_squares;
    sum.add(per_group, f32, [&](index_t i) { return round_to<W>(x[first + i]); });
    const W m = sum.total(f32) / count;
    sum_squares.add(per_group, f32, [&](index_t i) {
      const W v = round_to<W>(x[first + i]) - m;
      return W(v * v);
    });
    const W inv_std = W(1) / sqrt_of(W(sum_squares.total(f32) / count + eps));
    W sum_d = W(0), sum_d_xhat = W(0);
    for (index_t k = 0; k < per_group; ++k) {
      const W xhat = W((round_to<W>(x[first + k]) - m) * inv_std), g = g_at(c0 + k), d = d_at(first + k);
      ASSERT_TRUE(same_bits(round_to<T>(xhat), y[first + k])) << "the statistics spelled out here are the forward's";
      sum_d = fused(g, d, sum_d);
      sum_d_xhat = fused(W(g * d), xhat, sum_d_xhat);
    }
    const W mean_d = sum_d / count, mean_d_xhat = sum_d_xhat / count;
    for (index_t k = 0; k < per_group; ++k) {  // (g dy - mean_d - x^ mean_d_xhat) / sigma, fused twice
      const W r = fused(W(-xhat_at(first + k)), mean_d_xhat, fused(g_at(c0 + k), d_at(first + k), W(-mean_d)));
      EXPECT_TRUE(same_bits(dx[first + k], round_to<T>(W(r * inv_std)))) << sg << " " << k;
    }
  }
}

TEST(GroupNorm, OneValuePerChannelSumsTheSamplesInOrder) {
  for (index_t groups : {1, 8})
    for (bool affine : {true, false}) {  // without affine, backward reads x^ from the kept output
      expect_layer_norm_sums_in_order<float>(groups, affine);
      expect_layer_norm_sums_in_order<double>(groups, affine);
      expect_layer_norm_sums_in_order<dd>(groups, affine);
    }
}

// "init": "gpt2" on a 4-block Transformer: weights N(0, 0.02), the residual branches' last projections
// N(0, 0.02 / sqrt(8)), biases 0, layer norms untouched; the same values in every precision (drawn in double).
TEST(ModelFactory, Gpt2InitialisationScalesTheResidualBranches) {
  const auto corpus = std::filesystem::temp_directory_path() / "lowmem-gpt2-init.txt";
  std::ofstream(corpus) << std::string(4000, 'a') + "bcdefgh";
  auto spec = [&](const std::string& init) {
    nlohmann::json model = {{"arch", "transformer"}, {"depth", 4}, {"width", 64}, {"heads", 4}};
    if (!init.empty()) model["init"] = init;
    const nlohmann::json config = {
        {"model", model},
        {"data", {{"dataset", "text"}, {"path", corpus.string()}, {"level", "byte"}, {"seq_len", 16}}},
        {"train", {{"optimizer", {{"lr", 0.1}}}}}};
    return parse_run_config(config, "").model;
  };
  auto built = [](const ModelSpec& s) {
    auto model = std::make_unique<Sequential<float>>(build_model<float>(s));
    initialize_model(*model, s, 7);
    return model;
  };
  const ModelSpec gpt2 = spec("gpt2");
  const auto model = built(gpt2);
  auto params = model_params(*model);
  const double branch = 0.02 / std::sqrt(8.0);
  EXPECT_NEAR(sample_std(params.at("0/weight")->value), 0.02, 0.001);  // embedding (256 x 64)
  EXPECT_NEAR(sample_std(params.at("1/weight")->value), 0.02, 0.002);  // positions (16 x 64)
  std::size_t checked = 0;
  for (const auto& [path, p] : params) {
    if (path.find("/attn/in_proj_weight") != std::string::npos || path.ends_with("/fc1/weight")) {
      EXPECT_NEAR(sample_std(p->value), 0.02, 0.001) << path;
    }
    if (path.ends_with("/attn/out_proj.weight") || path.ends_with("/fc2/weight")) {
      EXPECT_NEAR(sample_std(p->value), branch, 0.0005) << path;
      ++checked;
    }
    if (path.ends_with("bias") && path.find("ln") == std::string::npos) {
      for (index_t i = 0; i < p->value.numel(); ++i) ASSERT_EQ(p->value[i], 0.0f) << path;
    }
    if (path.find("/ln1/weight") != std::string::npos) {
      for (index_t i = 0; i < p->value.numel(); ++i) ASSERT_EQ(p->value[i], 1.0f) << path;
    }
  }
  EXPECT_EQ(checked, 8u);  // 4 blocks x (out_proj, fc2)
  // The default keeps each layer's own: N(0, 1) embeddings.
  EXPECT_NEAR(sample_std(model_params(*built(spec(""))).at("0/weight")->value), 1.0, 0.05);
  // f64 draws the same doubles: rounded to f32, they are the f32 model's.
  Sequential<double> wide = build_model<double>(gpt2);
  initialize_model(wide, gpt2, 7);
  const auto wide_params = model_params(wide);
  for (const auto& [path, p] : params)
    for (index_t i = 0; i < p->value.numel(); ++i)
      ASSERT_EQ(p->value[i], static_cast<float>(wide_params.at(path)->value[i])) << path << " " << i;
  std::filesystem::remove(corpus);
}

TEST(ModelFactory, ResNetDepthMustBe6nPlus4) {
  try {
    resnet_spec(20, 1, 16);
    FAIL() << "depth 20 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/model/depth"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("6 n + 4"), std::string::npos) << e.what();
  }
}

// What the reference CNN keeps for backward, by hand: each conv keeps its input, each BN its input and two
// per-channel float vectors, each ReLU its output (shared with the next conv or pool: counted once), each max
// pool int32 positions, the linear layer its input (shared with flatten's view of the pool output), the loss its
// probabilities. Peak of saved activations = all of it at once, at the end of the forward pass.
TEST(MemoryExact, ReferenceCnnSavedActivationsByHand) {
  const nlohmann::json config = {
      {"model",
       {{"input", {1, 28, 28}},
        {"layers",
         {{{"type", "conv"}, {"out", 32}, {"pad", 1}}, {{"type", "batchnorm"}}, {{"type", "relu"}},
          {{"type", "conv"}, {"out", 32}, {"pad", 1}}, {{"type", "batchnorm"}}, {{"type", "relu"}},
          {{"type", "maxpool"}},
          {{"type", "conv"}, {"out", 64}, {"pad", 1}}, {{"type", "batchnorm"}}, {{"type", "relu"}},
          {{"type", "conv"}, {"out", 64}, {"pad", 1}}, {{"type", "batchnorm"}}, {{"type", "relu"}},
          {{"type", "maxpool"}}, {{"type", "flatten"}}, {{"type", "linear"}, {"out", 10}}}}}},
      {"data", {{"dataset", "synthetic"}}},
      {"train", {{"batch", 2}, {"optimizer", {{"lr", 0.1}}}}}};
  const RunConfig run = parse_run_config(config, "");
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  Trainer<float> trainer(run, ledger);
  trainer.forward_backward(trainer.empty_batch(2), std::vector<std::int32_t>(2, 0));
  const std::size_t n = 2, f = 4;
  const std::size_t big = 32 * 28 * 28, small = 64 * 14 * 14;
  const std::size_t expected = n * f * (1 * 28 * 28)         // conv1 input (the batch)
                               + n * f * big + 2 * 32 * f     // bn1 input (conv1 output), mean and 1/std
                               + n * f * big                  // relu1 output = conv2 input
                               + n * f * big + 2 * 32 * f     // bn2
                               + n * f * big                  // relu2 output (pool1 keeps only positions)
                               + n * 4 * (32 * 14 * 14)       // pool1 positions (int32)
                               + n * f * (32 * 14 * 14)       // conv3 input (pool1 output)
                               + n * f * small + 2 * 64 * f   // bn3
                               + n * f * small                // relu3 output = conv4 input
                               + n * f * small + 2 * 64 * f   // bn4
                               + n * f * small                // relu4 output
                               + n * 4 * (64 * 7 * 7)         // pool2 positions
                               + n * f * (64 * 7 * 7)         // linear input (flatten is a view of pool2 output)
                               + n * f * 10;                  // softmax probabilities
  EXPECT_EQ(ledger.peak(MemoryCategory::saved_activations), expected);
}

// ReLU in f16 and bf16 works on the values' bits (no conversion to float): on every one of the 65,536 bit
// patterns, forward and backward give what the comparisons in float give (NaN kept forward, +0 where the unit is
// off, -0 and -inf included).
template <class T> void check_relu_bits() {
  MemoryLedger ledger;
  MemoryLedger::Scope scope(ledger);
  const index_t n = 65536;
  Tensor<T> x(Shape{n}, MemoryCategory::workspace), dy(Shape{n}, MemoryCategory::workspace);
  for (index_t i = 0; i < n; ++i) {
    x[i] = Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>(i));
    dy[i] = Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>((i * 40503) & 0xFFFF));
  }
  LeakyRelu<T> relu("relu", 0.0);
  RunContext ctx;
  const Tensor<T> y = relu.forward(x.clone(MemoryCategory::workspace), ctx);
  const Tensor<T> dx = relu.backward(dy.clone(MemoryCategory::workspace), ctx, true);
  auto bits = [](T v) { return Eigen::numext::bit_cast<std::uint16_t>(v); };
  for (index_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    const T want_y = v > 0.0f || std::isnan(v) ? x[i] : T(0.0f);
    ASSERT_EQ(bits(y[i]), bits(want_y)) << "x bits " << i;
    const float out = static_cast<float>(want_y);
    const T want_dx = out > 0.0f ? dy[i] : T(0.0f);
    ASSERT_EQ(bits(dx[i]), bits(want_dx)) << "x bits " << i;
  }
}
TEST(ReluBits, Float16EveryBitPattern) { check_relu_bits<f16>(); }
TEST(ReluBits, Bfloat16EveryBitPattern) { check_relu_bits<bf16>(); }

}  // namespace
}  // namespace lowmem
