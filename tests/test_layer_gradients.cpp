// Every layer through the one generic checker: central finite differences in mp (every gradient within 1e-20
// relative) and in f64 (within 1e-6).
#include <gtest/gtest.h>

#include "layer_checker.hpp"
#include "layers/activations.hpp"
#include "layers/batchnorm.hpp"
#include "layers/conv2d.hpp"
#include "layers/linear.hpp"
#include "layers/pooling.hpp"
#include "layers/residual.hpp"

namespace lowmem::testing {
namespace {

struct LayerCase {
  std::string name;
  Shape input;  // with the batch dimension first
  // Builds the layer in either checked precision.
  std::function<std::unique_ptr<Layer<double>>()> make_f64;
  std::function<std::unique_ptr<Layer<mp>>()> make_mp;
};

template <template <class> class L, class... Args> LayerCase make_case(std::string name, Shape input, Args... args) {
  return {name, input, [=] { return std::make_unique<L<double>>(name, args...); },
          [=] { return std::make_unique<L<mp>>(name, args...); }};
}

std::vector<LayerCase> all_layer_cases() {
  return {
      make_case<Conv2d>("conv 3x3 pad 1 bias", Shape{2, 2, 5, 5}, Conv2dSpec{2, 3, 3, 1, 1, true}),
      make_case<Conv2d>("conv 3x3 stride 2 no bias", Shape{2, 3, 6, 5}, Conv2dSpec{3, 2, 3, 2, 1, false}),
      make_case<Conv2d>("conv 1x1 stride 2", Shape{2, 2, 4, 4}, Conv2dSpec{2, 3, 1, 2, 0, true}),
      make_case<Linear>("linear", Shape{3, 7}, index_t{7}, index_t{4}, true),
      make_case<Linear>("linear no bias", Shape{2, 5}, index_t{5}, index_t{3}, false),
      make_case<LeakyRelu>("relu", Shape{2, 3, 4, 4}, 0.0),
      make_case<LeakyRelu>("leaky_relu", Shape{2, 3, 4, 4}, 0.2),
      make_case<MaxPool>("maxpool 2", Shape{2, 2, 6, 6}, index_t{2}, index_t{2}),
      make_case<MaxPool>("maxpool 3 stride 2 (overlapping)", Shape{2, 2, 7, 7}, index_t{3}, index_t{2}),
      make_case<AvgPool>("avgpool 2", Shape{2, 2, 6, 6}, index_t{2}, index_t{2}),
      make_case<AvgPool>("avgpool 3 stride 2", Shape{1, 2, 7, 7}, index_t{3}, index_t{2}),
      make_case<GlobalAvgPool>("global_avgpool", Shape{2, 3, 4, 5}),
      make_case<BatchNorm>("batchnorm 2d", Shape{3, 2, 3, 3}, index_t{2}, 0.1, 1e-5),
      make_case<BatchNorm>("batchnorm 1d", Shape{5, 4}, index_t{4}, 0.1, 1e-5),
      make_case<Flatten>("flatten", Shape{2, 2, 3, 3}),
      make_case<ResidualBlock>("residual identity", Shape{2, 2, 4, 4}, index_t{2}, index_t{2}, index_t{1}, 0.1, 1e-5),
      make_case<ResidualBlock>("residual projection", Shape{2, 2, 6, 6}, index_t{2}, index_t{4}, index_t{2}, 0.1, 1e-5),
  };
}

class LayerGradients : public ::testing::TestWithParam<LayerCase> {};

TEST_P(LayerGradients, MultiprecisionCentralDifferencesAgreeTo1e20) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<mp>(c.make_mp, c.input, 1e-11);
  ASSERT_FALSE(reports.empty());
  for (const auto& r : reports) {
    EXPECT_LT(r.max_relative_error, 1e-20) << c.name << ": " << r.tensor;
    std::printf("    %-34s %-8s max relative error %.2e\n", c.name.c_str(), r.tensor.c_str(), r.max_relative_error);
  }
}

TEST_P(LayerGradients, DoubleCentralDifferencesAgreeTo1e6) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<double>(c.make_f64, c.input, 1e-6);
  for (const auto& r : reports) EXPECT_LT(r.max_relative_error, 1e-6) << c.name << ": " << r.tensor;
}

INSTANTIATE_TEST_SUITE_P(EveryLayer, LayerGradients, ::testing::ValuesIn(all_layer_cases()),
                         [](const auto& info) {
                           std::string s = info.param.name;
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

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
