// Invertible layers: inverse(forward(x)) = x to 1e-30 in mp, and the error amplification of one inversion
// against the closed forms of Hascoet et al. (PAPERS.md section 3).
#include <gtest/gtest.h>

#include <cmath>

#include "layer_cases.hpp"
#include "numerics/error.hpp"
#include "layers/activations.hpp"
#include "layers/batchnorm.hpp"

namespace lowmem {
namespace {

TEST(Invertible, InverseOfForwardIsTheInputTo1e30InMultiprecision) {
  int checked = 0;
  for (const testing::LayerCase& c : testing::all_layer_cases()) {
    auto layer = c.make<mp>();
    auto* invertible = dynamic_cast<Invertible<mp>*>(layer.get());
    if (!invertible || c.name == "relu") continue;  // slope 0: not invertible (tested below)
    Rng rng(5);
    layer->initialize(rng);
    for (Param<mp>* p : layer->params())
      for (index_t i = 0; i < p->value.numel(); ++i) p->value[i] += round_to<mp>(0.5 * rng.normal());
    Tensor<mp> x(c.input, MemoryCategory::workspace);
    for (index_t i = 0; i < x.numel(); ++i) x[i] = round_to<mp>(rng.normal());
    const Tensor<mp> back = invertible->inverse(layer->forward(x, RunContext{}));
    mp worst = 0, largest = 0;
    for (index_t i = 0; i < x.numel(); ++i) {
      worst = std::max(worst, mp(abs(back[i] - x[i])));
      largest = std::max(largest, mp(abs(x[i])));
    }
    EXPECT_LT(worst / largest, mp(1e-30)) << c.name;
    ++checked;
  }
  EXPECT_GE(checked, 5);  // leaky_relu, batchnorm 2d/1d, inv_batchnorm, pixel_shuffle
}

TEST(Invertible, ZeroSlopeLeakyReluRefusesToInvert) {
  LeakyRelu<double> relu("/model/layers/2 (relu)", 0.0);
  Tensor<double> y(Shape{1, 2}, MemoryCategory::workspace);
  try {
    relu.inverse(y);
    FAIL() << "inverted a ReLU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/model/layers/2"), std::string::npos);
  }
}

// alpha = SNR of the rebuilt input / SNR of the output, for output error of the same variance everywhere
// (as when it comes from earlier operations), measured in f64 with N(0, s^2) noise added to y.
double measured_alpha(Layer<double>& layer, const Tensor<double>& x, double noise, std::uint64_t seed) {
  const Tensor<double> y = layer.forward(x, RunContext{});
  Tensor<double> noisy = y.clone(MemoryCategory::workspace);
  Rng rng(seed);
  double signal_y = 0, error_y = 0;
  for (index_t i = 0; i < y.numel(); ++i) {
    const double e = noise * rng.normal();
    noisy[i] += e;
    signal_y += y[i] * y[i];
    error_y += e * e;
  }
  const Tensor<double> back = dynamic_cast<Invertible<double>&>(layer).inverse(noisy);
  double signal_x = 0, error_x = 0;
  for (index_t i = 0; i < x.numel(); ++i) {
    signal_x += x[i] * x[i];
    error_x += (back[i] - x[i]) * (back[i] - x[i]);
  }
  return (signal_x / error_x) / (signal_y / error_y);
}

TEST(Invertible, LeakyReluAmplificationMatchesTheClosedForm) {
  Tensor<double> x(Shape{200000}, MemoryCategory::workspace);
  Rng rng(1);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();  // symmetric around 0
  for (double phi : {0.05, 0.1, 0.2, 0.5}) {
    LeakyRelu<double> layer("leaky_relu", phi);
    const double expected = 4.0 / ((1 + phi * phi) * (1 + 1 / (phi * phi)));
    EXPECT_NEAR(measured_alpha(layer, x, 1e-6, 2), expected, 0.1 * expected) << "slope " << phi;
  }
}

TEST(Invertible, BatchNormAmplificationMatchesTheClosedForm) {
  const index_t channels = 16;
  BatchNorm<double> bn("inv_batchnorm", channels, 0.1, 0.0, 1e-4);
  Rng rng(3);
  bn.initialize(rng);
  double mean_w2 = 0, mean_inv_w2 = 0;
  for (index_t c = 0; c < channels; ++c) {
    bn.params()[0]->value[c] = std::exp(rng.uniform(-2.0, 1.0)) * (c % 2 ? 1 : -1);  // scales from 0.14 to 2.7
    const double w = std::fabs(bn.params()[0]->value[c]) + 1e-4;
    mean_w2 += w * w / channels;
    mean_inv_w2 += 1 / (w * w) / channels;
  }
  Tensor<double> x(Shape{4000, channels}, MemoryCategory::workspace);  // unit variance in every channel
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  const double expected = 1.0 / (mean_w2 * mean_inv_w2);
  EXPECT_NEAR(measured_alpha(bn, x, 1e-6, 4), expected, 0.1 * expected);
  EXPECT_LT(expected, 0.9);  // the case is not trivial: uneven scales lose SNR
}

}  // namespace
}  // namespace lowmem
