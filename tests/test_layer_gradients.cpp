// Every layer through the one generic checker: central finite differences in mp (every gradient within 1e-20
// relative) and in f64 (within 1e-6).
#include <gtest/gtest.h>

#include "layer_cases.hpp"
#include "layer_checker.hpp"

namespace lowmem::testing {
namespace {

class LayerGradients : public ::testing::TestWithParam<LayerCase> {};

TEST_P(LayerGradients, MultiprecisionCentralDifferencesAgreeTo1e20) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<mp>(c.factory<mp>(), c.input, 1e-11);
  ASSERT_FALSE(reports.empty());
  for (const auto& r : reports) {
    EXPECT_LT(r.max_relative_error, 1e-20) << c.name << ": " << r.tensor;
    std::printf("    %-34s %-8s max relative error %.2e\n", c.name.c_str(), r.tensor.c_str(), r.max_relative_error);
  }
}

TEST_P(LayerGradients, DoubleCentralDifferencesAgreeTo1e6) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<double>(c.factory<double>(), c.input, 1e-6);
  for (const auto& r : reports) EXPECT_LT(r.max_relative_error, 1e-6) << c.name << ": " << r.tensor;
}

// The rest of the contract: backward adds (+=) into the parameter gradients, and skipping the input gradient
// changes nothing else. Two backward passes, the second without dx, must give exactly twice the gradients (f64:
// g + g = 2g exactly, and the computation is deterministic).
TEST_P(LayerGradients, BackwardAccumulatesAndSkippingTheInputGradientChangesNothingElse) {
  const LayerCase& c = GetParam();
  auto layer = c.make<double>();
  Rng rng(9);
  layer->initialize(rng);
  Tensor<double> x(c.input, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  const RunContext ctx{true, Accumulate::f32};
  Tensor<double> r;
  std::vector<Tensor<double>> once;
  for (int pass = 0; pass < 2; ++pass) {
    const Tensor<double> y = layer->forward(x, ctx);
    if (pass == 0) {
      r = Tensor<double>(y.shape(), MemoryCategory::workspace);
      for (index_t i = 0; i < r.numel(); ++i) r[i] = rng.normal();
    }
    const Tensor<double> dx = layer->backward(r, ctx, pass == 0);
    if (pass == 0) {
      EXPECT_FALSE(dx.empty()) << c.name;
      for (Param<double>* p : layer->params()) once.push_back(p->grad.clone(MemoryCategory::workspace));
    }
  }
  const auto params = layer->params();
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < once[k].numel(); ++i)
      ASSERT_EQ(params[k]->grad[i], 2 * once[k][i]) << c.name << " " << params[k]->name << "[" << i << "]";
}

INSTANTIATE_TEST_SUITE_P(EveryLayer, LayerGradients, ::testing::ValuesIn(all_layer_cases()),
                         [](const auto& info) { return test_name(info.param.name); });

// The checker itself must be able to fail: y = x^2 with a backward off by one part in 1e15.
template <class T> class SlightlyWrongSquare : public Layer<T> {
 public:
  SlightlyWrongSquare() : Layer<T>("wrong square") {}
  const char* kind() const override { return "wrong_square"; }
  Shape output_shape(const Shape& in) const override { return in; }
  Tensor<T> forward(const Tensor<T>& x, const RunContext&) override {
    input_ = x;
    Tensor<T> y(x.shape(), MemoryCategory::workspace);
    for (index_t i = 0; i < x.numel(); ++i) y[i] = x[i] * x[i];
    return y;
  }
  Tensor<T> backward(const Tensor<T>& dy, const RunContext&, bool) override {
    Tensor<T> dx(dy.shape(), MemoryCategory::workspace);
    for (index_t i = 0; i < dy.numel(); ++i) dx[i] = dy[i] * input_[i] * round_to<T>(2.0 + 2e-15);
    return dx;
  }

 private:
  Tensor<T> input_;
};

TEST(LayerChecker, CatchesARelativeErrorOf1e15InMultiprecision) {
  const auto reports =
      check_layer_gradients<mp>([] { return std::make_unique<SlightlyWrongSquare<mp>>(); }, Shape{2, 3}, 1e-11);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_GT(reports[0].max_relative_error, 1e-16);
  EXPECT_LT(reports[0].max_relative_error, 1e-14);
}

}  // namespace
}  // namespace lowmem::testing
