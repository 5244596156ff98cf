// Every layer through the one generic checker: central finite differences in mp (every gradient within 1e-20
// relative), in dd (1e-18) and in f64 (within 1e-6); and dd's forward and backward against mp's on the same values
// (within 1e-28, where f64's differ by about 1e-15).
#include <gtest/gtest.h>

#include "layer_cases.hpp"
#include "layer_checker.hpp"

namespace lowmem::testing {
namespace {

class LayerGradients : public ::testing::TestWithParam<LayerCase> {};

TEST_P(LayerGradients, MultiprecisionCentralDifferencesAgreeTo1e20) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<mp>(c.factory<mp>(), c.input, 1e-11, 1, c.vocab);
  ASSERT_FALSE(reports.empty());
  for (const auto& r : reports) {
    EXPECT_LT(r.max_relative_error, 1e-20) << c.name << ": " << r.tensor;
    std::printf("    %-34s %-8s max relative error %.2e\n", c.name.c_str(), r.tensor.c_str(), r.max_relative_error);
  }
}

TEST_P(LayerGradients, DoubleDoubleCentralDifferencesAgreeTo1e18) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<dd>(c.factory<dd>(), c.input, 1e-10, 1, c.vocab);
  ASSERT_FALSE(reports.empty());
  for (const auto& r : reports) {
    EXPECT_LT(r.max_relative_error, 1e-18) << c.name << ": " << r.tensor;
    std::printf("    %-34s %-8s max relative error %.2e\n", c.name.c_str(), r.tensor.c_str(), r.max_relative_error);
  }
}

// The fast reference against the exact one: dd's 106 bits give forward and backward within 1e-28 of mp's 113 on
// every layer. f64 on the same check differs by more than 1e-17 wherever a product rounds, so the check can tell
// the two apart.
TEST_P(LayerGradients, DoubleDoubleForwardAndBackwardAgreeWithMultiprecisionTo1e28) {
  const LayerCase& c = GetParam();
  for (const auto& r : compare_with_multiprecision<dd>(c.factory<dd>(), c.factory<mp>(), c.input, 1, c.vocab)) {
    EXPECT_LT(r.max_relative_error, 1e-28) << c.name << ": " << r.tensor;
    std::printf("    %-34s %-8s dd vs mp %.2e\n", c.name.c_str(), r.tensor.c_str(), r.max_relative_error);
  }
  double f64_worst = 0;
  for (const auto& r : compare_with_multiprecision<double>(c.factory<double>(), c.factory<mp>(), c.input, 1, c.vocab))
    f64_worst = std::max(f64_worst, r.max_relative_error);
  if (c.name.rfind("conv", 0) == 0 || c.name.rfind("linear", 0) == 0) {
    EXPECT_GT(f64_worst, 1e-17) << c.name << ": f64 should show its own rounding";
  }
}

TEST_P(LayerGradients, DoubleCentralDifferencesAgreeTo1e6) {
  const LayerCase& c = GetParam();
  const auto reports = check_layer_gradients<double>(c.factory<double>(), c.input, 1e-6, 1, c.vocab);
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
  const Tensor<double> x = draw_input<double>(c.input, c.vocab, rng);
  const RunContext ctx{true, Accumulate::f32};
  Tensor<double> r;
  std::vector<Tensor<double>> once;
  for (int pass = 0; pass < 2; ++pass) {
    const Tensor<double> y = layer->forward(x, ctx);
    if (pass == 0) {
      r = Tensor<double>(y.shape(), MemoryCategory::workspace);
      for (index_t i = 0; i < r.numel(); ++i) r[i] = rng.normal();
    }
    const Tensor<double> dx = layer->backward(r, ctx, pass == 0 && c.vocab == 0);
    if (pass == 0) {
      EXPECT_EQ(dx.empty(), c.vocab > 0) << c.name;  // token ids have no gradient
      for (Param<double>* p : layer->params()) once.push_back(p->grad.clone(MemoryCategory::workspace));
    }
  }
  const auto params = layer->params();
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < once[k].numel(); ++i)
      ASSERT_EQ(params[k]->grad[i], 2 * once[k][i]) << c.name << " " << params[k]->name << "[" << i << "]";
}

// Backprop by reconstruction (technique "reversible"), for every invertible layer: a forward that keeps no
// activation, then backward_from_output on its output, gives the input, the input gradient and every parameter
// gradient of the stored-activation backward, to 1e-28 relative in mp (they differ only by rounding in 113 bits).
class InvertibleLayers : public ::testing::TestWithParam<LayerCase> {};

TEST_P(InvertibleLayers, ReconstructionBackwardEqualsStoredBackwardInMultiprecision) {
  const LayerCase& c = GetParam();
  auto stored = c.make<mp>(), rebuilt = c.make<mp>();
  Invertible<mp>* invertible = as_invertible(*rebuilt);
  ASSERT_NE(invertible, nullptr);
  for (Layer<mp>* layer : {stored.get(), rebuilt.get()}) {  // the same perturbed parameters in both
    Rng rng(13);
    layer->initialize(rng);
    for (Param<mp>* p : layer->params())
      for (index_t i = 0; i < p->value.numel(); ++i) p->value[i] += round_to<mp>(0.5 * rng.normal());
  }
  Rng rng(14);
  Tensor<mp> x(c.input, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = round_to<mp>(rng.normal());
  const RunContext keep_all{true, Accumulate::f32};
  const Tensor<mp> y = stored->forward(x, keep_all);
  Tensor<mp> r(y.shape(), MemoryCategory::workspace);
  for (index_t i = 0; i < r.numel(); ++i) r[i] = round_to<mp>(rng.normal());
  const Tensor<mp> dx = stored->backward(r, keep_all, true);

  MemoryLedger ledger;
  Reconstructed<mp> back;
  {
    MemoryLedger::Scope scope(ledger);
    RunContext reconstruct = keep_all;
    reconstruct.reconstruct = true;
    reconstruct.keep = RunContext::Keep::for_inverse;
    const Tensor<mp> out = rebuilt->forward(x, reconstruct);
    // What the forward kept is at most per-channel statistics (invertible batch norm), never an activation.
    EXPECT_LT(ledger.current(MemoryCategory::saved_activations), out.bytes() / 4) << c.name;
    reconstruct.keep = RunContext::Keep::all;
    back = invertible->backward_from_output(out, r, reconstruct, true);
  }
  auto relative = [](const Tensor<mp>& a, const Tensor<mp>& b) {
    mp worst = 0, largest = 0;
    for (index_t i = 0; i < b.numel(); ++i) {
      worst = std::max(worst, mp(abs(a[i] - b[i])));
      largest = std::max(largest, mp(abs(b[i])));
    }
    return largest > 0 ? mp(worst / largest) : worst;
  };
  EXPECT_LT(relative(back.input, x), mp(1e-28)) << c.name << ": rebuilt input";
  EXPECT_LT(relative(back.input_grad, dx), mp(1e-28)) << c.name << ": input gradient";
  const auto a = rebuilt->params(), b = stored->params();
  for (std::size_t k = 0; k < a.size(); ++k)
    EXPECT_LT(relative(a[k]->grad, b[k]->grad), mp(1e-28)) << c.name << ": " << a[k]->name << " " << k;
}

INSTANTIATE_TEST_SUITE_P(EveryLayer, LayerGradients, ::testing::ValuesIn(all_layer_cases()),
                         [](const auto& info) { return test_name(info.param.name); });

std::vector<LayerCase> invertible_cases() {
  std::vector<LayerCase> cases;
  for (const LayerCase& c : all_layer_cases())
    if (as_invertible(*c.make<mp>())) cases.push_back(c);
  return cases;
}

INSTANTIATE_TEST_SUITE_P(EveryInvertibleLayer, InvertibleLayers, ::testing::ValuesIn(invertible_cases()),
                         [](const auto& info) { return test_name(info.param.name); });

// The checker itself must be able to fail: y = x^2 with a backward off by one part in 1e15.
template <class T> class SlightlyWrongSquare : public Layer<T> {
 public:
  SlightlyWrongSquare() : Layer<T>("wrong square") {}
  const char* kind() const override { return "wrong_square"; }
  Shape output_shape(const Shape& in) const override { return in; }
  Tensor<T> forward(Tensor<T> x, const RunContext&) override {
    input_ = x;
    Tensor<T> y(x.shape(), MemoryCategory::workspace);
    for (index_t i = 0; i < x.numel(); ++i) y[i] = x[i] * x[i];
    return y;
  }
  Tensor<T> backward(Tensor<T> dy, const RunContext&, bool) override {
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
