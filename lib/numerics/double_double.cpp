#include "numerics/double_double.hpp"

namespace lowmem {

namespace {
// ln 2 to 160 bits as three doubles: k ln 2 for |k| up to 1100 then leaves no error above 2^-106 of the result.
constexpr double ln2_hi = 0.6931471805599453, ln2_mid = 2.3190468138462996e-17, ln2_lo = 5.707708438416212e-34;
dd scaled(const dd& a, int k) { return {std::ldexp(a.hi, k), std::ldexp(a.lo, k)}; }  // exact

// exp(r) - 1 for |r| <= 0.36 (no factor 2^k to apply), kept apart from the 1 so that it stays accurate relative to
// itself: exp(r / 512) - 1 from eleven terms of its Taylor series (2^-110 relative, |r / 512| < 7e-4), then squared
// nine times as (1 + s)^2 - 1 = 2 s + s^2.
dd expm1_reduced(const dd& r) {
  const dd x = scaled(r, -9);
  dd t(1.0);
  for (int n = 11; n >= 2; --n) t = dd(1.0) + t * x / dd(n);  // 1 + x/2 (1 + x/3 (1 + ...))
  dd s = x * t;
  for (int i = 0; i < 9; ++i) s = scaled(s, 1) + s * s;
  return s;
}

}  // namespace

dd sqrt(const dd& a) {
  if (!(a.hi > 0)) return a.hi == 0 ? dd(0.0) : dd(std::numeric_limits<double>::quiet_NaN());
  if (std::isinf(a.hi)) return a;
  const double s = std::sqrt(a.hi);
  const dd residual = a - dd::two_prod(s, s);  // a - s^2, s^2 exact
  return dd::fast_two_sum(s, residual.hi / (2 * s));
}

dd exp(const dd& a) {
  if (std::isnan(a.hi)) return a;
  if (a.hi > 709.79) return dd(std::numeric_limits<double>::infinity());
  if (a.hi < -745.2) return dd(0.0);
  const double k = std::nearbyint(a.hi / ln2_hi);
  // r = a - k ln 2, |r| <= ln 2 / 2: the products k ln2_hi and k ln2_mid are exact pairs, so the only errors are
  // the sums', relative to r itself.
  const dd r = ((a - dd::two_prod(k, ln2_hi)) - dd::two_prod(k, ln2_mid)) - dd(dd::rounded(k * ln2_lo));
  return scaled(expm1_reduced(r) + dd(1.0), static_cast<int>(k));
}

dd log(const dd& a) {
  if (std::isnan(a.hi) || a.hi < 0) return dd(std::numeric_limits<double>::quiet_NaN());
  if (a.hi == 0) return dd(-std::numeric_limits<double>::infinity());
  if (std::isinf(a.hi)) return a;
  // a = 2^e m with m in [sqrt(1/2), sqrt(2)): log a = log m + e ln 2, with |log m| <= 0.35 (no overflow or
  // subnormal in exp, and a = 1 + tiny keeps e = 0). One Newton step on exp(y) = m from the double log y doubles
  // its 53 correct bits: y + (m - e^y) / e^y, with e^y - 1 kept apart so the step stays accurate relative to y.
  int e = 0;
  std::frexp(a.hi, &e);  // a.hi = f 2^e, f in [1/2, 1)
  if (std::ldexp(a.hi, -e) < 0.7071067811865476) --e;
  const dd m = scaled(a, -e);
  const dd y(std::log(m.hi) + m.lo / m.hi);  // log(hi + lo) to first order in lo
  const dd em1 = expm1_reduced(y);
  const dd log_m = y + ((m - dd(1.0)) - em1) / (em1 + dd(1.0));
  if (e == 0) return log_m;
  const double k = e;
  return log_m + (dd::two_prod(k, ln2_hi) + dd::two_prod(k, ln2_mid) + dd(dd::rounded(k * ln2_lo)));
}

dd erf(const dd& a) {
  if (std::isnan(a.hi)) return a;
  if (std::fabs(a.hi) > 10) return dd(a.hi > 0 ? 1.0 : -1.0);
  const dd two_a2 = dd(2.0) * a * a;
  dd term = a, sum = a;
  for (int n = 1; std::fabs(term.hi) > std::fabs(sum.hi) * 0x1p-110; ++n) {
    term = term * two_a2 / dd(2.0 * n + 1);
    sum = sum + term;
  }
  const dd two_over_sqrt_pi(1.1283791670955126, 1.533545961316588e-17);
  return two_over_sqrt_pi * exp(-(a * a)) * sum;
}

}  // namespace lowmem
