// Layer and training-step benchmarks (Google Benchmark).
//
//   lowmem_bench [--benchmark_filter=REGEX] [--benchmark_min_time=0.5] ...
//   LOWMEM_BENCH_THREADS=N   threads for Eigen and OpenMP (default 1)
//
// Benchmarks, each over float, double, f16 and bf16 (the convolution also over the references dd and mp):
//   BM_Conv2dForward / BM_Conv2dForwardBackward   the reference CNN's second layer: 32 -> 32 channels, 3x3, pad 1,
//       28x28 images, batch 64. items = images; "GFLOP/s" counts 2 N Cout Cin 9 H W flops per forward (and three
//       times that for forward + backward: the output, weight-gradient and input-gradient products).
//       The second template argument is the accumulation mode; 16-bit storage accumulation (Accumulate::storage)
//       runs Eigen's GEMM in half/bfloat16 and is ~100x slower, so it runs a fixed 2 iterations.
//   BM_Conv2dBackward/input_grad:G   the same layer's backward alone: weights only (G 0) or weights and input
//       (G 1); the backward-data rate is kConvFlops / (time G1 - time G0).
//   BM_LinearForwardBackward/in/out   a linear layer, batch 64, forward and backward (3 products).
//   (bench_gemm.cpp: the GEMM itself, Eigen's sgemm and the machine's FMA ceiling.)
//   BM_TrainStep   one optimizer step (forward, loss, backward, SGD momentum 0.9) of the reference CNN through
//       lowmem::Trainer<T>. Counters: ms/step and the ledger's peak bytes (MemoryLedger::peak_total).
//   BM_ReversibleStep/arch:A/rebuild:R   the same step, f32, for the reversible architectures (A: 0 revnet,
//       1 hybrid, 2 flat; stages 2, blocks 4, width 16) with stored activations (R 0) or backprop by
//       reconstruction (R 1): what rebuilding costs in time, and saves in memory (peak and saved-activation bytes).
// All benchmarks use wall-clock time (UseRealTime): the work runs on OpenMP threads, not only the main thread.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "numerics/threads.hpp"
#include "layers/conv2d.hpp"
#include "layers/linear.hpp"
#include "tensor/memory_ledger.hpp"
#include "training/run_config.hpp"
#include "training/trainer.hpp"

namespace {

using lowmem::Accumulate;
using lowmem::index_t;

// Accumulation modes as types, so that BENCHMARK_TEMPLATE names read "BM_Conv2dForward<lowmem::f16, AccStorage>".
struct AccF32 {
  static constexpr Accumulate mode = Accumulate::f32;
};
struct AccStorage {
  static constexpr Accumulate mode = Accumulate::storage;
};

constexpr index_t kBatch = 64, kChannels = 32, kSize = 28, kKernel = 3;
constexpr double kConvFlops = 2.0 * kBatch * kChannels * kChannels * kKernel * kKernel * kSize * kSize;

// Standard normal values rounded once into T.
template <class T> void fill_normal(lowmem::Tensor<T>& t, std::uint64_t seed) {
  lowmem::Rng rng(seed);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = lowmem::round_to<T>(rng.normal());
}

// The conv layer, its input (N, 32, 28, 28) and an output gradient of the same shape, charged to one ledger.
template <class T> struct ConvFixture {
  lowmem::MemoryLedger ledger;
  lowmem::MemoryLedger::Scope scope{ledger};
  lowmem::Conv2d<T> conv{"bench conv 32->32", lowmem::Conv2dSpec{kChannels, kChannels, kKernel, 1, 1, true}};
  lowmem::Tensor<T> x{lowmem::Shape{kBatch, kChannels, kSize, kSize}, lowmem::MemoryCategory::workspace};
  lowmem::Tensor<T> dy{lowmem::Shape{kBatch, kChannels, kSize, kSize}, lowmem::MemoryCategory::workspace};
  ConvFixture() {
    lowmem::Rng rng(1);
    conv.initialize(rng);
    fill_normal(x, 2);
    fill_normal(dy, 3);
  }
};

// Wall-clock seconds of the timed loop, for counters shown as plain numbers (Google Benchmark's rate counters
// append "/s" to the value, and inverted rates "s", which reads wrongly next to names like "ms/step").
class LoopTimer {
 public:
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
 private:
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

void set_conv_counters(benchmark::State& state, double flops_per_iteration, double seconds) {
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["GFLOP/s"] = flops_per_iteration * 1e-9 * static_cast<double>(state.iterations()) / seconds;
}

template <class T, class Acc> void BM_Conv2dForward(benchmark::State& state) {
  ConvFixture<T> f;
  const lowmem::RunContext ctx{/*training=*/false, Acc::mode};
  const LoopTimer timer;
  for (auto _ : state) {
    lowmem::Tensor<T> y = f.conv.forward(f.x, ctx);
    benchmark::DoNotOptimize(y.data());
  }
  set_conv_counters(state, kConvFlops, timer.seconds());
}

template <class T, class Acc> void BM_Conv2dForwardBackward(benchmark::State& state) {
  ConvFixture<T> f;
  const lowmem::RunContext ctx{/*training=*/true, Acc::mode};
  const LoopTimer timer;
  for (auto _ : state) {
    lowmem::Tensor<T> y = f.conv.forward(f.x, ctx);
    lowmem::Tensor<T> dx = f.conv.backward(f.dy, ctx, /*want_input_grad=*/true);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
  }
  set_conv_counters(state, 3 * kConvFlops, timer.seconds());
}

// Backward alone (the forward that keeps its input runs untimed): with the input gradient (backward-weights and
// backward-data, 2 x the forward's flops) or without it (backward-weights only, as for a first layer). The
// backward-data rate is the difference: flops / (time with - time without).
template <class T> void BM_Conv2dBackward(benchmark::State& state) {
  ConvFixture<T> f;
  const bool input_grad = state.range(0) == 1;
  const lowmem::RunContext ctx{/*training=*/true, Accumulate::f32};
  double seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    lowmem::Tensor<T> y = f.conv.forward(f.x, ctx);
    benchmark::DoNotOptimize(y.data());
    const LoopTimer timer;
    state.ResumeTiming();
    lowmem::Tensor<T> dx = f.conv.backward(f.dy, ctx, input_grad);
    benchmark::DoNotOptimize(dx.data());
    seconds += timer.seconds();
  }
  set_conv_counters(state, (input_grad ? 2 : 1) * kConvFlops, seconds);
}

// A linear layer, forward and backward (3 products of 2 N in out flops): the reference CNN's last layer
// (3136 -> 10) and a square one (512 -> 512), batch 64.
template <class T> void BM_LinearForwardBackward(benchmark::State& state) {
  const index_t in = state.range(0), out = state.range(1);
  lowmem::MemoryLedger ledger;
  lowmem::MemoryLedger::Scope scope{ledger};
  lowmem::Linear<T> linear("bench linear", in, out, true);
  lowmem::Rng rng(1);
  linear.initialize(rng);
  lowmem::Tensor<T> x{lowmem::Shape{kBatch, in}, lowmem::MemoryCategory::workspace};
  lowmem::Tensor<T> dy{lowmem::Shape{kBatch, out}, lowmem::MemoryCategory::workspace};
  fill_normal(x, 2);
  fill_normal(dy, 3);
  const lowmem::RunContext ctx{/*training=*/true, Accumulate::f32};
  const LoopTimer timer;
  for (auto _ : state) {
    lowmem::Tensor<T> y = linear.forward(x, ctx);
    lowmem::Tensor<T> dx = linear.backward(dy, ctx, /*want_input_grad=*/true);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["GFLOP/s"] =
      3 * 2.0 * kBatch * in * out * 1e-9 * static_cast<double>(state.iterations()) / timer.seconds();
}

// The reference CNN (model.arch "cnn": conv 32, 32, 64, 64, each + batchnorm + relu, 2x2 max pool after every
// second conv, flatten, linear 3136 -> 10) on 1x28x28 inputs, SGD momentum 0.9, batch 64.
template <class T> lowmem::RunConfig reference_cnn_config() {
  const nlohmann::json config = {
      {"name", "bench"},
      {"precision", lowmem::to_string(lowmem::precision_of<T>())},
      {"model", {{"arch", "cnn"}, {"input", {1, 28, 28}}}},
      {"data", {{"dataset", "synthetic"}, {"synthetic", {{"count", kBatch}}}}},
      {"train", {{"batch", kBatch}, {"optimizer", {{"type", "sgd"}, {"lr", 0.01}, {"momentum", 0.9}}}}},
  };
  return lowmem::parse_run_config(config, "bench_layers.cpp");
}

// Times optimizer steps of `config` on one fixed random batch; counters: ms/step, the ledger's peak bytes and its
// saved-activation peak.
template <class T> void time_train_steps(benchmark::State& state, const lowmem::RunConfig& config) {
  lowmem::MemoryLedger ledger;
  lowmem::Trainer<T> trainer(config, ledger);
  lowmem::Tensor<T> x = trainer.empty_batch(kBatch);
  fill_normal(x, 4);
  std::vector<std::int32_t> labels(kBatch);
  for (index_t i = 0; i < kBatch; ++i) labels[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % 10);
  const LoopTimer timer;
  for (auto _ : state) benchmark::DoNotOptimize(trainer.train_step(x, labels, 0.01));
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["ms/step"] = 1e3 * timer.seconds() / static_cast<double>(state.iterations());
  for (auto [name, bytes] : {std::pair{"peak_ledger_bytes", ledger.peak_total()},
                             std::pair{"saved_activation_bytes", ledger.peak(lowmem::MemoryCategory::saved_activations)}})
    state.counters[name] = benchmark::Counter(static_cast<double>(bytes), benchmark::Counter::kDefaults,
                                              benchmark::Counter::OneK::kIs1024);
}

template <class T> void BM_TrainStep(benchmark::State& state) { time_train_steps<T>(state, reference_cnn_config<T>()); }

void BM_ReversibleStep(benchmark::State& state) {
  const char* archs[] = {"revnet", "hybrid", "flat"};
  const nlohmann::json json = {
      {"name", "bench"},
      {"model", {{"arch", archs[state.range(0)]}, {"stages", 2}, {"blocks", 4}, {"width", 16}, {"input", {1, 28, 28}}}},
      {"technique", {{"type", state.range(1) ? "reversible" : "store_all"}}},
      {"data", {{"dataset", "synthetic"}, {"synthetic", {{"count", kBatch}}}}},
      {"train", {{"batch", kBatch}, {"optimizer", {{"type", "sgd"}, {"lr", 0.01}, {"momentum", 0.9}}}}},
  };
  time_train_steps<float>(state, lowmem::parse_run_config(json, "bench_layers.cpp"));
}

// Storage accumulation evaluates Eigen's GEMM in 16-bit arithmetic (~0.3 GFLOP/s): a few seconds per forward.
constexpr benchmark::IterationCount kSlowIterations = 2;

}  // namespace

#define LOWMEM_CONV_BENCH(T)                                                                                      \
  BENCHMARK_TEMPLATE(BM_Conv2dForward, T, AccF32)->Unit(benchmark::kMillisecond)->UseRealTime();                 \
  BENCHMARK_TEMPLATE(BM_Conv2dForwardBackward, T, AccF32)->Unit(benchmark::kMillisecond)->UseRealTime();
#define LOWMEM_KERNEL_BENCH(T)                                                                                    \
  BENCHMARK_TEMPLATE(BM_Conv2dBackward, T)->ArgName("input_grad")->DenseRange(0, 1)->Unit(benchmark::kMillisecond) \
      ->UseRealTime();                                                                                            \
  BENCHMARK_TEMPLATE(BM_LinearForwardBackward, T)->Args({3136, 10})->Args({512, 512})->UseRealTime();
LOWMEM_KERNEL_BENCH(float)
LOWMEM_KERNEL_BENCH(lowmem::f16)
LOWMEM_KERNEL_BENCH(lowmem::bf16)
LOWMEM_CONV_BENCH(float)
LOWMEM_CONV_BENCH(double)
LOWMEM_CONV_BENCH(lowmem::f16)
LOWMEM_CONV_BENCH(lowmem::bf16)
LOWMEM_CONV_BENCH(lowmem::dd)
// The 113-bit Boost reference: tens of seconds per forward, so one iteration of each.
BENCHMARK_TEMPLATE(BM_Conv2dForward, lowmem::mp, AccF32)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_TEMPLATE(BM_Conv2dForwardBackward, lowmem::mp, AccF32)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_TEMPLATE(BM_Conv2dForward, lowmem::f16, AccStorage)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(kSlowIterations);
BENCHMARK_TEMPLATE(BM_Conv2dForward, lowmem::bf16, AccStorage)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(kSlowIterations);

BENCHMARK_TEMPLATE(BM_TrainStep, float)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_TrainStep, double)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_TrainStep, lowmem::f16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_TrainStep, lowmem::bf16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ReversibleStep)
    ->ArgsProduct({{0, 1, 2}, {0, 1}})
    ->ArgNames({"arch", "rebuild"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

int main(int argc, char** argv) {
  lowmem::keep_freed_memory_in_process();
  int threads = 1;
  if (const char* env = std::getenv("LOWMEM_BENCH_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*env == '\0' || *end != '\0' || n < 1 || n > 1024) {
      std::fprintf(stderr, "LOWMEM_BENCH_THREADS: expected a whole number from 1 to 1024, got \"%s\"\n", env);
      return 2;
    }
    threads = static_cast<int>(n);
  }
  lowmem::set_threads(threads);
  benchmark::AddCustomContext("lowmem_threads", std::to_string(threads));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
