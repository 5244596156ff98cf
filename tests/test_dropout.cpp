// Dropout beyond the generic checker (tests/layer_cases.cpp): the share dropped, that the mask depends on the step
// and the sample's place in the whole batch only (so microbatches and recomputations draw alike), evaluation.
#include <gtest/gtest.h>

#include "layers/dropout.hpp"

namespace lowmem {
namespace {

Tensor<double> ones(const Shape& shape) {
  Tensor<double> x(shape, MemoryCategory::workspace);
  x.fill(1.0);
  return x;
}

TEST(Dropout, DropsAShareNearPAndScalesTheRest) {
  Dropout<double> layer("dropout", 0.3);
  Rng rng(1);
  layer.initialize(rng);
  const Tensor<double> y = layer.forward(ones(Shape{50, 40, 10}), RunContext{});
  index_t dropped = 0;
  for (index_t i = 0; i < y.numel(); ++i) {
    if (y[i] == 0) ++dropped;
    else ASSERT_DOUBLE_EQ(y[i], 1 / 0.7) << i;
  }
  // 20,000 Bernoulli(0.3) draws: standard deviation 65 around 6,000.
  EXPECT_NEAR(static_cast<double>(dropped), 6000.0, 325.0);
}

TEST(Dropout, MaskDependsOnStepAndSampleIndexOnly) {
  Dropout<double> layer("dropout", 0.5);
  Rng rng(2);
  layer.initialize(rng);
  RunContext ctx;
  ctx.step = 7;
  const Tensor<double> whole = layer.forward(ones(Shape{4, 6}), ctx);
  // The same step again (a recomputation, or backward's regenerated mask) gives the same values.
  const Tensor<double> again = layer.forward(ones(Shape{4, 6}), ctx);
  // Samples 2 and 3 as a microbatch of their own.
  RunContext slice = ctx;
  slice.first_sample = 2;
  const Tensor<double> second_half = layer.forward(ones(Shape{2, 6}), slice);
  for (index_t i = 0; i < 24; ++i) ASSERT_EQ(whole[i], again[i]) << i;
  for (index_t i = 0; i < 12; ++i) ASSERT_EQ(whole[12 + i], second_half[i]) << i;
  // The gradient goes through the same mask.
  const Tensor<double> dx = layer.backward(ones(Shape{4, 6}), ctx, true);
  for (index_t i = 0; i < 24; ++i) ASSERT_EQ(dx[i], whole[i]) << i;
  // Another step draws another mask.
  RunContext next = ctx;
  next.step = 8;
  const Tensor<double> other = layer.forward(ones(Shape{4, 6}), next);
  bool differs = false;
  for (index_t i = 0; i < 24; ++i) differs = differs || other[i] != whole[i];
  EXPECT_TRUE(differs);
}

TEST(Dropout, EvaluationIsTheIdentityAndPMustBeBelowOne) {
  Dropout<float> layer("/model/layers/3 (dropout)", 0.5);
  Rng rng(3);
  layer.initialize(rng);
  Tensor<float> x(Shape{2, 3}, MemoryCategory::workspace);
  for (index_t i = 0; i < 6; ++i) x[i] = static_cast<float>(i) - 2.5f;
  const Tensor<float> y = layer.forward(x, RunContext{false, Accumulate::f32});
  for (index_t i = 0; i < 6; ++i) EXPECT_EQ(y[i], x[i]);
  EXPECT_THROW(Dropout<float>("d", 1.0), Error);
  EXPECT_THROW(Dropout<float>("d", -0.1), Error);
}

}  // namespace
}  // namespace lowmem
