// The GEMM's rounding rule (tensor/gemm.hpp), checked bit for bit on every instruction set this CPU has: each
// entry of c must equal a fused multiply-add chain written out here in scalar code, k ascending for f32, f64, f16
// and dd (each step dd's mul_add), and in VDPBF16PS's order with its denormal rule for bf16.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "numerics/random.hpp"
#include "tensor/gemm.hpp"

namespace lowmem {
namespace {

std::vector<Isa> isas_here() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512_bf16})
    if (cpu_supports(isa)) out.push_back(isa);
  return out;
}

class IsaGuard {  // restores the kernels in use
 public:
  ~IsaGuard() { set_gemm_isa(saved_); }
 private:
  Isa saved_ = gemm_isa();
};

template <class C> bool same_bits(C x, C y) {
  if constexpr (std::is_same_v<C, dd>) return same_bits(x.hi, y.hi) && same_bits(x.lo, y.lo);
  else return std::memcmp(&x, &y, sizeof x) == 0 || (std::isnan(x) && std::isnan(y));
}

// bf16's rule: denormal inputs read as zero, each sum flushed to (signed) zero when it is denormal.
float daz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }

// The chain that entry (i, j) must be.
template <class T, class C = gemm_sum_t<T>>
C reference_entry(const std::vector<T>& a, const std::vector<T>& b, index_t i, index_t j, index_t k, index_t n,
                  C start) {
  if constexpr (std::is_same_v<T, dd>) {
    C acc = start;
    for (index_t kk = 0; kk < k; ++kk) acc = mul_add(a[i * k + kk], b[kk * n + j], acc);
    return acc;
  } else if constexpr (!std::is_same_v<T, bf16>) {
    C acc = start;
    for (index_t kk = 0; kk < k; ++kk)
      acc = std::fma(static_cast<C>(a[i * k + kk]), static_cast<C>(b[kk * n + j]), acc);
    return acc;
  } else {
    float acc = daz(start);
    auto step = [&](index_t kk) {
      const float x = kk < k ? daz(static_cast<float>(a[i * k + kk])) : 0.0f;
      const float y = kk < k ? daz(static_cast<float>(b[kk * n + j])) : 0.0f;
      acc = daz(std::fma(x, y, acc));
    };
    for (index_t p = 0; p < k; p += 2) {
      step(p + 1);
      step(p);
    }
    return acc;
  }
}

// Values of mixed magnitude; for bf16 also some whose products and sums fall below the normal range.
template <class T> std::vector<T> random_values(index_t count, Rng& rng, bool tiny) {
  std::vector<T> out(static_cast<std::size_t>(count));
  for (auto& v : out) {
    double x = rng.normal();
    if (tiny && rng.uniform(0, 1) < 0.3) x *= std::ldexp(1.0, -64);
    v = round_to<T>(x);
    if constexpr (std::is_same_v<T, dd>) v = dd::fast_two_sum(x, std::ldexp(x * rng.normal(), -54));  // lo too
  }
  return out;
}

template <class T> void check_products(bool tiny) {
  const IsaGuard guard;
  Rng rng(7);
  const index_t sizes[][3] = {{1, 1, 1}, {3, 5, 7}, {8, 32, 256}, {13, 37, 257}, {100, 40, 300},
                              {97, 300, 515}, {64, 10, 3136}, {30, 260, 9}};
  for (const auto& s : sizes) {
    const index_t m = s[0], n = s[1], k = s[2];
    const std::vector<T> a = random_values<T>(m * k, rng, tiny), b = random_values<T>(k * n, rng, tiny);
    using C = gemm_sum_t<T>;
    const std::vector<C> start = random_values<C>(m * n, rng, tiny);
    std::vector<float> workspace(static_cast<std::size_t>(gemm_workspace_floats<T>(m, n, k)));
    for (bool add : {false, true}) {
      for (Isa isa : isas_here()) {
        set_gemm_isa(isa);
        // a and b given transposed (their columns contiguous) exercise the strided paths; b through row offsets
        // (its rows stored in reverse order, as a convolution's columns are read from a padded image) the in-place
        // one. For f32, a and b are then read where they lie; the bits must not depend on it.
        std::vector<T> at(a.size()), bt(b.size()), b_reversed(b.size());
        for (index_t r = 0; r < m; ++r)
          for (index_t c = 0; c < k; ++c) at[c * m + r] = a[r * k + c];
        for (index_t r = 0; r < k; ++r)
          for (index_t c = 0; c < n; ++c) bt[c * k + r] = b[r * n + c];
        std::vector<std::int32_t> offsets(static_cast<std::size_t>(k));
        for (index_t r = 0; r < k; ++r) {
          offsets[r] = static_cast<std::int32_t>((k - 1 - r) * n);
          std::copy(b.begin() + r * n, b.begin() + (r + 1) * n, b_reversed.begin() + offsets[r]);
        }
        // f16 and bf16 also with one operand widened to float (as a convolution's image is, gemm.hpp): b in
        // each of its forms, and a; the float operand is then read in place where it can be.
        const auto widen = [](const std::vector<T>& v) {
          std::vector<float> out(v.size());
          if constexpr (is_16bit<T>)
            for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
          return out;
        };
        const std::vector<float> a_wide = widen(a), b_wide = widen(b), bt_wide = widen(bt),
                                 b_reversed_wide = widen(b_reversed);
        const int forms = is_16bit<T> ? 8 : 4;
        for (int form = 0; form < forms; ++form) {
          const bool a_transposed = form == 3;
          const MatrixView<T> av = a_transposed ? MatrixView<T>::row_major(at.data(), k, m).t()
                                                : MatrixView<T>::row_major(a.data(), m, k);
          const MatrixView<T> bv = form % 4 == 1   ? MatrixView<T>::row_major(bt.data(), n, k).t()
                                   : form % 4 == 2 ? MatrixView<T>::rows_at(b_reversed.data(), offsets.data(), k, n)
                                                   : MatrixView<T>::row_major(b.data(), k, n);
          std::vector<C> c(start);
          if (form < 4) {
            gemm(av, bv, c.data(), n, add, workspace.data());
          } else if constexpr (is_16bit<T>) {
            const MatrixView<float> b_float =
                form == 5   ? MatrixView<float>::row_major(bt_wide.data(), n, k).t()
                : form == 6 ? MatrixView<float>::rows_at(b_reversed_wide.data(), offsets.data(), k, n)
                            : MatrixView<float>::row_major(b_wide.data(), k, n);
            if (form == 7) gemm(MatrixView<float>::row_major(a_wide.data(), m, k), bv, c.data(), n, add, workspace.data());
            else gemm(av, b_float, c.data(), n, add, workspace.data());
          }
          index_t wrong = 0;
          for (index_t i = 0; i < m; ++i)
            for (index_t j = 0; j < n; ++j) {
              const C want = reference_entry(a, b, i, j, k, n, add ? start[i * n + j] : C(0));
              if (!same_bits(c[i * n + j], want)) {
                if (wrong++ < 3)
                  ADD_FAILURE() << to_string(isa) << " m=" << m << " n=" << n << " k=" << k << " add=" << add
                                << " form=" << form << " (" << i << ", " << j << "): " << to_double(c[i * n + j])
                                << " != " << to_double(want);
              }
            }
          ASSERT_EQ(wrong, 0);
        }
      }
    }
  }
}

TEST(Gemm, Float32IsOneFmaChainOnEveryIsa) { check_products<float>(false); }
TEST(Gemm, Float64IsOneFmaChainOnEveryIsa) { check_products<double>(false); }
TEST(Gemm, Float16IsOneFmaChainOnEveryIsa) { check_products<f16>(false); }
TEST(Gemm, Bfloat16FollowsVdpbf16psOnEveryIsa) { check_products<bf16>(false); }
TEST(Gemm, Bfloat16FlushesDenormalsOnEveryIsa) { check_products<bf16>(true); }
TEST(Gemm, DoubleDoubleIsOneMulAddChainOnEveryIsa) { check_products<dd>(false); }

// The chain is not a stand-in for something looser: against a double-precision product the error is that of
// float summation, and a product of ones counts exactly.
TEST(Gemm, AgreesWithDoubleProduct) {
  Rng rng(3);
  const index_t m = 50, n = 70, k = 600;
  const std::vector<float> a = random_values<float>(m * k, rng, false), b = random_values<float>(k * n, rng, false);
  std::vector<float> c(m * n), workspace(gemm_workspace_floats(m, n, k));
  gemm(MatrixView<float>::row_major(a.data(), m, k), MatrixView<float>::row_major(b.data(), k, n), c.data(), n,
       false, workspace.data());
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double exact = 0, magnitude = 0;
      for (index_t kk = 0; kk < k; ++kk) {
        exact += double(a[i * k + kk]) * b[kk * n + j];
        magnitude += std::abs(double(a[i * k + kk]) * b[kk * n + j]);
      }
      ASSERT_LE(std::abs(c[i * n + j] - exact), k * FLT_EPSILON * magnitude);
    }
  const std::vector<float> ones(k * n, 1.0f), row(k, 1.0f);
  std::vector<float> count(n);
  gemm(MatrixView<float>::row_major(row.data(), 1, k), MatrixView<float>::row_major(ones.data(), k, n),
       count.data(), n, false, workspace.data());
  for (float x : count) EXPECT_EQ(x, float(k));
}

TEST(Gemm, RefusesAnIsaTheCpuLacks) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512_bf16}) {
    if (!cpu_supports(isa)) {
      EXPECT_THROW(set_gemm_isa(isa), std::invalid_argument);
    }
  }
  EXPECT_TRUE(cpu_supports(Isa::portable));
}

}  // namespace
}  // namespace lowmem
