// The GEMM against the machine's ceiling (part of lowmem_bench; see bench_layers.cpp for the command line).
//
//   BM_FmaPeak/isa:I         fused multiply-adds on registers only (no memory): the most any f32 kernel can do on
//                            one core with instruction set I (0 avx2, 1 avx512; 2: VDPBF16PS, the bf16 ceiling).
//                            The ceiling the others are read against.
//   BM_EigenSgemm/shape:S    Eigen's float GEMM (Eigen 3.4, as built here): the sgemm lowmem used before its own.
//   BM_Gemm<T>/shape:S       lowmem::gemm with operands stored as T (float, f16, bf16), summed in float; and
//                            double (summed in double) and dd (double-double, each step 15 double operations:
//                            the high-precision reference).
// Shapes S (m x k times k x n), from the reference CNN's second layer (32 -> 32 channels, 3x3, one band of 252
// output positions) and a square product:
//   0 forward       W (32 x 288)  cols (288 x 252)
//   1 weight grad   dY (32 x 252) cols^T (252 x 288)     (cols stored 288 x 252: the packing transposes it)
//   2 input grad    W^T (288 x 32) dY (32 x 252)         (W stored 32 x 288)
//   3 square        512 x 512 x 512
// Counter GFLOP/s = 2 m n k per product.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <Eigen/Core>
#include <vector>

#include "numerics/random.hpp"
#include "tensor/gemm.hpp"

namespace {

using lowmem::index_t;
using lowmem::MatrixView;

struct GemmShape {
  index_t m, n, k;
  bool a_transposed, b_transposed;  // stored as the transpose (the view is .t() of a row-major matrix)
};
constexpr GemmShape kShapes[] = {
    {32, 252, 288, false, false}, {32, 288, 252, false, true}, {288, 252, 32, true, false},
    {512, 512, 512, false, false}};

void set_flops(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iteration * 1e-9 * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

template <class T> std::vector<T> random_matrix(index_t count, std::uint64_t seed) {
  lowmem::Rng rng(seed);
  std::vector<T> out(static_cast<std::size_t>(count));
  for (auto& v : out) v = lowmem::round_to<T>(rng.normal());
  return out;
}

template <class T> void BM_Gemm(benchmark::State& state) {
  const GemmShape s = kShapes[state.range(0)];
  const std::vector<T> a = random_matrix<T>(s.m * s.k, 1), b = random_matrix<T>(s.k * s.n, 2);
  const MatrixView<T> av = s.a_transposed ? MatrixView<T>::row_major(a.data(), s.k, s.m).t()
                                          : MatrixView<T>::row_major(a.data(), s.m, s.k);
  const MatrixView<T> bv = s.b_transposed ? MatrixView<T>::row_major(b.data(), s.n, s.k).t()
                                          : MatrixView<T>::row_major(b.data(), s.k, s.n);
  std::vector<lowmem::gemm_sum_t<T>> c(s.m * s.n);
  std::vector<float> workspace(lowmem::gemm_workspace_floats<T>(s.m, s.n, s.k));
  for (auto _ : state) {
    lowmem::gemm(av, bv, c.data(), s.n, false, workspace.data());
    benchmark::DoNotOptimize(c.data());
  }
  state.SetLabel(lowmem::to_string(lowmem::gemm_isa()));
  set_flops(state, 2.0 * s.m * s.n * s.k);
}

void BM_EigenSgemm(benchmark::State& state) {
  const GemmShape s = kShapes[state.range(0)];
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Matrix a = Matrix::Random(s.m, s.k), b = Matrix::Random(s.k, s.n);
  Matrix c(s.m, s.n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(state, 2.0 * s.m * s.n * s.k);
}

// 12 independent chains of FMAs per iteration, on registers: enough to cover the FMA latency on two pipes.
__attribute__((target("avx2,fma"), noinline)) float fma_chains_avx2(index_t steps) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
  for (index_t s = 0; s < steps; ++s)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  __m256 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
  return _mm256_cvtss_f32(sum);
}
__attribute__((target("avx512f"), noinline)) float fma_chains_avx512(index_t steps) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
  for (index_t s = 0; s < steps; ++s)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  __m512 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}

// The same for VDPBF16PS (two multiply-adds per f32 lane and instruction).
__attribute__((target("avx512f,avx512bf16"), noinline)) float dot_chains_bf16(index_t steps) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3a803a80);
  for (index_t s = 0; s < steps; ++s)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
  __m512 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}

void BM_FmaPeak(benchmark::State& state) {
  const int isa = static_cast<int>(state.range(0));
  const bool avx512 = isa >= 1;
  if (!lowmem::cpu_supports(isa == 2 ? lowmem::Isa::avx512_bf16 : avx512 ? lowmem::Isa::avx512 : lowmem::Isa::avx2)) {
    state.SkipWithError("this CPU lacks the instruction set");
    return;
  }
  constexpr index_t steps = 1 << 20;
  for (auto _ : state) {
    index_t n = steps;
    benchmark::DoNotOptimize(n);  // an opaque step count: the chains cannot be computed once for every iteration
    benchmark::DoNotOptimize(isa == 2 ? dot_chains_bf16(n) : avx512 ? fma_chains_avx512(n) : fma_chains_avx2(n));
  }
  set_flops(state, 2.0 * 12 * (isa == 2 ? 32 : avx512 ? 16 : 8) * steps);
}

}  // namespace

BENCHMARK(BM_FmaPeak)->ArgName("isa")->DenseRange(0, 2)->UseRealTime();
BENCHMARK(BM_EigenSgemm)->ArgName("shape")->DenseRange(0, 3)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gemm, float)->ArgName("shape")->DenseRange(0, 3)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gemm, lowmem::f16)->ArgName("shape")->DenseRange(0, 3)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gemm, lowmem::bf16)->ArgName("shape")->DenseRange(0, 3)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gemm, double)->ArgName("shape")->DenseRange(0, 3)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gemm, lowmem::dd)->ArgName("shape")->DenseRange(0, 3)->UseRealTime();
