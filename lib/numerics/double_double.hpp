#pragma once
// dd: double-double arithmetic, a value hi + lo held as two doubles with |lo| <= ulp(hi) / 2 (the pair is
// "normalised": hi is hi + lo rounded to nearest). 106 significand bits with double's exponent range, at a few
// dozen double operations per operation instead of a software-float library's hundreds: the fast high-precision
// reference beside the 113-bit Boost `mp`, which stays the exact ground truth.
//
// Built from the error-free transformations (Knuth's TwoSum; TwoProd with one fused multiply-add; Dekker's
// FastTwoSum for normalising) as in Hida, Li and Bailey's double-double library and Joldes, Muller and Popescu
// (2017), who prove the bounds used here. Every operation is a fixed sequence of IEEE double operations, so results
// are the same bits on every machine and instruction set. GCC contracts a * b + c into one fused multiply-add
// across statements, in C++ even in ISO mode (its default is -ffp-contract=fast), which would break the
// transformations: every product they need rounded passes through rounded(), which the compiler cannot see into.
//   + and -   the accurate sum: relative error <= 3 u^2 of the result (u = 2^-53)
//   *         TwoProd of the leading parts plus the cross terms (lo * lo is dropped): a few u^2 (measured 2.8)
//   /         three quotient digits: a few u^2 (measured 1.6)
//   mul_add   acc + a b in one chain, the step of every matrix product (tensor/gemm.cpp): the product's error
//             terms are summed before normalising once, and the sum is TwoSum's "sloppy" one, whose error is
//             bounded relative to |acc| + |a b|, as a dot product's error bound is anyway
//   sqrt, exp, log   to within a few u^2 (tests/test_double_double.cpp checks all of this against mp, and the
//                    functions against 240-bit Boost floats)
// Values near underflow (|x| < 2^-969) lose lo's bits as a double loses its own below 2^-1022. +, * and / give
// infinities where double does (an overflow, x / 0); mul_add, whose vector form has no branches, gives NaN for
// an overflowing product, which a run reports as diverged either way.
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace lowmem {

struct dd {
  double hi = 0, lo = 0;

  constexpr dd() = default;
  // From any arithmetic value (generic code writes G(0), x * G(2), W(count)): exactly for integers, float and
  // double; long double is rounded to double.
  template <class A, class = std::enable_if_t<std::is_arithmetic_v<A>>>
  constexpr dd(A x) : hi(static_cast<double>(x)), lo(0) {  // NOLINT: implicit, as for the other formats
    if constexpr (std::is_integral_v<A> && sizeof(A) > 4)  // in 128 bits: hi may be 2^63 or 2^64
      lo = static_cast<double>(static_cast<__int128>(x) - static_cast<__int128>(hi));
  }
  constexpr dd(double h, double l) : hi(h), lo(l) {}
  // hi is hi + lo rounded to nearest; other formats round through round_to (numerics/scalar.hpp).
  explicit constexpr operator double() const { return hi; }

  // p as an opaque rounded value: no later sum can fuse with the product that made it.
  static double rounded(double p) {
    asm("" : "+x"(p));
    return p;
  }

  // ---- The error-free transformations: s + e == a + b and p + e == a b exactly ----
  static dd two_sum(double a, double b) {
    const double s = a + b, v = s - a;
    return {s, (a - (s - v)) + (b - v)};
  }
  static dd fast_two_sum(double a, double b) {  // needs |a| >= |b| (or a == 0)
    const double s = a + b;
    return {s, b - (s - a)};
  }
  static dd two_prod(double a, double b) {
    const double p = rounded(a * b);
    return {p, std::fma(a, b, -p)};
  }

  friend dd operator+(const dd& a, const dd& b) {
    if (!std::isfinite(a.hi + b.hi)) return dd(a.hi + b.hi);  // inf or NaN, as double gives it
    dd s = two_sum(a.hi, b.hi);
    const dd t = two_sum(a.lo, b.lo);
    s = fast_two_sum(s.hi, s.lo + t.hi);
    return fast_two_sum(s.hi, s.lo + t.lo);
  }
  friend dd operator-(const dd& a) { return {-a.hi, -a.lo}; }
  friend dd operator-(const dd& a, const dd& b) { return a + (-b); }
  friend dd operator*(const dd& a, const dd& b) {
    if (!std::isfinite(a.hi * b.hi)) return dd(a.hi * b.hi);
    const dd p = two_prod(a.hi, b.hi);
    return fast_two_sum(p.hi, std::fma(a.lo, b.hi, std::fma(a.hi, b.lo, p.lo)));
  }
  friend dd operator/(const dd& a, const dd& b) {
    const double q1 = a.hi / b.hi;
    if (!std::isfinite(q1) || std::isinf(b.hi)) return dd(q1);  // x / 0, x / inf, overflow
    dd r = a - b * dd(q1);
    const double q2 = r.hi / b.hi;
    r = r - b * dd(q2);
    const double q3 = r.hi / b.hi;
    return fast_two_sum(q1, q2) + dd(q3);
  }
  dd& operator+=(const dd& b) { return *this = *this + b; }
  dd& operator-=(const dd& b) { return *this = *this - b; }
  dd& operator*=(const dd& b) { return *this = *this * b; }
  dd& operator/=(const dd& b) { return *this = *this / b; }

  // acc + a b: TwoProd of the leading parts plus the cross terms, then TwoSum with acc's leading part, all error
  // terms summed in one double, and one normalisation. 15 double operations; the kernels of tensor/gemm.cpp
  // repeat exactly this sequence lane by lane.
  friend dd mul_add(const dd& a, const dd& b, const dd& acc) {
    const double p = rounded(a.hi * b.hi);
    double e = std::fma(a.hi, b.hi, -p);
    e = std::fma(a.hi, b.lo, e);
    e = std::fma(a.lo, b.hi, e);
    const dd s = two_sum(acc.hi, p);
    return fast_two_sum(s.hi, (s.lo + e) + acc.lo);
  }

  // Normalised pairs order as their values: by hi, then by lo.
  friend bool operator==(const dd& a, const dd& b) { return a.hi == b.hi && a.lo == b.lo; }
  friend bool operator!=(const dd& a, const dd& b) { return !(a == b); }
  friend bool operator<(const dd& a, const dd& b) { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo); }
  friend bool operator>(const dd& a, const dd& b) { return b < a; }
  friend bool operator<=(const dd& a, const dd& b) { return !(b < a) && a == a && b == b; }
  friend bool operator>=(const dd& a, const dd& b) { return b <= a; }

  friend dd abs(const dd& a) { return a.hi < 0 || (a.hi == 0 && a.lo < 0) ? -a : a; }
};

// sqrt(a): the double root, then one Newton step with its residual computed exactly (Karp and Markstein).
dd sqrt(const dd& a);
// exp(a) = 2^k exp(r / 512)^512, r = a - k ln 2, exp(r / 512) from its Taylor series in dd.
dd exp(const dd& a);
// log(a): the double log y, then one Newton step on exp, y + (a - e^y) / e^y, with e^y - 1 kept apart near a = 1.
dd log(const dd& a);
// erf(a) = (2 / sqrt(pi)) e^(-a^2) sum_n 2^n a^(2n+1) / (1 3 5 ... (2n+1)): every term has the sign of a, so the
// sum has no cancellation at any a (about 2 a^2 + 40 terms); +-1 past |a| = 10, where erfc < 1e-44.
dd erf(const dd& a);
// pi to dd's precision.
inline constexpr dd dd_pi{3.141592653589793, 1.2246467991473532e-16};

}  // namespace lowmem
