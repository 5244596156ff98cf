// Gradient checkpointing: the schedules (revolve's optimal count of advances against its closed form, validity of
// every schedule), and the executor (gradients and running statistics bit for bit those of stored activations,
// memory that falls with fewer snapshots and that the dry step predicts to the byte).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>

#include "numerics/error.hpp"
#include "plan.hpp"
#include "runner.hpp"
#include "technique_step.hpp"
#include "techniques/checkpoint.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

std::int64_t binomial(std::int64_t n, std::int64_t k) {
  std::int64_t r = 1;
  for (std::int64_t i = 1; i <= k; ++i) r = r * (n - k + i) / i;
  return r;
}

// Griewank & Walther: t the smallest with C(s + t, s) >= l; F = t l - C(s + t, s + 1).
std::int64_t revolve_closed_form(std::int64_t l, std::int64_t s) {
  std::int64_t t = 0;
  while (binomial(s + t, s) < l) ++t;
  return t * l - binomial(s + t, s + 1);
}

std::int64_t advances_in(const CheckpointSchedule& schedule) {
  std::int64_t n = 0;
  for (const CheckpointAction& a : schedule) n += a.kind == CheckpointAction::advance;
  return n;
}

TEST(Revolve, PerformsExactlyTheMinimumNumberOfForwardSteps) {
  EXPECT_EQ(revolve_advances(10, 2), 20);  // the example of PAPERS.md section 2
  EXPECT_EQ(advances_in(revolve_schedule(10, 2)), 20);
  for (std::int64_t l = 1; l <= 60; ++l)
    for (std::int64_t s = 1; s <= 6; ++s) {
      const CheckpointSchedule schedule = revolve_schedule(static_cast<std::size_t>(l), static_cast<std::size_t>(s));
      ASSERT_NO_THROW(check_schedule(schedule, static_cast<std::size_t>(l))) << "l " << l << " s " << s;
      EXPECT_EQ(revolve_advances(static_cast<std::size_t>(l), static_cast<std::size_t>(s)), revolve_closed_form(l, s))
          << "l " << l << " s " << s;
      EXPECT_EQ(advances_in(schedule), revolve_closed_form(l, s)) << "l " << l << " s " << s;
      // Each layer is recorded exactly once, right before its reverse: evaluations = advances + l.
      EXPECT_EQ(recomputed_evaluations(schedule, static_cast<std::size_t>(l)), advances_in(schedule));
    }
}

TEST(Uniform, RecomputesEverySegmentButTheLastOnce) {
  for (std::size_t n : {1u, 5u, 13u, 40u})
    for (std::size_t k : {1u, 2u, 3u, 6u}) {
      const CheckpointSchedule schedule = uniform_schedule(n, k);
      ASSERT_NO_THROW(check_schedule(schedule, n)) << n << " " << k;
      const std::size_t segments = std::min(k, n), last = n - (segments - 1) * n / segments;
      EXPECT_EQ(recomputed_evaluations(schedule, n), static_cast<std::int64_t>(n - last)) << n << " " << k;
    }
}

TEST(CheckSchedule, CatchesAScheduleThatReversesOutOfOrder) {
  CheckpointSchedule bad = uniform_schedule(4, 2);
  std::swap(bad[bad.size() - 2], bad[bad.size() - 3]);  // two reverses of the first segment swapped
  EXPECT_THROW(check_schedule(bad, 4), std::logic_error);
  using A = CheckpointAction;
  // Evaluating a layer again after its reverse; advancing a layer whose record waits for its reverse (batch norm
  // would drop the statistics its reverse needs); a schedule that never reverses everything.
  EXPECT_THROW(check_schedule({{A::snapshot, 0}, {A::record, 0}, {A::record, 1}, {A::reverse, 1}, {A::restore, 0},
                               {A::advance, 0}, {A::record, 1}, {A::reverse, 0}, {A::forget, 0}}, 2),
               std::logic_error);
  EXPECT_THROW(check_schedule({{A::snapshot, 0}, {A::record, 0}, {A::restore, 0}, {A::advance, 0}, {A::record, 1},
                               {A::reverse, 1}, {A::reverse, 0}, {A::forget, 0}}, 2),
               std::logic_error);
  EXPECT_THROW(check_schedule({{A::record, 0}, {A::record, 1}, {A::reverse, 1}}, 2), std::logic_error);
  EXPECT_NO_THROW(check_schedule({{A::record, 0}, {A::record, 1}, {A::reverse, 1}, {A::reverse, 0}}, 2));
}

// ---- budget: the dynamic programme against an exhaustive search over every schedule of these actions ----

// Memory held by a schedule at its worst moment (snapshots other than x_0, and records not yet reversed), and the
// flops of its advances.
std::pair<std::size_t, double> replay(const CheckpointSchedule& schedule, const ChainCosts& c) {
  std::size_t held = 0, worst = 0;
  double flops = 0;
  for (const auto& [kind, i] : schedule) {
    if (kind == CheckpointAction::snapshot && i > 0) held += c.input_bytes[i];
    if (kind == CheckpointAction::forget && i > 0) held -= c.input_bytes[i];
    if (kind == CheckpointAction::record) held += c.record_bytes[i];
    if (kind == CheckpointAction::reverse) held -= c.record_bytes[i];
    if (kind == CheckpointAction::advance) flops += c.flops[i];
    worst = std::max(worst, held);
  }
  return {worst, flops};
}

// Dijkstra over the states (current position, kept inputs, recorded layers, next layer to reverse): the least
// advance flops of any schedule whose held memory never exceeds `memory`, in the budget schedule's memory model:
// a record is held until its reverse, a snapshot of x_i until layer i is reversed (before, the tensor lives on in
// the record of layer i or as the current state, so forgetting it earlier frees nothing for layers that keep their
// input); x_0 is kept throughout, free.
double exhaustive_optimum(const ChainCosts& c, std::size_t memory) {
  const int n = static_cast<int>(c.flops.size()), none = n + 1;
  struct State {
    int position, kept, recorded, next;
    auto key() const { return std::tuple(position, kept, recorded, next); }
    bool operator<(const State& o) const { return key() < o.key(); }
  };
  auto held = [&](const State& st) {
    std::size_t bytes = 0;
    for (int i = 0; i < n; ++i) {
      if (i > 0 && (st.kept >> i & 1)) bytes += c.input_bytes[static_cast<std::size_t>(i)];
      if (st.recorded >> i & 1) bytes += c.record_bytes[static_cast<std::size_t>(i)];
    }
    return bytes;
  };
  std::map<State, double> best;
  using Item = std::pair<double, State>;
  auto later = [](const Item& a, const Item& b) { return a.first > b.first; };
  std::priority_queue<Item, std::vector<Item>, decltype(later)> queue(later);
  const State start{0, 1, 0, n};
  best[start] = 0;
  queue.push({0.0, start});
  while (!queue.empty()) {
    // Not a structured binding: clang 14 (the sanitizer build) cannot capture one in the lambda below.
    const double cost = queue.top().first;
    const State st = queue.top().second;
    queue.pop();
    if (cost > best[st]) continue;
    if (st.next == 0) return cost;
    auto go = [&](State to, double extra) {
      if (held(to) > memory) return;
      auto it = best.find(to);
      if (it == best.end() || cost + extra < it->second) best[to] = cost + extra, queue.push({cost + extra, to});
    };
    const int p = st.position;
    if (p < st.next) {
      go({p + 1, st.kept, st.recorded, st.next}, c.flops[static_cast<std::size_t>(p)]);  // advance p
      if (!(st.recorded >> p & 1)) go({p + 1, st.kept, st.recorded | 1 << p, st.next}, 0);  // record p
      if (p > 0) go({p, st.kept | 1 << p, st.recorded, st.next}, 0);                      // snapshot p
    }
    if (st.recorded >> (st.next - 1) & 1)  // reverse the next layer
      go({none, st.kept, st.recorded & ~(1 << (st.next - 1)), st.next - 1}, 0);
    for (int i = 0; i < n; ++i)
      if (st.kept >> i & 1) {
        go({i, st.kept, st.recorded, st.next}, 0);                                        // restore i
        if (i > 0 && st.next <= i) go({st.position, st.kept & ~(1 << i), st.recorded, st.next}, 0);  // forget i
      }
  }
  return std::numeric_limits<double>::infinity();
}

TEST(Budget, EqualsTheExhaustiveOptimumOnChainsOfUpTo8LayersAndNeverExceedsItsMemory) {
  Rng rng(41);
  int compared = 0, infeasible = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const std::size_t n = 1 + static_cast<std::size_t>(trial % 8);
    ChainCosts c;
    for (std::size_t i = 0; i < n; ++i) {
      c.flops.push_back(std::floor(rng.uniform(1.0, 10.0)));
      c.input_bytes.push_back(static_cast<std::size_t>(rng.uniform(1.0, 5.0)));
      c.record_bytes.push_back(static_cast<std::size_t>(rng.uniform(1.0, 5.0)));
    }
    const std::size_t memory = static_cast<std::size_t>(rng.uniform(0.0, 16.0));
    const double optimum = exhaustive_optimum(c, memory);
    const std::optional<BudgetPlan> plan = budget_schedule(c, memory, 1);
    ASSERT_EQ(plan.has_value(), std::isfinite(optimum)) << "trial " << trial;
    if (!plan) {
      ++infeasible;
      continue;
    }
    ASSERT_NO_THROW(check_schedule(plan->schedule, n)) << "trial " << trial;
    const auto [held, flops] = replay(plan->schedule, c);
    EXPECT_LE(held, memory) << "trial " << trial;
    EXPECT_EQ(flops, plan->recomputed_flops) << "trial " << trial;
    EXPECT_EQ(plan->recomputed_flops, optimum) << "trial " << trial << ", " << n << " layers, memory " << memory;

    ++compared;
  }
  EXPECT_GT(compared, 150);
  EXPECT_GT(infeasible, 0);  // budgets below what any schedule needs are among the cases
}

nlohmann::json config_with(const nlohmann::json& technique, const nlohmann::json& model) {
  return {{"precision", "f64"},
          {"study", "gradient"},  // the step measured below: forward and backward, the logits kept
          {"model", model},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"},
                    {"synthetic", {{"shape", model.at("input")}, {"classes", model.value("classes", 10)}}}}},
          {"train", {{"batch", 4}, {"optimizer", {{"lr", 0.1}}}}}};
}

struct Step {
  std::vector<std::vector<double>> values;  // every parameter gradient, then every running statistic
  std::size_t saved_peak = 0, peak = 0, predicted_peak = 0;
  std::int64_t recomputed = 0;
};

Step step(const nlohmann::json& config) {
  const RunConfig run = parse_run_config(config, "test");
  Step s;
  MemoryLedger ledger;
  Trainer<double> trainer(run, ledger);
  Tensor<double> x = trainer.empty_batch(run.train.batch);
  Rng rng(31);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  Tensor<double> logits;  // kept through backward, as the gradient study keeps them for its dump
  trainer.forward_backward(x, {1, 0, 2, 1}, &logits);
  for (Param<double>* p : trainer.model().params()) s.values.emplace_back(p->grad.data(), p->grad.data() + p->grad.numel());
  s.values.emplace_back();
  for (std::size_t i = 0; i < trainer.model().size(); ++i) testing::collect_running_statistics(trainer.model().layer(i), s.values.back());
  s.saved_peak = ledger.peak(MemoryCategory::saved_activations);
  s.peak = ledger.peak_total();
  s.recomputed = trainer.recomputed_evaluations();
  s.predicted_peak = predict_memory(run).peak;
  return s;
}

TEST(Checkpoint, EverySchedulesGradientsAreBitForBitThoseOfStoredActivations) {
  const nlohmann::json models[] = {
      {{"arch", "cnn"}, {"channels", {4, 4, 4, 4, 4, 4}}, {"pool_every", 3}, {"input", {1, 12, 12}}, {"classes", 3}},
      {{"arch", "resnet"}, {"depth", 10}, {"base_width", 4}, {"input", {2, 8, 8}}, {"classes", 3}}};
  const nlohmann::json techniques[] = {{{"type", "checkpoint"}},
                                       {{"type", "checkpoint"}, {"schedule", "uniform"}, {"segments", 2}},
                                       {{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 1}},
                                       {{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 3}}};
  for (const nlohmann::json& model : models) {
    const Step stored = step(config_with({{"type", "store_all"}}, model));
    EXPECT_EQ(stored.recomputed, 0);
    for (const nlohmann::json& technique : techniques) {
      const Step checkpointed = step(config_with(technique, model));
      EXPECT_EQ(checkpointed.values, stored.values) << model.dump() << " " << technique.dump();
      EXPECT_GT(checkpointed.recomputed, 0) << technique.dump();
      EXPECT_LT(checkpointed.saved_peak, stored.saved_peak) << technique.dump();
      EXPECT_EQ(checkpointed.predicted_peak, checkpointed.peak) << technique.dump();  // plan = run, to the byte
    }
  }
}

TEST(Checkpoint, FewerSnapshotsKeepLessAndRecomputeMore) {
  const nlohmann::json model = {{"arch", "cnn"}, {"channels", {4, 4, 4, 4, 4, 4, 4, 4}}, {"pool_every", 0},
                                {"input", {1, 8, 8}}, {"classes", 3}};
  std::size_t previous_saved = 0;
  std::int64_t previous_recomputed = -1;
  for (int slots : {8, 4, 2, 1}) {
    const Step s = step(config_with({{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", slots}}, model));
    if (previous_recomputed >= 0) {
      EXPECT_LT(s.saved_peak, previous_saved) << slots;
      EXPECT_GT(s.recomputed, previous_recomputed) << slots;
    }
    previous_saved = s.saved_peak, previous_recomputed = s.recomputed;
  }
}

TEST(Checkpoint, BudgetNeverExceedsItsBudgetAndTradesMemoryForRecomputation) {
  const nlohmann::json model = {{"arch", "cnn"}, {"channels", {4, 4, 4, 4, 4, 4, 4, 4}}, {"pool_every", 4},
                                {"input", {1, 8, 8}}, {"classes", 3}};
  const Step stored = step(config_with({{"type", "store_all"}}, model));
  const Step least = step(config_with({{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 1}}, model));
  std::int64_t previous_recomputed = -1, most_recomputed = -1;
  // From the least any schedule needs up to what storing everything needs: the peak stays within the budget,
  // the gradients stay exact, and the least budget recomputes the most (between the ends the bisection is not
  // monotone, see the README).
  for (double f : {1.0, 0.75, 0.5, 0.25, 0.0}) {
    const auto budget = static_cast<std::size_t>(f * static_cast<double>(least.peak) +
                                                  (1 - f) * static_cast<double>(stored.peak));
    const Step s = step(config_with({{"type", "checkpoint"}, {"schedule", "budget"}, {"budget_bytes", budget}}, model));
    EXPECT_LE(s.peak, budget) << f;
    EXPECT_EQ(s.predicted_peak, s.peak) << f;
    EXPECT_EQ(s.values, stored.values) << f;
    if (most_recomputed >= 0) { EXPECT_LE(s.recomputed, most_recomputed) << f; }
    if (most_recomputed < 0) most_recomputed = s.recomputed;
    previous_recomputed = s.recomputed;
    std::printf("    budget %zu bytes (store_all peak %zu): peak %zu, recomputed evaluations %lld\n", budget,
                stored.peak, s.peak, static_cast<long long>(s.recomputed));
  }
  EXPECT_EQ(previous_recomputed, 0);  // with the store-all peak as budget, nothing is recomputed
  // Composed with microbatches: the layers are sized for one slice, and the budget still holds.
  const nlohmann::json sliced = {{"type", "microbatch"}, {"count", 2}};
  const Step half = step(config_with(sliced, model));
  nlohmann::json both = config_with(sliced, model);
  const std::size_t budget = (least.peak + half.peak) / 2;
  both["technique"] = {sliced, {{"type", "checkpoint"}, {"schedule", "budget"}, {"budget_bytes", budget}}};
  const Step s = step(both);
  EXPECT_LE(s.peak, budget);
  EXPECT_GT(s.recomputed, 0);
}

std::string error_of(const nlohmann::json& config) {
  try {
    validate_model(parse_run_config(config, "cfg.json"), "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(Checkpoint, BadInputIsNamedBeforeAnyWork) {
  const nlohmann::json cnn = {{"arch", "cnn"}, {"input", {1, 8, 8}}};
  std::string e = error_of(config_with({{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 0}}, cnn));
  EXPECT_NE(e.find("cfg.json: /technique/slots"), std::string::npos) << e;
  e = error_of(config_with({{"type", "checkpoint"}, {"schedule", "revolve"}}, cnn));
  EXPECT_NE(e.find("slots"), std::string::npos) << e;
  e = error_of(config_with({{"type", "checkpoint"}, {"segments", 50}}, cnn));
  EXPECT_NE(e.find("segments 50"), std::string::npos) << e;
  e = error_of(config_with({{"type", "checkpoint"}, {"schedule", "budget"}, {"budget_bytes", 1000}}, cnn));
  EXPECT_NE(e.find("budget_bytes 1000 is below what any schedule reaches"), std::string::npos) << e;
  EXPECT_NE(e.find("the minimum is "), std::string::npos) << e;
  e = error_of(config_with({{"type", "checkpoint"}, {"schedule", "sqrt"}}, cnn));
  EXPECT_NE(e.find("/technique/schedule"), std::string::npos) << e;
  e = error_of(config_with({{{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 2}}, {{"type", "reversible"}}},
                           {{"arch", "revnet"}, {"input", {1, 8, 8}}}));
  EXPECT_NE(e.find("recomputes each run of non-invertible layers"), std::string::npos) << e;
}

}  // namespace
}  // namespace lowmem
