// normal_cdf_pdf (numerics/normal.hpp) against the multiprecision erfc and exp, and what it gives GELU in float:
// its outputs rounded once from values within about 1e-15 of the exact ones.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "layers/activations.hpp"
#include "numerics/normal.hpp"
#include "numerics/scalar.hpp"
#include "tensor/memory_ledger.hpp"

namespace lowmem {
namespace {

mp exact_cdf(double x) { return boost::multiprecision::erfc(mp(-x) / boost::multiprecision::sqrt(mp(2))) / 2; }
mp exact_pdf(double x) {
  return boost::multiprecision::exp(-mp(x) * mp(x) / 2) / boost::multiprecision::sqrt(2 * pi_of<mp>());
}
double relative_error(double got, const mp& exact) { return to_double(abs((mp(got) - exact) / exact)); }

// Every float in steps of 2^-7 on [-14.8, 14.8] and a few between: relative errors of Phi and phi within 2e-15
// (Phi's tail Phi(-|x|) by itself, which is what 1 + erf loses).
TEST(NormalCdfPdf, WithinTwoUnitsOfTheFifteenthDigitOnTheFloatsUpTo14Point8) {
  double worst_cdf = 0, worst_pdf = 0, worst_tail = 0;
  for (int i = -1894; i <= 1894; ++i) {
    for (float x : {static_cast<float>(i) / 128.0f, static_cast<float>(i) / 128.0f + 0.00390625f * 0.37f}) {
      const NormalCdfPdf n = normal_cdf_pdf(x);
      worst_cdf = std::max(worst_cdf, relative_error(n.cdf, exact_cdf(x)));
      worst_pdf = std::max(worst_pdf, relative_error(n.pdf, exact_pdf(x)));
      const double tail = x < 0 ? n.cdf : 1.0 - n.cdf;  // exact subtraction only where it is small: x < 0
      if (x < 0) worst_tail = std::max(worst_tail, relative_error(tail, exact_cdf(-std::abs(x))));
    }
  }
  EXPECT_LT(worst_cdf, 2e-15);
  EXPECT_LT(worst_pdf, 2e-15);
  EXPECT_LT(worst_tail, 2e-15);
}

TEST(NormalCdfPdf, FarTailsAreZeroAndOneAndNaNStaysNaN) {
  for (double x : {-15.0, -40.0, -1e10, -std::numeric_limits<double>::infinity()}) {
    const NormalCdfPdf n = normal_cdf_pdf(x);
    EXPECT_EQ(n.cdf, 0.0) << x;
    EXPECT_EQ(n.pdf, 0.0) << x;
    EXPECT_EQ(normal_cdf_pdf(-x).cdf, 1.0) << -x;
    EXPECT_EQ(normal_cdf_pdf(-x).pdf, 0.0) << -x;
  }
  EXPECT_GT(normal_cdf_pdf(-14.8).cdf, 0.0);  // the last value before the cut
  EXPECT_TRUE(std::isnan(normal_cdf_pdf(std::numeric_limits<double>::quiet_NaN()).cdf));
  EXPECT_TRUE(std::isnan(normal_cdf_pdf(std::numeric_limits<double>::quiet_NaN()).pdf));
}

// GELU in float: y = x Phi(x) and dL/dx = dy (Phi(x) + x phi(x)) equal the exact values rounded once to float
// (to nearest) at every point of a grid of 3789 points (steps of 2^-7 from -14.8 to 14.8, offset by 0.001): the
// computed values are within about 1e-15 of the exact ones, so only a value that close to a rounding boundary could
// round the other way, and none on this grid is.
TEST(NormalCdfPdf, FloatGeluIsTheExactValueRoundedOnce) {
  MemoryLedger ledger;
  MemoryLedger::Scope scope(ledger);
  const index_t n = 2 * 1894 + 1;
  Tensor<float> x(Shape{n}, MemoryCategory::workspace), dy(Shape{n}, MemoryCategory::workspace);
  for (index_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(i - 1894) / 128.0f + 0.001f;
    dy[i] = 1.0f;
  }
  Gelu<float> gelu("gelu");
  const Tensor<float> y = gelu.forward(x, RunContext{});
  const Tensor<float> dx = gelu.backward(dy, RunContext{}, true);
  int mismatches = 0;
  for (index_t i = 0; i < n; ++i) {
    const mp v = mp(x[i]);
    const mp exact_y = v * exact_cdf(x[i]), exact_dx = exact_cdf(x[i]) + v * exact_pdf(x[i]);
    if (y[i] != round_to<float>(exact_y)) ++mismatches;
    if (dx[i] != round_to<float>(exact_dx)) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace lowmem
