#pragma once
// Deterministic random numbers, identical on every platform and compiler: the standard library's distributions
// are implementation-defined, so weights, data order and augmentation all draw from this generator instead.
#include <cmath>
#include <cstdint>
#include <numbers>

namespace lowmem {

// SplitMix64: small state, passes BigCrush, and seeds independent streams by hashing (seed, stream).
class Rng {
 public:
  explicit Rng(std::uint64_t seed, std::uint64_t stream = 0) : state_(mix(seed ^ mix(stream + 0x9e3779b97f4a7c15ULL))) {}

  std::uint64_t next_u64() { return mix(state_ += 0x9e3779b97f4a7c15ULL); }
  // SplitMix64 is a counter: the value next_u64() gives k calls from now (k = 0: the next), without drawing it, and
  // skipping n draws. A loop can then draw out of order, or in vector lanes, and still give the stream's values.
  std::uint64_t peek_u64(std::uint64_t k) const { return mix(state_ + (k + 1) * 0x9e3779b97f4a7c15ULL); }
  void skip(std::uint64_t n) { state_ += n * 0x9e3779b97f4a7c15ULL; }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform integer in [0, n) without modulo bias (Lemire's method).
  std::uint64_t below(std::uint64_t n) {
    for (;;) {
      const unsigned __int128 m = static_cast<unsigned __int128>(next_u64()) * n;
      const auto low = static_cast<std::uint64_t>(m);
      if (low >= n || low >= (-n) % n) return static_cast<std::uint64_t>(m >> 64);
    }
  }

  // Standard normal by Box-Muller (one value per call, so the stream position is easy to reason about).
  double normal() {
    const double u1 = 1.0 - uniform();  // in (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t state_;
};

}  // namespace lowmem
