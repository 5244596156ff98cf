#pragma once
// The standard normal distribution's Phi(x) (cumulative) and phi(x) (density) in double, without branches or calls,
// so that a loop over an array of them vectorises. GELU in float and 16-bit storage uses it: glibc's erff and expf
// are scalar calls whose cost grows with |x| (a third of a Transformer's step late in training, when the
// pre-activations have grown), and their bits depend on the C library's version; these do not.
//
// Accuracy: erfc(z) = t Q(t) exp(-z^2), t = 1 / (1 + 0.3 z), z = |x| / sqrt 2, Q a degree-18 polynomial
// (coefficients and their derivation: scripts/fit_normal_tail.py; within 4.2e-16 relative);
// exp by range reduction and a degree-12 Taylor polynomial. For float inputs x^2 / 2 is exact in double, and Phi
// and phi come out within about 1e-15 relative up to |x| = 14.8 (z = 10.5); beyond it Phi(-|x|) and phi, below
// 1e-49 and 0 once rounded to float, are returned as 0, and Phi(|x|) as 1. So GELU in float gives -inf * 0 = NaN
// at -inf, as PyTorch does. NaN stays NaN. Meant for float inputs: for doubles the error bound is the same up to
// |x| = 14.8, but the tails beyond are cut to 0 where double could still hold them.
// tests/test_normal.cpp checks these bounds against the multiprecision erfc.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace lowmem {

namespace normal_detail {

// exp(y) for y in [-700, 0]: y = k ln 2 + r with |r| <= ln 2 / 2, e^r by Taylor to degree 12 (its remainder below
// 2e-16 relative), 2^k written into the exponent bits.
inline double exp_nonpositive(double y) {
  constexpr double log2e = 1.4426950408889634, ln2_hi = 0x1.62e42fefa3800p-1, ln2_lo = 0x1.ef35793c76730p-45;
  constexpr double round_shift = 0x1.8p52;  // adding it rounds to an integer held in the low bits
  const double shifted = y * log2e + round_shift;
  const double k = shifted - round_shift;
  const double r = (y - k * ln2_hi) - k * ln2_lo;
  double p = 1.0 / 479001600.0;  // 1/12!
  constexpr double inverse_factorials[] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
                                           1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,    1.0 / 24.0,
                                           1.0 / 6.0,        0.5,             1.0,            1.0};
#pragma GCC unroll 12  // unrolled loops leave the caller's loop over an array free to vectorise
  for (double c : inverse_factorials) p = p * r + c;
  const std::int64_t k_int = std::bit_cast<std::int64_t>(shifted) - std::bit_cast<std::int64_t>(round_shift);
  return p * std::bit_cast<double>(static_cast<std::uint64_t>(k_int + 1023) << 52);
}

// Q(t) = sum_k kTailPolynomial[k] u^k, u = kTailA t + kTailB mapping t in [1 / (1 + 0.3 * 10.5), 1] onto [-1, 1]: a
// degree-18 Chebyshev interpolant rewritten for Horner's rule (scripts/fit_normal_tail.py; within 4.2e-16).
constexpr double kTailP = 0.3, kTailZMax = 10.5, kTailA = 2.634920634920635, kTailB = -1.6349206349206349;
constexpr double kTailPolynomial[] = {
    0.4050245161721952,     0.3009987508323866,     0.17717041508867848,     0.08161973688670544,
    0.028255338823589424,   0.006566680690175872,   0.0006064236671187536,   -0.00018277231113244212,
    -6.495258718691965e-05, 1.7660756939632937e-06, 4.218752551787471e-06,   1.5923188902041297e-07,
    -2.884512281876766e-07, -1.3712662154034147e-08, 2.2157201791175392e-08, 2.8632545128336977e-10,
    -1.7534793413019746e-09, 4.649776704781979e-11, 1.0467958075648554e-10,
};

}  // namespace normal_detail

struct NormalCdfPdf {
  double cdf, pdf;
};

inline NormalCdfPdf normal_cdf_pdf(double x) {
  using namespace normal_detail;
  constexpr double inv_sqrt2 = 0.70710678118654752440, inv_sqrt_2pi = 0.39894228040143267794;
  const double z_exact = std::abs(x) * inv_sqrt2, z = std::min(z_exact, kTailZMax);  // NaN passes min unchanged
  const double t = 1.0 / (1.0 + kTailP * z);
  const double u = kTailA * t + kTailB;
  double q = kTailPolynomial[18];
#pragma GCC unroll 18
  for (int k = 17; k >= 0; --k) q = q * u + kTailPolynomial[k];
  const double gauss = exp_nonpositive(std::max(-0.5 * x * x, -700.0));  // exp(-x^2 / 2) = exp(-z^2)
  const bool far = z_exact > kTailZMax;                                 // Phi(-|x|), phi < 1e-49: 0
  const double tail = far ? 0.0 : 0.5 * t * q * gauss;                  // Phi(-|x|) = erfc(z) / 2
  return {x < 0.0 ? tail : 1.0 - tail, far ? 0.0 : gauss * inv_sqrt_2pi};
}

}  // namespace lowmem
