// Multi-head causal self-attention beyond what the generic checker (layer_cases.cpp) sees: causality bit for bit in
// every precision, two cases computed by hand, a dry run that allocates what a real one does (event by event), the
// same bits on one thread and two, and its shape errors and PyTorch names.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "layers/attention.hpp"
#include "numerics/error.hpp"
#include "numerics/threads.hpp"
#include "layer_test_tools.hpp"

namespace lowmem {
namespace {

using testing::random_tensor;
using testing::randomize;
using testing::same_bits;

template <class T> class AttentionEveryPrecision : public ::testing::Test {};
using Precisions = ::testing::Types<float, double, f16, bf16, mp, dd>;
TYPED_TEST_SUITE(AttentionEveryPrecision, Precisions);

// Position t sees positions <= t only: changing x at t leaves every output before t unchanged, bit for bit (a masked
// score has probability exactly 0, and 0 times a value adds nothing), and changes the output at t.
TYPED_TEST(AttentionEveryPrecision, OutputsBeforeAPositionDoNotSeeIt) {
  using T = TypeParam;
  const index_t n = 2, len = 5, f = 4;
  Attention<T> layer("attention", f, 2);
  Rng rng(3);
  randomize(layer, rng);
  const Tensor<T> x = random_tensor<T>(Shape{n, len, f}, rng);
  const RunContext eval{false, Accumulate::f32};
  const Tensor<T> y = layer.forward(x, eval);
  // (Evaluation holds P per thread, training per (sample, head): the same numbers.)
  const Tensor<T> y_training = layer.forward(x, RunContext{true, Accumulate::f32});
  for (index_t i = 0; i < y.numel(); ++i) ASSERT_TRUE(same_bits(y[i], y_training[i])) << i;
  for (index_t t = 0; t < len; ++t) {
    Tensor<T> changed = x.clone(MemoryCategory::workspace);
    for (index_t s = 0; s < n; ++s)
      for (index_t i = 0; i < f; ++i) changed[(s * len + t) * f + i] = round_to<T>(to_double(x[(s * len + t) * f + i]) + 1.0 + i);
    const Tensor<T> z = layer.forward(changed, eval);
    for (index_t s = 0; s < n; ++s) {
      for (index_t i = 0; i < t * f; ++i)
        ASSERT_TRUE(same_bits(y[s * len * f + i], z[s * len * f + i])) << "sample " << s << ", x changed at " << t;
      bool moved = false;
      for (index_t i = 0; i < f; ++i) moved = moved || !(y[(s * len + t) * f + i] == z[(s * len + t) * f + i]);
      EXPECT_TRUE(moved) << "sample " << s << ": the output at " << t << " ignored its own input";
    }
  }
}

// By hand, in double: T = 2, F = 2, q = k = v = x (W_in = [I; I; I]), W_out = I, x_0 = (1, 0), x_1 = (1, 1).
// Position 0 sees only itself: P_00 = 1, so o_0 = v_0 = x_0 in any number of heads.
// One head (d = 2): s_10 = x_1.x_0 / sqrt 2 = 1/sqrt 2, s_11 = x_1.x_1 / sqrt 2 = sqrt 2, so P_11 = 1 / (1 + exp(s_10 -
//   s_11)) = sigma(1/sqrt 2) (sigma the logistic function) and o_1 = P_10 x_0 + P_11 x_1 = (1, sigma(1/sqrt 2)).
// Two heads (d = 1, head h on feature h): head 0 scores s_10 = s_11 = 1, P = (1/2, 1/2), o_1[0] = 1/2 + 1/2 = 1;
//   head 1 scores s_10 = 0, s_11 = 1, o_1[1] = P_11 = sigma(1).
// Biases: b_v = (0, 1) moves every value, hence every o (the weights of a row sum to 1), by (0, 1); b_k = (3, -7)
// adds q_t.b_k (per head) to every score of row t, which the softmax ignores; b_out = (0.5, -0.25) adds to y.
// So y_0 = (1.5, 0.75), y_1 = (1.5, sigma + 0.75). With dy_0 = 0, dy_1 = (0, 1): db_out = sum_t dy_t = (0, 1),
// db_v = sum_t dy_t W_out (again because the weights sum to 1) = (0, 1), and db_k = 0 (the softmax ignores b_k).
void expect_hand_computed(index_t heads, double sigma) {
  Attention<double> layer("attention", 2, heads);
  const auto params = layer.params();
  Tensor<double>& w_in = params[0]->value;
  for (index_t r = 0; r < 6; ++r)
    for (index_t c = 0; c < 2; ++c) w_in[r * 2 + c] = r % 2 == c ? 1.0 : 0.0;
  const double b_in[6] = {0, 0, 3, -7, 0, 1};
  for (index_t i = 0; i < 6; ++i) params[1]->value[i] = b_in[i];
  const double w_out[4] = {1, 0, 0, 1}, b_out[2] = {0.5, -0.25};
  for (index_t i = 0; i < 4; ++i) params[2]->value[i] = w_out[i];
  for (index_t i = 0; i < 2; ++i) params[3]->value[i] = b_out[i];
  Tensor<double> x(Shape{1, 2, 2}, MemoryCategory::workspace);
  const double xs[4] = {1, 0, 1, 1};
  for (index_t i = 0; i < 4; ++i) x[i] = xs[i];
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<double> y = layer.forward(x, ctx);
  ASSERT_EQ(y.shape(), (Shape{1, 2, 2}));
  const double want[4] = {1.5, 0.75, 1.5, sigma + 0.75};
  for (index_t i = 0; i < 4; ++i) EXPECT_NEAR(y[i], want[i], 1e-15) << heads << " heads, y[" << i << "]";
  Tensor<double> dy(y.shape(), MemoryCategory::workspace);
  dy[3] = 1;
  layer.backward(dy, ctx, true);
  EXPECT_EQ(params[3]->grad[0], 0.0);
  EXPECT_EQ(params[3]->grad[1], 1.0);
  const Tensor<double>& db_in = params[1]->grad;
  EXPECT_NEAR(db_in[4], 0.0, 1e-15) << heads << " heads";
  EXPECT_NEAR(db_in[5], 1.0, 1e-15) << heads << " heads";
  EXPECT_NEAR(db_in[2], 0.0, 1e-15) << heads << " heads";
  EXPECT_NEAR(db_in[3], 0.0, 1e-15) << heads << " heads";
}

TEST(Attention, HandComputedOneHead) { expect_hand_computed(1, 1 / (1 + std::exp(-1 / std::sqrt(2.0)))); }
TEST(Attention, HandComputedTwoHeads) { expect_hand_computed(2, 1 / (1 + std::exp(-1.0))); }

// The ledger events of a training or evaluation step (testing::layer_step_events). 4 samples x 2 heads x 64^2
// probabilities: enough for the products to run on the threads, whose buffers then count too.
template <class T> std::vector<MemoryEvent> ledger_events(bool dry, Accumulate mode, bool training) {
  return testing::layer_step_events<T>([] { return std::make_unique<Attention<T>>("attention", 8, 2); },
                                       Shape{4, 64, 8}, dry, mode, training);
}

TYPED_TEST(AttentionEveryPrecision, DryRunAllocatesWhatARealRunDoes) {
  using T = TypeParam;
  std::vector<Accumulate> modes{Accumulate::f32};
  if constexpr (is_16bit<T>) modes.push_back(Accumulate::storage);  // products on Eigen in T: other buffers
  for (Accumulate mode : modes)
    for (bool training : {true, false}) {
      const std::vector<MemoryEvent> real = ledger_events<T>(false, mode, training);
      const std::vector<MemoryEvent> dry = ledger_events<T>(true, mode, training);
      ASSERT_EQ(real.size(), dry.size()) << "training " << training;
      for (std::size_t i = 0; i < real.size(); ++i)
        EXPECT_TRUE(testing::same_event(real[i], dry[i]))
            << "event " << i << ", training " << training << ": " << real[i].bytes << " B against " << dry[i].bytes
            << " B";
      // Kept for backward: x (N T F), qkv (N T 3F), P (N H T T) and O (N T F).
      if (training) {
        const auto saved = [](MemoryCategory c) { return c == MemoryCategory::saved_activations; };
        std::size_t current = 0, peak = 0;
        for (const MemoryEvent& e : real) {  // the saved bytes, replayed
          if (e.kind != MemoryEvent::release && saved(e.category)) current += e.bytes;
          if (e.kind != MemoryEvent::allocate && saved(e.from)) current -= e.bytes;
          peak = std::max(peak, current);
        }
        EXPECT_EQ(peak, (4 * 64 * 8 * 5 + 4 * 2 * 64 * 64) * sizeof(T));
      } else {  // evaluation: P one (sample, head) per thread, never all of it
        for (const MemoryEvent& e : real) EXPECT_LT(e.bytes, 4 * 2 * 64 * 64 * sizeof(T)) << e.buffer;
      }
    }
}

// The products run per (sample, head), each wholly on one thread, and parameter gradients sum in one fixed order:
// one thread and two give the same bits (training and evaluation), and two hold more workspace (each thread its
// buffers: they were used).
template <class T> void expect_same_bits_on_one_thread_and_two(Accumulate mode) {
  struct Result {
    std::vector<T> values;
    std::size_t workspace;
  };
  auto run = [mode](int threads) {
    set_threads(threads);
    MemoryLedger ledger;
    MemoryLedger::Scope scope(ledger);
    Attention<T> layer("attention", 8, 2);
    Rng rng(2);
    randomize(layer, rng);
    const Tensor<T> x = random_tensor<T>(Shape{4, 64, 8}, rng);
    const RunContext ctx{true, mode};
    const Tensor<T> y = layer.forward(x, ctx);
    const Tensor<T> dx = layer.backward(random_tensor<T>(y.shape(), rng), ctx, true);
    const Tensor<T> y_eval = layer.forward(x, RunContext{false, mode});
    Result r{{}, ledger.peak(MemoryCategory::workspace)};
    std::vector<const Tensor<T>*> outputs{&y, &dx, &y_eval};
    for (Param<T>* p : layer.params()) outputs.push_back(&p->grad);
    for (const Tensor<T>* t : outputs) r.values.insert(r.values.end(), t->data(), t->data() + t->numel());
    return r;
  };
  const int before = omp_get_max_threads();
  const Result one = run(1), two = run(2);
  set_threads(before);
  ASSERT_EQ(one.values.size(), two.values.size());
  for (std::size_t i = 0; i < one.values.size(); ++i) ASSERT_TRUE(same_bits(one.values[i], two.values[i])) << i;
  EXPECT_GT(two.workspace, one.workspace);
}

TEST(Attention, SameBitsOnOneThreadAndTwo) {
  expect_same_bits_on_one_thread_and_two<float>(Accumulate::f32);
  expect_same_bits_on_one_thread_and_two<bf16>(Accumulate::f32);
  expect_same_bits_on_one_thread_and_two<f16>(Accumulate::storage);
  expect_same_bits_on_one_thread_and_two<dd>(Accumulate::f32);
}

TEST(Attention, ShapeErrorsNameTheLayerAndParametersArePyTorchs) {
  try {
    Attention<float> refused("/model/layers/2 (attention)", 6, 4);
    FAIL() << "4 heads accepted for width 6";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/model/layers/2"), std::string::npos) << what;
    EXPECT_NE(what.find("4 heads"), std::string::npos) << what;
    EXPECT_NE(what.find("width 6"), std::string::npos) << what;
  }
  Attention<float> layer("/model/layers/1 (attention)", 4, 2);
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
  for (Param<float>* p : layer.params()) names.push_back(p->name);
  EXPECT_EQ(names, (std::vector<std::string>{"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}));
  EXPECT_EQ(layer.params()[0]->value.shape(), (Shape{12, 4}));
  // T = 5, F = 4: projections 5 (12 + 4) 4 = 320 multiply-adds, Q K^T and P V 2 x 5 x 5 x 4 = 200.
  EXPECT_EQ(layer.forward_flops(Shape{5, 4}), 2.0 * (320 + 200));
}

}  // namespace
}  // namespace lowmem
