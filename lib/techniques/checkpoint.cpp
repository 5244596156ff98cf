#include "techniques/checkpoint.hpp"

#include "techniques/reversible.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>

namespace lowmem {

using Kind = CheckpointAction::Kind;

CheckpointSchedule uniform_schedule(std::size_t layers, std::size_t segments) {
  segments = std::clamp<std::size_t>(segments, 1, layers);
  std::vector<std::size_t> start(segments + 1);
  for (std::size_t k = 0; k <= segments; ++k) start[k] = k * layers / segments;
  CheckpointSchedule s;
  for (std::size_t k = 0; k + 1 < segments; ++k) {
    s.push_back({Kind::snapshot, start[k]});
    for (std::size_t i = start[k]; i < start[k + 1]; ++i) s.push_back({Kind::advance, i});
  }
  auto record_and_reverse = [&](std::size_t k) {
    for (std::size_t i = start[k]; i < start[k + 1]; ++i) s.push_back({Kind::record, i});
    for (std::size_t i = start[k + 1]; i-- > start[k];) s.push_back({Kind::reverse, i});
  };
  record_and_reverse(segments - 1);
  for (std::size_t k = segments - 1; k-- > 0;) {
    s.push_back({Kind::restore, start[k]});
    record_and_reverse(k);
    s.push_back({Kind::forget, start[k]});
  }
  return s;
}

namespace {

// F(l, s) and the best first snapshot position, for every l <= steps and s <= slots (s capped at l: more slots
// than steps cannot help).
struct RevolveTable {
  RevolveTable(std::size_t steps, std::size_t slots_) : slots(std::min(slots_, steps)) {
    advances.assign((steps + 1) * (slots + 1), 0);
    split.assign(advances.size(), 0);
    for (std::size_t l = 2; l <= steps; ++l) {
      advances[index(l, 1)] = static_cast<std::int64_t>(l * (l - 1) / 2);  // one slot: restart from x_0 each time
      for (std::size_t s = 2; s <= slots; ++s) {
        std::int64_t best = std::numeric_limits<std::int64_t>::max();
        for (std::size_t j = 1; j < l; ++j) {  // advance j steps, snapshot, reverse the rest with one slot less
          const std::int64_t cost = static_cast<std::int64_t>(j) + get(l - j, s - 1) + get(j, s);
          if (cost < best) best = cost, split[index(l, s)] = j;
        }
        advances[index(l, s)] = best;
      }
    }
  }
  std::size_t index(std::size_t l, std::size_t s) const { return l * (slots + 1) + std::min(s, slots); }
  std::int64_t get(std::size_t l, std::size_t s) const { return advances[index(l, s)]; }
  std::size_t first_split(std::size_t l, std::size_t s) const { return split[index(l, s)]; }

  std::size_t slots;
  std::vector<std::int64_t> advances;  // F(l, s)
  std::vector<std::size_t> split;      // the first snapshot's distance from the segment start
};

// Reverses layers [a, b) with x_a kept and `slots` snapshots (x_a's included).
struct RevolveWriter {
  const RevolveTable& table;
  CheckpointSchedule& out;
  std::size_t position;  // the current state is x_position (npos: none)

  void go_to(std::size_t a, std::size_t target) {
    if (position != a) out.push_back({Kind::restore, a});
    for (std::size_t i = a; i < target; ++i) out.push_back({Kind::advance, i});
    position = target;
  }
  void reverse(std::size_t a, std::size_t b, std::size_t slots) {
    const std::size_t l = b - a;
    if (l == 1 || slots == 1) {
      for (std::size_t i = b; i-- > a;) {  // from the kept x_a to each layer in turn
        go_to(a, i);
        out.push_back({Kind::record, i});
        out.push_back({Kind::reverse, i});
        position = npos;
      }
      return;
    }
    const std::size_t mid = a + table.first_split(l, slots);
    go_to(a, mid);
    out.push_back({Kind::snapshot, mid});
    reverse(mid, b, slots - 1);
    out.push_back({Kind::forget, mid});
    reverse(a, mid, slots);
  }
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
};

}  // namespace

std::int64_t revolve_advances(std::size_t steps, std::size_t slots) {
  if (steps == 0 || slots == 0) throw std::invalid_argument("revolve needs at least one step and one slot");
  return RevolveTable(steps, slots).get(steps, slots);
}

CheckpointSchedule revolve_schedule(std::size_t layers, std::size_t slots) {
  if (layers == 0 || slots == 0) throw std::invalid_argument("revolve needs at least one layer and one slot");
  const RevolveTable table(layers, slots);
  CheckpointSchedule s{{Kind::snapshot, 0}};
  RevolveWriter{table, s, 0}.reverse(0, layers, slots);
  s.push_back({Kind::forget, 0});
  return s;
}

namespace {

// Two tables over (a, b, m): S, the least recomputation to reverse layers [a, b) when x_a is kept (it may be
// restored any number of times); C, the same when x_a is only the current state (used once: record layer a, or
// snapshot it first). m: memory units free for this reversal's snapshots and records.
//   S(a, a+1, m) = C(a, a+1, m) = 0 if record_a <= m
//   S(a, b, m) = min( C(a+1, b, m - record_a)                       record a, reverse the rest, reverse a
//                     min_j flops[a, j) + C(j, b, m) + S(a, j, m) )  advance to x_j, reverse [j, b), then [a, j)
//   C(a, b, m) = min( C(a+1, b, m - record_a),  S(a, b, m - input_a) )  record a, or snapshot x_a
class BudgetSolver {
 public:
  BudgetSolver(const ChainCosts& costs, std::size_t memory, std::size_t unit, BudgetTables& tables)
      : n_(costs.flops.size()), units_(memory / unit), flops_(costs.flops), t_(tables) {
    auto in_units = [&](std::size_t bytes) { return (bytes + unit - 1) / unit; };
    for (std::size_t i = 0; i < n_; ++i) {
      input_.push_back(in_units(costs.input_bytes[i]));
      record_.push_back(in_units(costs.record_bytes[i]));
    }
    prefix_.assign(n_ + 1, 0.0);
    for (std::size_t i = 0; i < n_; ++i) prefix_[i + 1] = prefix_[i] + flops_[i];
    cells_ = n_ * (n_ + 1) * (units_ + 1);
    if (t_.cost.size() < 2 * cells_) {  // kept's cells, then current's; new cells carry stamp 0, no solve's
      t_.cost.resize(2 * cells_);
      t_.choice.resize(2 * cells_);
      t_.stamp.resize(2 * cells_, 0);
    }
    solve_ = ++t_.solves;  // cells stamped by earlier solves read as unknown
  }

  double solve() { return kept(0, n_, units_); }
  void write(CheckpointSchedule& out) {
    out.push_back({Kind::snapshot, 0});
    write_kept(out, 0, n_, units_);
    out.push_back({Kind::forget, 0});
  }

 private:
  static constexpr double infinite = std::numeric_limits<double>::infinity();
  static constexpr std::uint32_t record_first = 0, snapshot_first = 1;  // choices; j >= 2 means "advance to x_j"
  std::size_t at(std::size_t a, std::size_t b, std::size_t m) const { return (a * (n_ + 1) + b) * (units_ + 1) + m; }

  // Record layer a, reverse the rest from its output, reverse a: both tables' first option.
  double record_then_cost(std::size_t a, std::size_t b, std::size_t m) {
    return record_[a] > m ? infinite : b == a + 1 ? 0.0 : current(a + 1, b, m - record_[a]);
  }
  // Each cell is solved once per solve: no cell's recursion reaches the cell itself (b - a or m falls).
  double kept(std::size_t a, std::size_t b, std::size_t m) {
    const std::size_t i = at(a, b, m);
    if (t_.stamp[i] == solve_) return t_.cost[i];
    double cost = record_then_cost(a, b, m);
    std::uint32_t choice = record_first;
    for (std::size_t j = a + 1; j < b; ++j) {
      const double c = prefix_[j] - prefix_[a] + current(j, b, m) + kept(a, j, m);
      if (c < cost) cost = c, choice = static_cast<std::uint32_t>(j + 2);
    }
    t_.stamp[i] = solve_, t_.cost[i] = cost, t_.choice[i] = choice;
    return cost;
  }
  double current(std::size_t a, std::size_t b, std::size_t m) {
    const std::size_t i = cells_ + at(a, b, m);
    if (t_.stamp[i] == solve_) return t_.cost[i];
    double cost = record_then_cost(a, b, m);
    std::uint32_t choice = record_first;
    if (b > a + 1 && input_[a] <= m) {
      const double c = kept(a, b, m - input_[a]);
      if (c < cost) cost = c, choice = snapshot_first;
    }
    t_.stamp[i] = solve_, t_.cost[i] = cost, t_.choice[i] = choice;
    return cost;
  }

  // position_: the current state's index, or npos after a reverse.
  void go_to(CheckpointSchedule& out, std::size_t a) {
    if (position_ != a) out.push_back({Kind::restore, a});
    position_ = a;
  }
  void record_then(CheckpointSchedule& out, std::size_t a, std::size_t b, std::size_t m) {
    out.push_back({Kind::record, a});
    position_ = a + 1;
    if (b > a + 1) write_current(out, a + 1, b, m - record_[a]);
    out.push_back({Kind::reverse, a});
    position_ = npos;
  }
  void write_kept(CheckpointSchedule& out, std::size_t a, std::size_t b, std::size_t m) {
    const std::size_t choice = t_.choice[at(a, b, m)];
    go_to(out, a);
    if (choice == record_first) return record_then(out, a, b, m);
    const std::size_t j = choice - 2;
    for (std::size_t i = a; i < j; ++i) out.push_back({Kind::advance, i});
    position_ = j;
    write_current(out, j, b, m);
    write_kept(out, a, j, m);
  }
  void write_current(CheckpointSchedule& out, std::size_t a, std::size_t b, std::size_t m) {
    if (t_.choice[cells_ + at(a, b, m)] == record_first) return record_then(out, a, b, m);
    out.push_back({Kind::snapshot, a});
    write_kept(out, a, b, m - input_[a]);
    out.push_back({Kind::forget, a});
  }

  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
  std::size_t n_, units_, cells_, position_ = 0;
  std::vector<double> flops_, prefix_;
  std::vector<std::size_t> input_, record_;
  BudgetTables& t_;
  std::uint32_t solve_;
};

}  // namespace

std::optional<BudgetPlan> budget_schedule(const ChainCosts& costs, std::size_t memory, std::size_t unit,
                                          BudgetTables* tables) {
  if (costs.flops.empty() || unit == 0) throw std::invalid_argument("budget schedule: empty chain or zero unit");
  BudgetTables own;
  BudgetSolver solver(costs, memory, unit, tables ? *tables : own);
  BudgetPlan plan;
  plan.recomputed_flops = solver.solve();
  if (!std::isfinite(plan.recomputed_flops)) return std::nullopt;
  solver.write(plan.schedule);
  return plan;
}

Checkpoint::Checkpoint(ConfigReader& r) {
  constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
  schedule_ = r.get_choice("schedule", "uniform", {"uniform", "revolve", "budget"});
  if (schedule_ == "uniform") segments_ = r.get_in<std::int64_t>("segments", 0, 0, i64_max);
  else if (schedule_ == "revolve") slots_ = r.required_in<std::int64_t>("slots", 1, i64_max);
  else budget_bytes_ = r.required_in<std::int64_t>("budget_bytes", 1, i64_max);
  // Read only when given: a default recorded in the effective config would change older configs' run ids.
  if (r.has("over")) over_time_ = r.get_choice("over", "layers", {"layers", "time"}) == "time";
}

std::string Checkpoint::label() const {
  return std::string(name) + (over_time_ ? "-time-" : "-") + schedule_ + "-" +
         (schedule_ == "revolve"  ? std::to_string(slots_)
          : schedule_ == "budget" ? std::to_string(budget_bytes_)
          : segments_ > 0         ? std::to_string(segments_)
                                  : std::string("sqrt"));
}

void Checkpoint::check_composition(const TechniqueList& all, const ConfigReader& run) const {
  if (!over_time_ && find_technique<Reversible>(all) && (schedule_ != "uniform" || segments_ != 0))
    run.fail("technique", "checkpoint composed with reversible recomputes each run of non-invertible layers from its "
                          "input (reversible rebuilds the invertible runs between them): use {\"type\": "
                          "\"checkpoint\"} without a schedule or segments, or checkpoint \"over\": \"time\"");
}

void Checkpoint::check_model(const ModelFacts& model) const {
  if (over_time_ && !model.any_recurrent)
    throw Error("/technique: checkpoint \"over\": \"time\" runs the time steps of recurrent layers by its schedule, "
                "and model (" + model.arch + ") has none (recurrent: lstm)");
  if (!over_time_ && static_cast<std::size_t>(segments_) > model.layers)
    throw Error("/technique: checkpoint segments " + std::to_string(segments_) + " is more than model (" + model.arch +
                ")'s " + std::to_string(model.layers) + " layers");
}

namespace {

template <class T> MakeChainRunner<T> runner(const CheckpointSchedule& schedule) {
  return [schedule] { return std::make_unique<ScheduledChain<T>>(schedule); };
}

// The model's chain stored as usual, each recurrent layer's time steps run by `schedule` (RunContext::time_schedule).
template <class T> class TimeScheduledChain : public ChainRunner<T> {
 public:
  explicit TimeScheduledChain(std::shared_ptr<const TimeSchedule> schedule) : schedule_(std::move(schedule)) {}
  Tensor<T> forward(Sequential<T>& chain, const Tensor<T>& x, const RunContext& ctx) override {
    return chain.forward(x, with_schedule(ctx));
  }
  Tensor<T> backward(Sequential<T>& chain, Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override {
    return chain.backward(std::move(dy), with_schedule(ctx), want_input_grad);
  }
  // Time-step evaluations beyond one per step, summed over the recurrent layers.
  std::int64_t recomputed(const Sequential<T>& chain) const override {
    std::int64_t n = chain.recomputed();
    for (std::size_t i = 0; i < chain.size(); ++i) n += chain.layer(i).recomputed_steps();
    return n;
  }

 private:
  RunContext with_schedule(RunContext ctx) const {
    ctx.time_schedule = schedule_;
    return ctx;
  }
  std::shared_ptr<const TimeSchedule> schedule_;
};

// A schedule fitted for one sequence length.
struct FixedTimeSchedule : TimeSchedule {
  std::size_t steps;
  CheckpointSchedule fitted;
  FixedTimeSchedule(std::size_t n, CheckpointSchedule s) : steps(n), fitted(std::move(s)) {}
  CheckpointSchedule schedule(std::size_t n) const override {
    if (n != steps)
      throw std::logic_error("checkpoint budget over time: fitted for " + std::to_string(steps) + " steps, asked for " +
                             std::to_string(n));
    return fitted;
  }
};
template <class T> MakeChainRunner<T> time_runner(std::size_t steps, const CheckpointSchedule& schedule) {
  auto fixed = std::make_shared<const FixedTimeSchedule>(steps, schedule);
  return [fixed] { return std::make_unique<TimeScheduledChain<T>>(fixed); };
}

// The budget schedule: the dynamic programme's memory bound is searched (bisection on bytes) for the schedule of
// least recomputation whose whole dry step stays within the budget, so the model's weights, gradients, optimizer
// state and workspace are what the ledger sees, not a guess. `make` turns a schedule into the chain's runner; the
// bound is searched up to `top` (the budget, for costs in bytes).
template <class T>
CheckpointSchedule fit_budget(const ChainCosts& costs, std::size_t budget, std::size_t top,
                              const TechniqueServices<T>& s,
                              const std::function<MakeChainRunner<T>(const CheckpointSchedule&)>& make) {
  const std::size_t layers = costs.flops.size();
  const std::size_t cells = layers * (layers + 1);
  const std::size_t unit = std::max<std::size_t>(1, top / std::max<std::size_t>(1, 4000000 / cells));
  std::optional<BudgetPlan> best;
  BudgetTables tables;  // one allocation for every solve of the bisection
  // Below the largest record no schedule exists: the search starts there. No plan: more memory; a plan whose
  // dry step is over the budget: less.
  std::size_t lo = *std::max_element(costs.record_bytes.begin(), costs.record_bytes.end()), hi = top;
  while (lo <= hi) {
    const std::size_t memory = lo + (hi - lo) / 2;
    std::optional<BudgetPlan> plan = budget_schedule(costs, memory, unit, &tables);
    const bool fits = plan && s.peak_with(make(plan->schedule)) <= budget;
    if (fits && (!best || plan->recomputed_flops < best->recomputed_flops)) best = std::move(plan);
    if (fits || !plan) lo = memory + 1;
    else if (memory == 0) break;
    else hi = memory - 1;
  }
  if (best) return best->schedule;
  const CheckpointSchedule least = revolve_schedule(layers, 1);  // one snapshot: the least any schedule keeps
  const std::size_t minimum = s.peak_with(make(least));
  if (minimum <= budget) return least;
  throw Error("technique checkpoint: budget_bytes " + std::to_string(budget) +
              " is below what any schedule reaches for this model, precision and batch: the minimum is " +
              std::to_string(minimum) + " bytes (one snapshot, every step recomputed from the input)");
}

// Time steps as the budget's dynamic programme sees them: all alike, a state of [h, c] (2 units) in, a record of
// c and the four gates (5 units) kept (an LSTM's inner layers'; the last layer's records also keep h, 6 units); a
// unit is what one value per sample and hidden unit takes. The bisection turns units into the dry step's bytes, so
// only the ratios matter here.
ChainCosts time_step_costs(std::size_t steps, std::size_t unit_bytes) {
  ChainCosts c;
  c.flops.assign(steps, 1.0);
  c.input_bytes.assign(steps, 2 * unit_bytes);
  c.record_bytes.assign(steps, 5 * unit_bytes);
  return c;
}

// The schedules that need no fitting, for any number of steps: made once per length (every LSTM layer of every
// training step asks).
struct RuleTimeSchedule : TimeSchedule {
  const Checkpoint* technique;
  explicit RuleTimeSchedule(const Checkpoint* t) : technique(t) {}
  CheckpointSchedule schedule(std::size_t n) const override {
    const std::lock_guard<std::mutex> lock(mutex);
    if (auto at = schedules.find(n); at != schedules.end()) return at->second;
    return schedules.emplace(n, technique->rule_schedule(n)).first->second;  // made first: a throw caches nothing
  }
  mutable std::mutex mutex;
  mutable std::map<std::size_t, CheckpointSchedule> schedules;
};

template <class T> class CheckpointHooks : public TechniqueHooks<T> {
 public:
  CheckpointHooks(const Checkpoint& technique, const TechniqueServices<T>& s)
      : technique_(technique), services_(s), with_reversible_(find_technique<Reversible>(s.all) != nullptr) {}
  void configure(RunContext& train) override {
    train.recompute_between_runs = with_reversible_ && !technique_.over_time();
  }
  std::unique_ptr<ChainRunner<T>> chain(Sequential<T>& model) override {
    if (technique_.over_time()) {
      if (!technique_.fitted_by_dry_steps())
        return std::make_unique<TimeScheduledChain<T>>(std::make_shared<const RuleTimeSchedule>(&technique_));
      const auto steps = static_cast<std::size_t>(model.input_shape()[0]);  // a text model's input: (T) token ids
      // The bytes of a unit do not matter (see time_step_costs): 1 KB keeps the bisection fine. The bound is
      // searched up to what stores every step.
      const std::size_t unit = 1024, budget = static_cast<std::size_t>(technique_.budget_bytes());
      const CheckpointSchedule fitted = fit_budget<T>(
          time_step_costs(steps, unit), budget, std::max(budget, 8 * unit * steps), services_,
          [steps](const CheckpointSchedule& schedule) { return time_runner<T>(steps, schedule); });
      return time_runner<T>(steps, fitted)();
    }
    if (with_reversible_) return nullptr;  // Sequential recomputes the runs between the rebuilt ones
    return std::make_unique<ScheduledChain<T>>(technique_.schedule(model.size(), services_));
  }

 private:
  const Checkpoint& technique_;
  TechniqueServices<T> services_;
  bool with_reversible_;
};

}  // namespace

CheckpointSchedule Checkpoint::rule_schedule(std::size_t layers) const {
  if (schedule_ == "revolve") return revolve_schedule(layers, static_cast<std::size_t>(slots_));
  const auto sqrt_n = static_cast<std::size_t>(std::lround(std::sqrt(static_cast<double>(layers))));
  return uniform_schedule(layers, segments_ > 0 ? static_cast<std::size_t>(segments_) : std::max<std::size_t>(1, sqrt_n));
}

template <class T>
CheckpointSchedule Checkpoint::schedule(std::size_t layers, const TechniqueServices<T>& s) const {
  if (schedule_ != "budget") return rule_schedule(layers);
  const auto budget = static_cast<std::size_t>(budget_bytes_);
  return fit_budget<T>(s.chain_costs(), budget, budget, s, runner<T>);
}

template <class T> std::unique_ptr<TechniqueHooks<T>> Checkpoint::hooks_for(const TechniqueServices<T>& s) const {
  return std::make_unique<CheckpointHooks<T>>(*this, s);
}

template <class T> Tensor<T> ScheduledChain<T>::forward(Sequential<T>& chain, const Tensor<T>& x, const RunContext& ctx) {
  return executor_.forward(chain, x, ctx);
}
template <class T>
Tensor<T> ScheduledChain<T>::backward(Sequential<T>& chain, Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  return executor_.backward(chain, std::move(dy), ctx, want_input_grad);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(ScheduledChain)
LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Checkpoint)
#define LOWMEM_INSTANTIATE_SCHEDULE(T) \
  template CheckpointSchedule Checkpoint::schedule(std::size_t, const TechniqueServices<T>&) const;
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_SCHEDULE)

}  // namespace lowmem
