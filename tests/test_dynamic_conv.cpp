// Lightweight and dynamic convolutions beyond what the generic checker (layer_cases.cpp) sees: causality bit for bit
// in every precision, a case computed by hand, a dynamic convolution whose kernel projection ignores its input
// being the lightweight one, a dry run that allocates what a real one does (event by event) and keeps x and the
// kernels only, the same bits on one thread and two, and the shape errors, parameter names and flops.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "layers/dynamic_conv.hpp"
#include "layers/transformer_block.hpp"
#include "numerics/error.hpp"
#include "numerics/threads.hpp"
#include "layer_test_tools.hpp"

namespace lowmem {
namespace {

using testing::random_tensor;
using testing::randomize;
using testing::same_bits;

DynamicConvSpec spec(bool dynamic, index_t width, index_t heads, index_t kernel, bool bias = true) {
  return DynamicConvSpec{.width = width, .heads = heads, .kernel = kernel, .dynamic = dynamic, .bias = bias};
}

template <class T> class DynamicConvEveryPrecision : public ::testing::Test {};
using Precisions = ::testing::Types<float, double, f16, bf16, mp, dd>;
TYPED_TEST_SUITE(DynamicConvEveryPrecision, Precisions);

// Position t sees positions t - K + 1 .. t only: changing x at t leaves every output before t unchanged, bit for
// bit, and every output from t + K on too (a window of K taps); the output at t moves (every tap's softmax weight is
// positive). K = 3 on T = 6, and K = 8 on T = 6 (every window reaches into the padding).
TYPED_TEST(DynamicConvEveryPrecision, OutputsSeeTheirWindowOnly) {
  using T = TypeParam;
  const index_t n = 2, len = 6, f = 4;
  for (bool dynamic : {false, true})
    for (index_t k : {3, 8}) {
      DynamicConv<T> layer("conv", spec(dynamic, f, 2, k));
      Rng rng(3);
      randomize(layer, rng);
      const Tensor<T> x = random_tensor<T>(Shape{n, len, f}, rng);
      const RunContext eval{false, Accumulate::f32};
      const Tensor<T> y = layer.forward(x, eval);
      const Tensor<T> y_training = layer.forward(x, RunContext{true, Accumulate::f32});
      for (index_t i = 0; i < y.numel(); ++i) ASSERT_TRUE(same_bits(y[i], y_training[i])) << i;
      for (index_t t = 0; t < len; ++t) {
        Tensor<T> changed = x.clone(MemoryCategory::workspace);
        for (index_t s = 0; s < n; ++s)
          for (index_t c = 0; c < f; ++c) {
            const index_t at = (s * len + t) * f + c;
            changed[at] = round_to<T>(to_double(x[at]) + 1.0 + c);
          }
        const Tensor<T> z = layer.forward(changed, eval);
        for (index_t s = 0; s < n; ++s)
          for (index_t u = 0; u < len; ++u) {
            bool moved = false;
            for (index_t c = 0; c < f; ++c) {
              const index_t at = (s * len + u) * f + c;
              moved = moved || !same_bits(y[at], z[at]);
            }
            const bool sees = u >= t && u < t + k;
            if (!sees) {
              EXPECT_FALSE(moved) << "dynamic " << dynamic << " K " << k << ": x at " << t << " moved y at " << u;
            }
            if (u == t) {
              EXPECT_TRUE(moved) << "dynamic " << dynamic << " K " << k << ": y at " << t << " ignored its input";
            }
          }
      }
    }
}

// By hand, in double: one head, one channel, K = 2, w = (0, ln 3): W = softmax(w) = (1/4, 3/4); bias 0.5.
// x = (1, 2, 4): y_0 = 3/4 1 + 0.5 (tap 0 reads the padding), y_1 = 1/4 1 + 3/4 2 + 0.5, y_2 = 1/4 2 + 3/4 4 + 0.5.
// dy = (0, 0, 1): db = 1; dW = (x_1, x_2) = (2, 4), sum W dW = 1/2 + 3 = 3.5, dw = W (dW - 3.5) = (-3/8, 3/8);
// dx_u = sum_j W_j dy_{u + 1 - j}: dx = (0, W_0, W_1) = (0, 1/4, 3/4).
TEST(DynamicConv, HandComputedLightweight) {
  DynamicConv<double> layer("conv", spec(false, 1, 1, 2));
  const auto params = layer.params();
  ASSERT_EQ(params.size(), 2u);
  params[0]->value[0] = 0.0;
  params[0]->value[1] = std::log(3.0);
  params[1]->value[0] = 0.5;
  Tensor<double> x(Shape{1, 3, 1}, MemoryCategory::workspace);
  x[0] = 1, x[1] = 2, x[2] = 4;
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<double> y = layer.forward(x, ctx);
  ASSERT_EQ(y.shape(), (Shape{1, 3, 1}));
  const double want[3] = {0.75 + 0.5, 0.25 + 1.5 + 0.5, 0.5 + 3.0 + 0.5};
  for (index_t i = 0; i < 3; ++i) EXPECT_NEAR(y[i], want[i], 1e-15) << "y[" << i << "]";
  Tensor<double> dy(y.shape(), MemoryCategory::workspace);
  dy[2] = 1;
  const Tensor<double> dx = layer.backward(dy, ctx, true);
  EXPECT_EQ(params[1]->grad[0], 1.0);
  EXPECT_NEAR(params[0]->grad[0], -0.375, 1e-15);
  EXPECT_NEAR(params[0]->grad[1], 0.375, 1e-15);
  EXPECT_EQ(dx[0], 0.0);
  EXPECT_NEAR(dx[1], 0.25, 1e-15);
  EXPECT_NEAR(dx[2], 0.75, 1e-15);
}

// A dynamic convolution whose projection weight is 0 predicts the kernel b_k at every position: with b_k = the
// lightweight one's w, the outputs are the same bits (the same logits, softmax and sums), the input and output-bias
// gradients too (the projection adds dl 0 = 0 to dx), and b_k's gradient, sum over positions of W (dW_t - W.dW_t),
// equals the lightweight W (sum dW_t - W.sum dW_t) up to the order of the sums.
TEST(DynamicConv, ADynamicKernelThatIgnoresItsInputIsTheLightweightOne) {
  const index_t n = 3, len = 7, f = 6, heads = 3, k = 4;
  DynamicConv<double> light("light", spec(false, f, heads, k)), dyn("dynamic", spec(true, f, heads, k));
  Rng rng(5);
  randomize(light, rng);
  const auto lp = light.params(), dp = dyn.params();  // weight, bias; weight_linear.weight, .bias, bias
  ASSERT_EQ(dp.size(), 3u);
  for (index_t i = 0; i < heads * k; ++i) dp[1]->value[i] = lp[0]->value[i];
  for (index_t c = 0; c < f; ++c) dp[2]->value[c] = lp[1]->value[c];
  const Tensor<double> x = random_tensor<double>(Shape{n, len, f}, rng);
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<double> y_light = light.forward(x, ctx), y_dyn = dyn.forward(x, ctx);
  for (index_t i = 0; i < y_light.numel(); ++i) ASSERT_EQ(y_light[i], y_dyn[i]) << i;
  const Tensor<double> dy = random_tensor<double>(y_light.shape(), rng);
  const Tensor<double> dx_light = light.backward(dy, ctx, true), dx_dyn = dyn.backward(dy, ctx, true);
  for (index_t i = 0; i < dx_light.numel(); ++i) ASSERT_EQ(dx_light[i], dx_dyn[i]) << i;
  for (index_t c = 0; c < f; ++c) ASSERT_EQ(lp[1]->grad[c], dp[2]->grad[c]) << c;
  double largest = 0;
  for (index_t i = 0; i < heads * k; ++i) largest = std::max(largest, std::fabs(lp[0]->grad[i]));
  ASSERT_GT(largest, 0.1);
  for (index_t i = 0; i < heads * k; ++i) EXPECT_NEAR(dp[1]->grad[i], lp[0]->grad[i], 1e-13 * largest) << i;
  // The projection's weight does get a gradient: dl^T x.
  double projection = 0;
  for (index_t i = 0; i < dp[0]->grad.numel(); ++i) projection = std::max(projection, std::fabs(dp[0]->grad[i]));
  EXPECT_GT(projection, 0.1);
}

// The ledger events of a training or evaluation step (testing::layer_step_events). 4 samples x 64 positions x 16
// features x 8 taps: enough for the loops to run on the threads.
template <class T> std::vector<MemoryEvent> ledger_events(bool dynamic, bool dry, Accumulate mode, bool training) {
  auto make = [dynamic] { return std::make_unique<DynamicConv<T>>("conv", spec(dynamic, 16, 4, 8)); };
  return testing::layer_step_events<T>(make, Shape{4, 64, 16}, dry, mode, training);
}

TYPED_TEST(DynamicConvEveryPrecision, DryRunAllocatesWhatARealRunDoesAndKeepsXAndTheKernels) {
  using T = TypeParam;
  std::vector<Accumulate> modes{Accumulate::f32};
  if constexpr (is_16bit<T>) modes.push_back(Accumulate::storage);  // sums in T: no G buffers
  for (bool dynamic : {false, true})
    for (Accumulate mode : modes)
      for (bool training : {true, false}) {
        const std::vector<MemoryEvent> real = ledger_events<T>(dynamic, false, mode, training);
        const std::vector<MemoryEvent> dry = ledger_events<T>(dynamic, true, mode, training);
        ASSERT_EQ(real.size(), dry.size()) << "dynamic " << dynamic << ", training " << training;
        for (std::size_t i = 0; i < real.size(); ++i)
          EXPECT_TRUE(testing::same_event(real[i], dry[i])) << "event " << i << ", dynamic " << dynamic << ", training "
                                                            << training << ": " << real[i].bytes << " B against "
                                                            << dry[i].bytes << " B";
        const auto saved = [](MemoryCategory c) { return c == MemoryCategory::saved_activations; };
        std::size_t current = 0, peak = 0;
        for (const MemoryEvent& e : real) {  // the saved bytes, replayed
          if (e.kind != MemoryEvent::release && saved(e.category)) current += e.bytes;
          if (e.kind != MemoryEvent::allocate && saved(e.from)) current -= e.bytes;
          peak = std::max(peak, current);
        }
        // Kept for backward: x (N T F) and the kernels, (N T H K) dynamic or (H K) lightweight; evaluation nothing.
        const std::size_t kernels = dynamic ? 4 * 64 * 4 * 8 : 4 * 8;
        EXPECT_EQ(peak, training ? (4 * 64 * 16 + kernels) * sizeof(T) : 0) << "dynamic " << dynamic;
      }
}

// Each output value and each kernel-gradient entry is summed wholly on one thread, in one order: one thread and two
// give the same bits (training and evaluation).
template <class T> void expect_same_bits_on_one_thread_and_two(bool dynamic, Accumulate mode) {
  auto run = [&](int threads) {
    set_threads(threads);
    DynamicConv<T> layer("conv", spec(dynamic, 16, 4, 8));
    Rng rng(2);
    randomize(layer, rng);
    const Tensor<T> x = random_tensor<T>(Shape{4, 64, 16}, rng);
    const RunContext ctx{true, mode};
    const Tensor<T> y = layer.forward(x, ctx);
    const Tensor<T> dx = layer.backward(random_tensor<T>(y.shape(), rng), ctx, true);
    const Tensor<T> y_eval = layer.forward(x, RunContext{false, mode});
    std::vector<T> values;
    std::vector<const Tensor<T>*> outputs{&y, &dx, &y_eval};
    for (Param<T>* p : layer.params()) outputs.push_back(&p->grad);
    for (const Tensor<T>* t : outputs) values.insert(values.end(), t->data(), t->data() + t->numel());
    return values;
  };
  const int before = omp_get_max_threads();
  const std::vector<T> one = run(1), two = run(2);
  set_threads(before);
  ASSERT_EQ(one.size(), two.size());
  for (std::size_t i = 0; i < one.size(); ++i) ASSERT_TRUE(same_bits(one[i], two[i])) << "dynamic " << dynamic << " " << i;
}

TEST(DynamicConv, SameBitsOnOneThreadAndTwo) {
  for (bool dynamic : {false, true}) {
    expect_same_bits_on_one_thread_and_two<float>(dynamic, Accumulate::f32);
    expect_same_bits_on_one_thread_and_two<bf16>(dynamic, Accumulate::f32);
    expect_same_bits_on_one_thread_and_two<f16>(dynamic, Accumulate::storage);
    expect_same_bits_on_one_thread_and_two<dd>(dynamic, Accumulate::f32);
  }
}

void expect_refused(const DynamicConvSpec& s, const std::vector<std::string>& words) {
  try {
    DynamicConv<float> refused("/model/layers/2 (dynamic_conv)", s);
    FAIL() << "accepted: heads " << s.heads << ", width " << s.width << ", kernel " << s.kernel;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/model/layers/2"), std::string::npos) << what;
    for (const std::string& w : words) EXPECT_NE(what.find(w), std::string::npos) << what;
  }
}

TEST(DynamicConv, ShapeErrorsNameTheLayerAndParametersAreNamedAsFairseqs) {
  expect_refused(spec(true, 6, 4, 3), {"4 heads", "width 6"});
  expect_refused(spec(false, 6, 4, 3), {"4 heads", "width 6"});
  expect_refused(spec(true, 6, 2, 0), {"kernel 0"});
  expect_refused(spec(false, 6, 2, -1), {"kernel -1"});
  for (bool dynamic : {false, true}) {
    DynamicConv<float> layer("/model/layers/1 (conv)", spec(dynamic, 4, 2, 3));
    EXPECT_STREQ(layer.kind(), dynamic ? "dynamic_conv" : "lightweight_conv");
    EXPECT_EQ(layer.output_shape(Shape{5, 4}), (Shape{5, 4}));
    for (const Shape& bad : {Shape{4}, Shape{5, 6}, Shape{1, 5, 4}}) {
      try {
        layer.output_shape(bad);
        FAIL() << bad.str() << " accepted";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("/model/layers/1"), std::string::npos) << e.what();
      }
    }
    std::vector<std::string> names;
    std::vector<Shape> shapes;
    for (Param<float>* p : layer.params()) names.push_back(p->name), shapes.push_back(p->value.shape());
    if (dynamic) {
      EXPECT_EQ(names, (std::vector<std::string>{"weight_linear.weight", "weight_linear.bias", "bias"}));
      EXPECT_EQ(shapes, (std::vector<Shape>{Shape{6, 4}, Shape{6}, Shape{4}}));
      // T = 5, F = 4, H K = 6: the convolution 5 x 4 x 3 multiply-adds, the projection 5 x 4 x 6, the softmax 3 x 5 x 6.
      EXPECT_EQ(layer.forward_flops(Shape{5, 4}), 2.0 * 60 + 2.0 * 120 + 90);
    } else {
      EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
      EXPECT_EQ(shapes, (std::vector<Shape>{Shape{2, 3}, Shape{4}}));
      EXPECT_EQ(layer.forward_flops(Shape{5, 4}), 2.0 * 60);
    }
  }
  DynamicConv<float> no_bias("conv", spec(false, 4, 2, 3, false));
  EXPECT_EQ(no_bias.params().size(), 1u);
  // Xavier uniform: |w| <= sqrt(6 / (K + H K)) = sqrt(2 / 3) for the lightweight (2, 3), sqrt(6 / (F + H K)) =
  // sqrt(0.6) for the dynamic (6, 4); biases 0.
  for (bool dynamic : {false, true}) {
    DynamicConv<double> layer("conv", spec(dynamic, 4, 2, 3));
    Rng rng(11);
    layer.initialize(rng);
    const double bound = dynamic ? std::sqrt(0.6) : std::sqrt(2.0 / 3.0);
    double largest = 0;
    for (index_t i = 0; i < layer.params()[0]->value.numel(); ++i)
      largest = std::max(largest, std::fabs(layer.params()[0]->value[i]));
    EXPECT_LE(largest, bound);
    EXPECT_GT(largest, 0.4 * bound);
    for (std::size_t p = 1; p < layer.params().size(); ++p)
      for (index_t i = 0; i < layer.params()[p]->value.numel(); ++i) EXPECT_EQ(layer.params()[p]->value[i], 0.0);
  }
}

// The conv block is the Transformer block with its attention swapped for the convolution: children named as the
// PyTorch twin's modules, the convolution's width the block's.
TEST(DynamicConv, ConvBlockHasTheConvolutionAsItsTokenMixer) {
  TransformerBlock<float> block("block", spec(true, 8, 2, 5, false), 3, 1e-5);
  EXPECT_STREQ(block.kind(), "conv_block");
  std::vector<std::string> names;
  for (auto& [name, child] : block.children()) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"ln1", "conv", "ln2", "fc1", "gelu", "fc2"}));
  EXPECT_STREQ(block.children()[1].second->kind(), "dynamic_conv");
  EXPECT_EQ(block.children()[1].second->params()[0]->value.shape(), (Shape{10, 8}));
  TransformerBlock<float> attention("block", 8, 2, 3, 1e-5);
  EXPECT_STREQ(attention.kind(), "transformer_block");
  EXPECT_EQ(attention.children()[1].first, "attn");
}

}  // namespace
}  // namespace lowmem
