// The double-double type (numerics/double_double.hpp) against the 113-bit mp on random operands of mixed
// magnitude: every operation within its stated bound in units of u^2 = 2^-106, conversions exact or rounded once.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "numerics/random.hpp"
#include "numerics/scalar.hpp"

namespace lowmem {
namespace {

const double u2 = std::ldexp(1.0, -106);

// A normalised pair with a random lo.
dd random_dd(Rng& rng, double scale) {
  const double hi = rng.normal() * scale;
  return dd::fast_two_sum(hi, std::ldexp(hi * rng.uniform(-1.0, 1.0), -53));
}

mp exact(const dd& x) { return mp(x.hi) + mp(x.lo); }

// The elementary functions' reference has 240 bits: mp's own log near 1 is accurate only to 2^-113 absolute, not
// relative to its small result, and would mask dd's accuracy there.
using wide = boost::multiprecision::number<
    boost::multiprecision::cpp_bin_float<240, boost::multiprecision::digit_base_2>, boost::multiprecision::et_off>;
double wide_error_in_u2(const dd& got, const wide& want) {
  const wide d = abs(wide(got.hi) + wide(got.lo) - want) / abs(want);
  return d.convert_to<double>() / u2;
}

// |got - want| / |want| in units of u^2 (absolute when want is 0).
double error_in_u2(const dd& got, const mp& want) {
  const mp d = abs(exact(got) - want);
  return to_double(want == 0 ? d : mp(d / abs(want))) / u2;
}

bool normalised(const dd& x) { return x.hi + x.lo == x.hi; }

TEST(DoubleDouble, ArithmeticIsWithinItsBoundsOfMultiprecision) {
  Rng rng(11);
  double worst_add = 0, worst_mul = 0, worst_div = 0, worst_mul_add = 0;
  for (int i = 0; i < 20000; ++i) {
    const double sa = std::ldexp(1.0, static_cast<int>(rng.uniform(-30, 30)));
    const double sb = std::ldexp(1.0, static_cast<int>(rng.uniform(-30, 30)));
    const dd a = random_dd(rng, sa), b = random_dd(rng, sb), c = random_dd(rng, sa * sb);
    const mp ea = exact(a), eb = exact(b), ec = exact(c);
    for (const dd& r : {a + b, a - b, a * b, a / b, mul_add(a, b, c)}) ASSERT_TRUE(normalised(r));
    worst_add = std::max({worst_add, error_in_u2(a + b, ea + eb), error_in_u2(a - b, ea - eb)});
    worst_mul = std::max(worst_mul, error_in_u2(a * b, ea * eb));
    worst_div = std::max(worst_div, error_in_u2(a / b, ea / eb));
    // mul_add's bound is relative to |c| + |a b| (the sloppy sum), as a dot product's is.
    const mp d = abs(exact(mul_add(a, b, c)) - (ea * eb + ec)) / (abs(ea * eb) + abs(ec));
    worst_mul_add = std::max(worst_mul_add, to_double(d) / u2);
  }
  EXPECT_LE(worst_add, 3.0);
  EXPECT_LE(worst_mul, 4.0);
  EXPECT_LE(worst_div, 12.0);
  EXPECT_LE(worst_mul_add, 8.0);
  std::printf("    worst error in u^2: add %.2f, mul %.2f, div %.2f, mul_add %.2f\n", worst_add, worst_mul, worst_div,
              worst_mul_add);
}

// Cancellation: the accurate sum keeps the low parts, so a + b - a gives b back to within u^2 of |b|.
TEST(DoubleDouble, SumKeepsLowPartsUnderCancellation) {
  const dd a(1.0, std::ldexp(1.0, -60)), b(std::ldexp(1.0, -70), 0.0);
  EXPECT_EQ(exact((a + b) - a), mp(std::ldexp(1.0, -70)));
  const dd third = dd(1.0) / dd(3.0);
  EXPECT_LT(to_double(abs(exact(third) * 3 - 1)), 2 * u2);
}

TEST(DoubleDouble, ElementaryFunctionsAreWithinAFewUnitsOfMultiprecision) {
  Rng rng(5);
  double worst_sqrt = 0, worst_exp = 0, worst_log = 0;
  for (int i = 0; i < 5000; ++i) {
    const dd x = random_dd(rng, std::ldexp(1.0, static_cast<int>(rng.uniform(-20, 20))));
    const dd ax = abs(x), e = random_dd(rng, 20.0);
    const wide wx = wide(ax.hi) + wide(ax.lo), we = wide(e.hi) + wide(e.lo);
    worst_sqrt = std::max(worst_sqrt, wide_error_in_u2(sqrt(ax), boost::multiprecision::sqrt(wx)));
    worst_exp = std::max(worst_exp, wide_error_in_u2(exp(e), boost::multiprecision::exp(we)));
    worst_log = std::max(worst_log, wide_error_in_u2(log(ax), boost::multiprecision::log(wx)));
  }
  // Near 1 log's result is small: its error relative to it is what the Newton step must keep.
  for (double near : {1.0 + 1e-9, 1.0 - 1e-12, 1.0 + std::ldexp(1.0, -52)}) {
    const dd x = dd::two_sum(near, std::ldexp(near, -70));
    worst_log = std::max(worst_log, wide_error_in_u2(log(x), boost::multiprecision::log(wide(x.hi) + wide(x.lo))));
  }
  // The ends of the range: log of huge, tiny and subnormal values (exp(-log a) would overflow there).
  for (double end : {1e300, 1e-300, 1.7e308, 1e-310, 4.9e-324}) {
    const dd x(end);
    worst_log = std::max(worst_log, wide_error_in_u2(log(x), boost::multiprecision::log(wide(end))));
  }
  EXPECT_LE(worst_sqrt, 4.0);
  EXPECT_LE(worst_exp, 8.0);
  EXPECT_LE(worst_log, 8.0);
  std::printf("    worst error in u^2: sqrt %.2f, exp %.2f, log %.2f\n", worst_sqrt, worst_exp, worst_log);
  EXPECT_EQ(exp(dd(0.0)), dd(1.0));
  EXPECT_EQ(log(dd(1.0)), dd(0.0));
  EXPECT_EQ(sqrt(dd(4.0)), dd(2.0));
  EXPECT_TRUE(std::isinf(exp(dd(800.0)).hi));
  // Overflow stays an infinity through the arithmetic, as in double (a sigmoid of -720 is 0, not NaN).
  EXPECT_EQ(dd(1.0) / (dd(1.0) + exp(dd(720.0))), dd(0.0));
  EXPECT_TRUE(std::isinf((dd(1e200) * dd(1e200)).hi));
  EXPECT_TRUE(std::isinf((dd(1.0) / dd(0.0)).hi));
  EXPECT_EQ(dd(1.0) / dd(INFINITY), dd(0.0));
  EXPECT_EQ(exp(dd(-800.0)), dd(0.0));
  EXPECT_TRUE(std::isnan(log(dd(-1.0)).hi));
  EXPECT_TRUE(std::isnan(sqrt(dd(-1.0)).hi));
}

// round_to between dd and the other formats: exact where the target holds the value, else rounded once to nearest.
TEST(DoubleDouble, ConversionsRoundOnce) {
  Rng rng(9);
  for (int i = 0; i < 2000; ++i) {
    const mp x = mp(rng.normal()) * (1 + ldexp(mp(rng.normal()), -40));
    const dd d = round_to<dd>(x);
    ASSERT_TRUE(normalised(d));
    EXPECT_LE(to_double(abs(exact(d) - x) / abs(x)), std::ldexp(1.0, -106));  // nearest dd: half a unit of 2^-105
    EXPECT_EQ(round_to<dd>(exact(d)), d);                                       // dd -> mp -> dd is exact
    EXPECT_EQ(round_to<double>(d), round_to<double>(exact(d)));                 // to double: hi, the nearest
    EXPECT_EQ(round_to<float>(d), round_to<float>(exact(d)));                   // to float: once, not twice
    EXPECT_EQ(static_cast<float>(round_to<bf16>(d)), static_cast<float>(round_to<bf16>(exact(d))));
    EXPECT_EQ(static_cast<float>(round_to<f16>(d)), static_cast<float>(round_to<f16>(exact(d))));
  }
  // A float tie broken by lo: 1 + 2^-24 is a tie between floats 1 and 1 + 2^-23; a lo below zero rounds down.
  const dd tie_down = dd::fast_two_sum(1.0 + std::ldexp(1.0, -24), -std::ldexp(1.0, -80));
  EXPECT_EQ(round_to<float>(tie_down), 1.0f);
  const dd tie_up = dd::fast_two_sum(1.0 + std::ldexp(1.0, -24), std::ldexp(1.0, -80));
  EXPECT_EQ(round_to<float>(tie_up), 1.0f + std::ldexp(1.0f, -23));
  EXPECT_EQ(round_to<dd>(3.5f), dd(3.5));
  EXPECT_EQ(dd(std::int64_t{(1LL << 60) + 1}).lo, 1.0);  // wide integers exactly
  EXPECT_EQ(exact(dd(std::numeric_limits<std::int64_t>::max())), mp(std::numeric_limits<std::int64_t>::max()));
  EXPECT_EQ(exact(dd(std::numeric_limits<std::uint64_t>::max())), mp(std::numeric_limits<std::uint64_t>::max()));
  // mp -> dd where the rest is a tie for lo: 1 + 2^-52 + 2^-53 - 2^-110 gives lo = 2^-53 = ulp(hi) / 2, and
  // hi + lo would round to even, away from hi: the pair must be renormalised.
  const mp tie = 1 + ldexp(mp(1), -52) + ldexp(mp(1), -53) - ldexp(mp(1), -110);
  const dd t = round_to<dd>(tie);
  EXPECT_TRUE(normalised(t));
  EXPECT_EQ(round_to<double>(t), round_to<double>(exact(t)));  // t's own value, the midpoint, to even
  // (tie itself rounds to 1 + 2^-52: going through dd first is a second rounding, as through any narrower format)
  EXPECT_EQ(round_to<dd>(exact(t)), t);
  EXPECT_TRUE(is_finite(dd(1.0)));
  EXPECT_FALSE(is_finite(dd(1.0) / dd(0.0)));
  EXPECT_FALSE(is_finite(dd(std::nan(""))));
  EXPECT_EQ(parse_precision("dd"), Precision::dd);
}

TEST(DoubleDouble, OrdersAsItsValue) {
  const dd a(1.0, std::ldexp(1.0, -60)), b(1.0, -std::ldexp(1.0, -60));
  EXPECT_LT(b, a);
  EXPECT_GT(a, b);
  EXPECT_LE(b, b);
  EXPECT_NE(a, b);
  EXPECT_EQ(abs(-a), a);
  EXPECT_LT(-a, dd(0.0));
  const dd nan(std::nan(""));
  EXPECT_FALSE(nan <= nan);
  EXPECT_FALSE(nan < dd(1.0));
}

}  // namespace
}  // namespace lowmem
