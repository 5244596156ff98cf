// The LSTM layer beyond the generic checker (tests/layer_cases.cpp): causality, a case worked by hand, what
// forward keeps, and the dry run's memory against the real run's, event for event.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "layers/lstm.hpp"
#include "layers/saved.hpp"
#include "tensor/memory_ledger.hpp"
#include "numerics/error.hpp"
#include "numerics/threads.hpp"

namespace lowmem {
namespace {

template <class T> Tensor<T> random_sequence(const Shape& shape, Rng& rng) {
  Tensor<T> x(shape, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = round_to<T>(rng.normal());
  return x;
}

template <class T> bool same_bits(const T& a, const T& b) {
  if constexpr (is_16bit<T>) return Eigen::numext::bit_cast<std::uint16_t>(a) == Eigen::numext::bit_cast<std::uint16_t>(b);
  else return a == b;
}

// Changing x at step t0 leaves every output before t0 unchanged, bit for bit, and changes the output at t0, in
// both layers' worth of recurrence; and evaluation (c kept in one slot) computes what training computes.
template <class T> void expect_causal(Accumulate accumulate) {
  const index_t n = 2, steps = 6, features = 3, hidden = 4, t0 = 3;
  Lstm<T> lstm("lstm", features, hidden, 2);
  Rng rng(5);
  lstm.initialize(rng);
  const Tensor<T> x = random_sequence<T>(Shape{n, steps, features}, rng);
  Tensor<T> changed = x.clone(MemoryCategory::workspace);
  for (index_t s = 0; s < n; ++s)
    for (index_t f = 0; f < features; ++f) changed[(s * steps + t0) * features + f] = round_to<T>(rng.normal());
  const RunContext train{true, accumulate}, evaluate{false, accumulate};
  const Tensor<T> y = lstm.forward(x, train);
  const Tensor<T> y_eval = lstm.forward(x, evaluate);
  const Tensor<T> y_changed = lstm.forward(changed, evaluate);
  ASSERT_EQ(y.shape(), (Shape{n, steps, hidden}));
  for (index_t i = 0; i < y.numel(); ++i) ASSERT_TRUE(same_bits(y[i], y_eval[i])) << "evaluation differs at " << i;
  for (index_t s = 0; s < n; ++s) {
    bool moved_at_t0 = false;
    for (index_t t = 0; t <= t0; ++t)
      for (index_t j = 0; j < hidden; ++j) {
        const index_t at = (s * steps + t) * hidden + j;
        if (t < t0) ASSERT_TRUE(same_bits(y[at], y_changed[at])) << "sample " << s << " step " << t << " unit " << j;
        else moved_at_t0 = moved_at_t0 || !same_bits(y[at], y_changed[at]);
      }
    EXPECT_TRUE(moved_at_t0) << "sample " << s << ": the changed step must change its own output";
  }
}

TEST(Lstm, OutputsBeforeAChangedStepAreUnchangedBitForBit) {
  expect_causal<double>(Accumulate::f32);
  expect_causal<float>(Accumulate::f32);
  expect_causal<f16>(Accumulate::f32);  // products in float, gates kept in a separate f16 buffer
  expect_causal<bf16>(Accumulate::storage);
}

// One layer, input 1, hidden 1, two steps, weights set by hand (gate rows i, f, g, o):
//   W_ih = (0.5, -0.5, 1, 0.25), W_hh = (0.1, 0.2, -0.3, 0.4), b_ih = (0, 0.5, 0, 0), b_hh = (0.1, 0, 0, -0.1),
//   x = (1, -2), h_0 = c_0 = 0.
// Step 1: pre-activations i 0.5 + 0.1 = 0.6, f -0.5 + 0.5 = 0, g 1, o 0.25 - 0.1 = 0.15, so
//   i = s(0.6) = 0.645656..., f = 0.5, g = tanh 1 = 0.761594..., o = s(0.15) = 0.537430...;
//   c_1 = i g = 0.491728..., h_1 = o tanh c_1 = 0.244846....
// Step 2: pre-activations i -1 + 0.1 + 0.1 h_1, f 1 + 0.5 + 0.2 h_1, g -2 - 0.3 h_1, o -0.5 - 0.1 + 0.4 h_1
//   (-0.875515..., 1.548969..., -2.073454..., -0.502062...), so c_2 = f c_1 + i g = 0.120609..., h_2 = o tanh c_2
//   = 0.045257... (both figures also from torch.nn.LSTM(1, 1) with these weights).
TEST(Lstm, HandComputedTwoSteps) {
  Lstm<double> lstm("lstm", 1, 1, 1);
  const auto p = lstm.params();
  ASSERT_EQ(p.size(), 4u);
  const double w_ih[4] = {0.5, -0.5, 1.0, 0.25}, w_hh[4] = {0.1, 0.2, -0.3, 0.4}, b_ih[4] = {0, 0.5, 0, 0},
               b_hh[4] = {0.1, 0, 0, -0.1};
  for (int r = 0; r < 4; ++r) {
    p[0]->value[r] = w_ih[r];
    p[1]->value[r] = w_hh[r];
    p[2]->value[r] = b_ih[r];
    p[3]->value[r] = b_hh[r];
  }
  Tensor<double> x(Shape{1, 2, 1}, MemoryCategory::workspace);
  x[0] = 1.0;
  x[1] = -2.0;
  const Tensor<double> y = lstm.forward(x, RunContext{false, Accumulate::f32});
  auto s = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double c1 = s(0.6) * std::tanh(1.0), h1 = s(0.15) * std::tanh(c1);
  const double c2 = s(1.5 + 0.2 * h1) * c1 + s(-0.9 + 0.1 * h1) * std::tanh(-2 - 0.3 * h1);
  const double h2 = s(-0.6 + 0.4 * h1) * std::tanh(c2);
  EXPECT_NEAR(h1, 0.24484599866828824, 1e-15);
  EXPECT_NEAR(h2, 0.04525709484782521, 1e-15);
  EXPECT_NEAR(y[0], h1, 1e-15);
  EXPECT_NEAR(y[1], h2, 1e-15);
}

// Steps large enough to run over the threads (N 4H = 2^15 gate values per step, and the bias sums): output, input
// gradient and parameter gradients are the same bits on one thread and on two.
template <class T> std::vector<T> step_values(int threads) {
  const int threads_before = omp_get_max_threads();
  set_threads(threads);
  const index_t n = 64, steps = 3, features = 8, hidden = 128;
  Lstm<T> lstm("lstm", features, hidden, 2);
  Rng rng(3);
  lstm.initialize(rng);
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<T> y = lstm.forward(random_sequence<T>(Shape{n, steps, features}, rng), ctx);
  const Tensor<T> dx = lstm.backward(random_sequence<T>(y.shape(), rng), ctx, true);
  std::vector<T> values(y.data(), y.data() + y.numel());
  values.insert(values.end(), dx.data(), dx.data() + dx.numel());
  for (Param<T>* p : lstm.params()) values.insert(values.end(), p->grad.data(), p->grad.data() + p->grad.numel());
  set_threads(threads_before);
  return values;
}

template <class T> void expect_thread_count_independent() {
  const std::vector<T> one = step_values<T>(1), two = step_values<T>(2);
  ASSERT_EQ(one.size(), two.size());
  for (std::size_t i = 0; i < one.size(); ++i) ASSERT_TRUE(same_bits(one[i], two[i])) << "value " << i;
}

TEST(Lstm, ResultsDoNotDependOnTheThreadCount) {
  expect_thread_count_independent<float>();
  expect_thread_count_independent<f16>();
}

TEST(Lstm, ParametersAreNamedAndShapedAsPyTorchsStateDict) {
  Lstm<float> lstm("lstm", 3, 5, 2);
  const char* names[] = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"};
  const Shape shapes[] = {Shape{20, 3}, Shape{20, 5}, Shape{20}, Shape{20},
                          Shape{20, 5}, Shape{20, 5}, Shape{20}, Shape{20}};
  const auto p = lstm.params();
  ASSERT_EQ(p.size(), 8u);
  for (std::size_t k = 0; k < p.size(); ++k) {
    EXPECT_EQ(p[k]->name, names[k]);
    EXPECT_EQ(p[k]->value.shape(), shapes[k]) << names[k];
  }
  EXPECT_EQ(lstm.output_shape(Shape{7, 3}), (Shape{7, 5}));
  // Per sample, T = 7: layer 0 4H x 3 x 7 + 4H x H x 6, layer 1 4H x H x (7 + 6) multiply-adds, 2 flops each.
  EXPECT_EQ(lstm.forward_flops(Shape{7, 3}), 2.0 * (20 * 3 * 7 + 20 * 5 * 6 + 20 * 5 * 13));
}

TEST(Lstm, ShapeErrorsNameTheLayer) {
  Lstm<float> lstm("/model/layers/2 (lstm)", 3, 5, 1);
  for (const Shape& bad : {Shape{3}, Shape{4, 2}, Shape{1, 4, 3}}) {
    try {
      lstm.output_shape(bad);
      ADD_FAILURE() << bad.str() << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("/model/layers/2 (lstm)"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Lstm<float>("lstm", 3, 0, 1), Error);
}

// What a training step allocated: every ledger event (kind, category, buffer, bytes) in order, and the peaks.
struct StepMemory {
  std::vector<std::string> events;
  std::size_t peak[memory_category_count] = {};
  std::size_t saved_after_forward = 0, saved_after_backward = 0;
};

template <class T> StepMemory step_memory(bool dry, bool training, Accumulate accumulate, bool want_input_grad) {
  const index_t n = 3, steps = 4, features = 3, hidden = 5;
  MemoryLedger ledger;
  ledger.set_dry_run(dry);
  ledger.record_timeline(true);
  StepMemory m;
  {
    MemoryLedger::Scope scope(ledger);
    Lstm<T> lstm("lstm", features, hidden, 2);
    Rng rng(2);
    if (!dry) lstm.initialize(rng);
    Tensor<T> x(Shape{n, steps, features}, MemoryCategory::workspace), dy(Shape{n, steps, hidden}, MemoryCategory::workspace);
    if (!dry) {
      for (index_t i = 0; i < x.numel(); ++i) x[i] = round_to<T>(rng.normal());
      for (index_t i = 0; i < dy.numel(); ++i) dy[i] = round_to<T>(rng.normal());
    }
    const RunContext ctx{training, accumulate};
    Tensor<T> y = lstm.forward(std::move(x), ctx);
    m.saved_after_forward = ledger.current(MemoryCategory::saved_activations);
    if (training) {
      y = Tensor<T>();
      const Tensor<T> dx = lstm.backward(std::move(dy), ctx, want_input_grad);
      EXPECT_EQ(dx.empty(), !want_input_grad);
      m.saved_after_backward = ledger.current(MemoryCategory::saved_activations);
    }
  }
  EXPECT_EQ(ledger.current_total(), 0u);
  for (const MemoryEvent& e : ledger.events())
    m.events.push_back(std::to_string(e.kind) + " " + to_string(e.category) + " from " + to_string(e.from) +
                       " buffer " + std::to_string(e.buffer) + " " + std::to_string(e.bytes) + " B");
  for (std::size_t c = 0; c < memory_category_count; ++c) m.peak[c] = ledger.peak(static_cast<MemoryCategory>(c));
  return m;
}

template <class T> void expect_dry_run_allocates_as_the_real_run(Accumulate accumulate) {
  for (const bool training : {true, false})
    for (const bool want_input_grad : {true, false}) {
      const StepMemory real = step_memory<T>(false, training, accumulate, want_input_grad);
      const StepMemory dry = step_memory<T>(true, training, accumulate, want_input_grad);
      ASSERT_GT(real.events.size(), 20u);
      ASSERT_EQ(real.events.size(), dry.events.size()) << to_string(precision_of<T>());
      for (std::size_t i = 0; i < real.events.size(); ++i)
        ASSERT_EQ(real.events[i], dry.events[i]) << to_string(precision_of<T>()) << " event " << i;
      for (std::size_t c = 0; c < memory_category_count; ++c) EXPECT_EQ(real.peak[c], dry.peak[c]);
      // Forward keeps, per layer, its input (3 features, then H = 5; layer 1's is layer 0's output) and per step
      // c_{t-1} (H) and the gates (4H), and the last layer's output (H); backward lets go of all of it. Evaluation
      // keeps nothing.
      const std::size_t kept = training ? 3 * 4 * ((3 + 5 * 5) + (5 + 5 * 5) + 5) * sizeof(T) : 0;
      EXPECT_EQ(real.saved_after_forward, kept) << to_string(precision_of<T>());
      EXPECT_EQ(real.saved_after_backward, 0u) << to_string(precision_of<T>());
    }
}

TEST(Lstm, DryRunAllocatesWhatTheRealRunAllocatesInEveryPrecision) {
  expect_dry_run_allocates_as_the_real_run<float>(Accumulate::f32);
  expect_dry_run_allocates_as_the_real_run<double>(Accumulate::f32);
  expect_dry_run_allocates_as_the_real_run<f16>(Accumulate::f32);
  expect_dry_run_allocates_as_the_real_run<f16>(Accumulate::storage);
  expect_dry_run_allocates_as_the_real_run<bf16>(Accumulate::f32);
  expect_dry_run_allocates_as_the_real_run<dd>(Accumulate::f32);
  expect_dry_run_allocates_as_the_real_run<mp>(Accumulate::f32);
}

// ---- Backpropagation through time with checkpoints (RunContext::time_schedule) ----

struct FixedSchedule : TimeSchedule {
  CheckpointSchedule s;
  explicit FixedSchedule(CheckpointSchedule schedule) : s(std::move(schedule)) {}
  CheckpointSchedule schedule(std::size_t) const override { return s; }
};

// Keeps x_0 and every `every`-th state; recomputes the rest from the last one kept (Chen et al.'s segments).
CheckpointSchedule segments(std::size_t steps, std::size_t every) {
  using K = CheckpointAction::Kind;
  CheckpointSchedule s;
  std::vector<std::size_t> starts;
  for (std::size_t i = 0; i < steps; i += every) starts.push_back(i);
  for (std::size_t k = 0; k + 1 < starts.size(); ++k) {
    s.push_back({K::snapshot, starts[k]});
    for (std::size_t i = starts[k]; i < starts[k + 1]; ++i) s.push_back({K::advance, i});
  }
  for (std::size_t k = starts.size(); k-- > 0;) {
    const std::size_t end = k + 1 < starts.size() ? starts[k + 1] : steps;
    if (k + 1 < starts.size()) s.push_back({K::restore, starts[k]});
    for (std::size_t i = starts[k]; i < end; ++i) s.push_back({K::record, i});
    for (std::size_t i = end; i-- > starts[k];) s.push_back({K::reverse, i});
    if (k + 1 < starts.size()) s.push_back({K::forget, starts[k]});
  }
  return s;
}

// One training step of a 2-layer LSTM (T = 7) under a time schedule: output, input gradient, parameter
// gradients, the saved activations after forward and the recomputed steps.
template <class T> struct StepResult {
  std::vector<T> values;
  std::size_t saved = 0, peak = 0;
  std::int64_t recomputed = 0;
};
template <class T>
StepResult<T> scheduled_step(std::shared_ptr<const TimeSchedule> schedule, index_t truncate = 0,
                             const SaveHook<T>* hook = nullptr) {
  const index_t n = 3, steps = 7, features = 4, hidden = 5;
  MemoryLedger ledger;
  MemoryLedger::Scope scope(ledger);
  const SaveHookScope<T> kept(hook);  // forward and backward, as the trainer does
  StepResult<T> r;
  Lstm<T> lstm("lstm", features, hidden, 2, truncate);
  Rng rng(11);
  lstm.initialize(rng);
  RunContext ctx{true, Accumulate::f32};
  ctx.time_schedule = std::move(schedule);
  const Tensor<T> x = random_sequence<T>(Shape{n, steps, features}, rng);
  const Tensor<T> dy = random_sequence<T>(Shape{n, steps, hidden}, rng);
  Tensor<T> y = lstm.forward(x, ctx);
  r.saved = ledger.current(MemoryCategory::saved_activations);
  r.values.assign(y.data(), y.data() + y.numel());
  y = Tensor<T>();
  const Tensor<T> dx = lstm.backward(dy, ctx, true);
  r.values.insert(r.values.end(), dx.data(), dx.data() + dx.numel());
  for (Param<T>* p : lstm.params()) r.values.insert(r.values.end(), p->grad.data(), p->grad.data() + p->grad.numel());
  r.recomputed = lstm.recomputed_steps();
  r.peak = ledger.peak(MemoryCategory::saved_activations);
  return r;
}

// Every schedule gives the gradients of stored activations bit for bit, keeps less, and recomputes the steps its
// schedule says (per layer, times the 2 layers).
template <class T> void expect_schedules_exact() {
  const StepResult<T> stored = scheduled_step<T>(nullptr);
  EXPECT_EQ(stored.recomputed, 0);
  for (const std::size_t every : {1u, 2u, 3u, 7u}) {
    const CheckpointSchedule s = segments(7, every);
    ASSERT_NO_THROW(check_schedule(s, 7));
    const StepResult<T> r = scheduled_step<T>(std::make_shared<FixedSchedule>(s));
    ASSERT_EQ(r.values.size(), stored.values.size());
    for (std::size_t i = 0; i < r.values.size(); ++i)
      ASSERT_TRUE(same_bits(r.values[i], stored.values[i])) << "every " << every << " value " << i;
    EXPECT_EQ(r.recomputed, 2 * recomputed_evaluations(s, 7)) << "every " << every;
    if (every > 1 && every < 7) EXPECT_LT(r.saved, stored.saved) << "every " << every;  // 7: one segment
  }
}

TEST(LstmThroughTime, EverySchedulesGradientsAreStoredActivationsBitForBit) {
  expect_schedules_exact<float>();
  expect_schedules_exact<bf16>();
  expect_schedules_exact<mp>();
}

// Stored activations keep, per layer, the input and output sequences (layer 0's output is layer 1's input: three
// sequences in all) and 7 records of c and the gates (5H). Segments of 3 steps (T = 7) keep the input sequences,
// per layer snapshots of the states x_0 and x_3 (2H each) and the record of the last segment, step 6: c and the
// gates (5H) in layer 0, whose output layer 1 keeps, the whole state and the gates (6H) in layer 1, whose output
// is not kept.
TEST(LstmThroughTime, SavedActivationsAreTheScheduleOnes) {
  const std::size_t n = 3, steps = 7, hidden = 5, b = sizeof(float);
  const std::size_t inputs = n * steps * (4 + hidden) * b;
  const StepResult<float> stored = scheduled_step<float>(nullptr);
  EXPECT_EQ(stored.saved, inputs + n * steps * hidden * b + 2 * steps * n * 5 * hidden * b);
  const StepResult<float> r = scheduled_step<float>(std::make_shared<FixedSchedule>(segments(7, 3)));
  EXPECT_EQ(r.saved, inputs + (2 * 2 * n * 2 * hidden + n * 5 * hidden + n * 6 * hidden) * b);
}

// A save hook that stores an exact copy of what it is given (in place of approx_activations' K bits).
template <class T> struct CopyingHook : SaveHook<T> {
  struct Copy : PackedTensor<T> {
    Tensor<T> t;
    Tensor<T> unpack() const override {
      Tensor<T> u(t.shape(), MemoryCategory::workspace, Init::none);
      std::copy_n(t.data(), t.numel(), u.data());
      return u;
    }
  };
  mutable std::size_t packed = 0;  // values packed
  std::shared_ptr<const PackedTensor<T>> pack(const Tensor<T>& t) const override {
    auto c = std::make_shared<Copy>();
    c->t = Tensor<T>(t.shape(), MemoryCategory::saved_activations, Init::none);
    std::copy_n(t.data(), t.numel(), c->t.data());
    packed += static_cast<std::size_t>(t.numel());
    return c;
  }
};

// Under a save hook the output is not kept (the hook would store a second copy of it): each record holds the whole
// state [h_{t-1}, c_{t-1}] (6H a step), and the gradients are those of the records that hold c_{t-1} only, bit for
// bit, under stored activations and under a schedule.
TEST(LstmThroughTime, UnderASaveHookTheRecordsHoldTheWholeState) {
  const std::size_t n = 3, steps = 7, features = 4, hidden = 5;
  for (const std::size_t every : {1u, 3u}) {
    auto schedule = every == 1 ? nullptr : std::make_shared<FixedSchedule>(segments(steps, every));
    const StepResult<float> plain = scheduled_step<float>(schedule);
    CopyingHook<float> hook;
    const StepResult<float> hooked = scheduled_step<float>(schedule, 0, &hook);
    ASSERT_EQ(hooked.values.size(), plain.values.size());
    for (std::size_t i = 0; i < plain.values.size(); ++i)
      ASSERT_TRUE(same_bits(hooked.values[i], plain.values[i])) << "every " << every << " value " << i;
    // Packed: the two input sequences and, in forward and in backward's recomputation, one record of each step
    // and layer (the state, 2H, and the gates, 4H).
    EXPECT_EQ(hook.packed, n * steps * (features + hidden) + 2 * steps * n * 6 * hidden) << "every " << every;
  }
}

// Truncated every k steps (T = 7): a gradient that enters only at the last step, 6, reaches the inputs of the steps
// of its segment, from 6 - (6 mod k) on, and none before (k = 3: step 6 only; k = 4: steps 4 to 6). Untruncated
// (k = 0) it reaches every step.
TEST(LstmThroughTime, TruncationStopsTheGradientAtSegmentStarts) {
  const index_t n = 2, steps = 7, features = 3, hidden = 4;
  for (const index_t truncate : {0, 3, 4}) {
    Lstm<double> lstm("lstm", features, hidden, 1, truncate);
    Rng rng(4);
    lstm.initialize(rng);
    const RunContext ctx{true, Accumulate::f32};
    lstm.forward(random_sequence<double>(Shape{n, steps, features}, rng), ctx);
    Tensor<double> dy(Shape{n, steps, hidden}, MemoryCategory::workspace);
    for (index_t s = 0; s < n; ++s)
      for (index_t j = 0; j < hidden; ++j) dy[(s * steps + steps - 1) * hidden + j] = 1.0;
    const Tensor<double> dx = lstm.backward(dy, ctx, true);
    const index_t first = truncate == 0 ? 0 : (steps - 1) / truncate * truncate;  // the last segment's start
    for (index_t t = 0; t < steps; ++t) {
      double norm = 0;
      for (index_t s = 0; s < n; ++s)
        for (index_t f = 0; f < features; ++f) norm += std::abs(dx[(s * steps + t) * features + f]);
      if (t < first) EXPECT_EQ(norm, 0.0) << "truncate " << truncate << " step " << t;
      else EXPECT_GT(norm, 0.0) << "truncate " << truncate << " step " << t;
    }
  }
}

}  // namespace
}  // namespace lowmem
