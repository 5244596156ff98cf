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
