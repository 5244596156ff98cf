#include "techniques/checkpoint.hpp"

#include "techniques/reversible.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
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
  BudgetSolver(const ChainCosts& costs, std::size_t memory, std::size_t unit)
      : n_(costs.flops.size()), units_(memory / unit), flops_(costs.flops) {
    auto in_units = [&](std::size_t bytes) { return (bytes + unit - 1) / unit; };
    for (std::size_t i = 0; i < n_; ++i) {
      input_.push_back(in_units(costs.input_bytes[i]));
      record_.push_back(in_units(costs.record_bytes[i]));
    }
    prefix_.assign(n_ + 1, 0.0);
    for (std::size_t i = 0; i < n_; ++i) prefix_[i + 1] = prefix_[i] + flops_[i];
    const std::size_t cells = n_ * (n_ + 1) * (units_ + 1);
    for (Table* t : {&kept_, &current_}) t->cost.assign(cells, unknown), t->choice.assign(cells, 0);
  }

  double solve() { return kept(0, n_, units_); }
  void write(CheckpointSchedule& out) {
    out.push_back({Kind::snapshot, 0});
    write_kept(out, 0, n_, units_);
    out.push_back({Kind::forget, 0});
  }

 private:
  static constexpr double infinite = std::numeric_limits<double>::infinity();
  static constexpr double unknown = -1;
  static constexpr std::size_t record_first = 0, snapshot_first = 1;  // choices; j >= 2 means "advance to x_j"
  struct Table {
    std::vector<double> cost;
    std::vector<std::size_t> choice;
  };
  std::size_t at(std::size_t a, std::size_t b, std::size_t m) const { return (a * (n_ + 1) + b) * (units_ + 1) + m; }

  // Record layer a, reverse the rest from its output, reverse a: both tables' first option.
  double record_then_cost(std::size_t a, std::size_t b, std::size_t m) {
    return record_[a] > m ? infinite : b == a + 1 ? 0.0 : current(a + 1, b, m - record_[a]);
  }
  double kept(std::size_t a, std::size_t b, std::size_t m) {
    double& cost = kept_.cost[at(a, b, m)];
    if (cost != unknown) return cost;
    std::size_t& choice = kept_.choice[at(a, b, m)];
    cost = record_then_cost(a, b, m), choice = record_first;
    for (std::size_t j = a + 1; j < b; ++j) {
      const double c = prefix_[j] - prefix_[a] + current(j, b, m) + kept(a, j, m);
      if (c < cost) cost = c, choice = j + 2;
    }
    return cost;
  }
  double current(std::size_t a, std::size_t b, std::size_t m) {
    double& cost = current_.cost[at(a, b, m)];
    if (cost != unknown) return cost;
    std::size_t& choice = current_.choice[at(a, b, m)];
    cost = record_then_cost(a, b, m), choice = record_first;
    if (b > a + 1 && input_[a] <= m) {
      const double c = kept(a, b, m - input_[a]);
      if (c < cost) cost = c, choice = snapshot_first;
    }
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
    const std::size_t choice = kept_.choice[at(a, b, m)];
    go_to(out, a);
    if (choice == record_first) return record_then(out, a, b, m);
    const std::size_t j = choice - 2;
    for (std::size_t i = a; i < j; ++i) out.push_back({Kind::advance, i});
    position_ = j;
    write_current(out, j, b, m);
    write_kept(out, a, j, m);
  }
  void write_current(CheckpointSchedule& out, std::size_t a, std::size_t b, std::size_t m) {
    if (current_.choice[at(a, b, m)] == record_first) return record_then(out, a, b, m);
    out.push_back({Kind::snapshot, a});
    write_kept(out, a, b, m - input_[a]);
    out.push_back({Kind::forget, a});
  }

  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
  std::size_t n_, units_, position_ = 0;
  std::vector<double> flops_, prefix_;
  std::vector<std::size_t> input_, record_;
  Table kept_, current_;
};

}  // namespace

std::optional<BudgetPlan> budget_schedule(const ChainCosts& costs, std::size_t memory, std::size_t unit) {
  if (costs.flops.empty() || unit == 0) throw std::invalid_argument("budget schedule: empty chain or zero unit");
  BudgetSolver solver(costs, memory, unit);
  BudgetPlan plan;
  plan.recomputed_flops = solver.solve();
  if (!std::isfinite(plan.recomputed_flops)) return std::nullopt;
  solver.write(plan.schedule);
  return plan;
}

std::int64_t recomputed_evaluations(const CheckpointSchedule& schedule, std::size_t layers) {
  std::int64_t evaluations = 0;
  for (const CheckpointAction& a : schedule) evaluations += a.kind == Kind::advance || a.kind == Kind::record;
  return evaluations - static_cast<std::int64_t>(layers);
}

void check_schedule(const CheckpointSchedule& schedule, std::size_t layers) {
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::size_t position = none, next_reverse = layers;
  std::vector<bool> kept(layers + 1, false), recorded(layers, false);
  auto fail = [](std::size_t k, const std::string& what) {
    throw std::logic_error("checkpoint schedule, action " + std::to_string(k) + ": " + what);
  };
  position = 0;  // the chain's input is the starting state
  for (std::size_t k = 0; k < schedule.size(); ++k) {
    const auto [kind, i] = schedule[k];
    if (i > layers || (i == layers && kind != Kind::snapshot)) fail(k, "layer index out of range");
    switch (kind) {
      case Kind::snapshot:
        if (position != i) fail(k, "snapshot of a state that is not the current one");
        kept[i] = true;
        break;
      case Kind::restore:
        if (!kept[i]) fail(k, "restore of a state that is not kept");
        position = i;
        break;
      case Kind::forget:
        if (!kept[i]) fail(k, "forget of a state that is not kept");
        kept[i] = false;
        break;
      case Kind::advance:
      case Kind::record:
        if (position != i) fail(k, "evaluation from a state that is not the layer's input");
        if (i >= next_reverse) fail(k, "evaluation of a layer already reversed");
        if (recorded[i]) fail(k, "evaluation of a layer whose record is not reversed yet");
        if (kind == Kind::record) recorded[i] = true;
        position = i + 1;
        break;
      case Kind::reverse:
        if (!recorded[i] || i + 1 != next_reverse) fail(k, "reverse out of order or of a layer not recorded");
        recorded[i] = false;
        next_reverse = i;
        position = none;
        break;
    }
  }
  if (next_reverse != 0) fail(schedule.size(), "not every layer is reversed");
  if (std::find(kept.begin(), kept.end(), true) != kept.end()) fail(schedule.size(), "a kept state is never forgotten");
}

template <class T> Tensor<T> CheckpointExecutor<T>::forward(Sequential<T>& chain, const Tensor<T>& x, const RunContext& ctx) {
  const std::size_t n = chain.size();
  if (!checked_) check_schedule(schedule_, n), checked_ = true;
  forward_end_ = 0;
  while (forward_end_ < schedule_.size() &&
         !(schedule_[forward_end_].kind == Kind::record && schedule_[forward_end_].layer + 1 == n))
    ++forward_end_;
  ++forward_end_;  // through the last layer's record: its output is the chain's output
  snapshots_.assign(n + 1, Saved<T>());
  evaluated_.assign(n, false);
  evaluations_ = 0;
  current_ = x;
  run(chain, 0, forward_end_, ctx, false);
  return std::move(current_);
}

template <class T>
Tensor<T> CheckpointExecutor<T>::backward(Sequential<T>& chain, Tensor<T> dy, const RunContext& ctx,
                                          bool want_input_grad) {
  grad_ = std::move(dy);
  run(chain, forward_end_, schedule_.size(), ctx, want_input_grad);
  return std::move(grad_);
}

template <class T>
void CheckpointExecutor<T>::run(Sequential<T>& chain, std::size_t from, std::size_t to, const RunContext& ctx,
                                bool want_input_grad) {
  for (std::size_t k = from; k < to; ++k) {
    const auto [kind, i] = schedule_[k];
    static const std::string chain_output = "(chain output)";
    const MemoryOwner owner(i < chain.size() ? chain.layer(i).label() : chain_output);
    // Forward evaluations after the forward pass are recomputations, for the memory timeline.
    const MemoryPhaseScope phase(k >= forward_end_ && kind != Kind::reverse ? MemoryPhase::recompute
                                                                             : current_memory_phase());
    switch (kind) {
      case Kind::snapshot: {
        const SaveHookScope<T> exact(nullptr);  // recomputation starts from exact states
        snapshots_[i].keep(current_);
        break;
      }
      case Kind::restore: current_ = snapshots_[i].get(); break;
      case Kind::forget: snapshots_[i].release(); break;
      case Kind::advance:
      case Kind::record: {
        RunContext step = ctx;
        step.keep = kind == Kind::record ? RunContext::Keep::all : RunContext::Keep::nothing;
        step.update_statistics = ctx.update_statistics && !evaluated_[i];  // recomputations leave them alone
        current_ = chain.layer(i).forward(std::move(current_), step);  // in place unless a snapshot holds it
        evaluated_[i] = true;
        ++evaluations_;
        break;
      }
      case Kind::reverse:
        current_ = Tensor<T>();  // the recorded output is not needed any more
        grad_ = chain.layer(i).backward(std::move(grad_), ctx, i > 0 || want_input_grad);
        break;
    }
  }
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(CheckpointExecutor)

Checkpoint::Checkpoint(ConfigReader& r) {
  constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
  schedule_ = r.get_choice("schedule", "uniform", {"uniform", "revolve", "budget"});
  if (schedule_ == "uniform") segments_ = r.get_in<std::int64_t>("segments", 0, 0, i64_max);
  else if (schedule_ == "revolve") slots_ = r.required_in<std::int64_t>("slots", 1, i64_max);
  else budget_bytes_ = r.required_in<std::int64_t>("budget_bytes", 1, i64_max);
}

std::string Checkpoint::label() const {
  return std::string(name) + "-" + schedule_ + "-" +
         (schedule_ == "revolve"  ? std::to_string(slots_)
          : schedule_ == "budget" ? std::to_string(budget_bytes_)
          : segments_ > 0         ? std::to_string(segments_)
                                  : std::string("sqrt"));
}

void Checkpoint::check_composition(const TechniqueList& all, const ConfigReader& run) const {
  if (find_technique<Reversible>(all) && (schedule_ != "uniform" || segments_ != 0))
    run.fail("technique", "checkpoint composed with reversible recomputes each run of non-invertible layers from its "
                          "input (reversible rebuilds the invertible runs between them): use {\"type\": "
                          "\"checkpoint\"} without a schedule or segments");
}

void Checkpoint::check_model(const ModelFacts& model) const {
  if (static_cast<std::size_t>(segments_) > model.layers)
    throw Error("/technique: checkpoint segments " + std::to_string(segments_) + " is more than model (" + model.arch +
                ")'s " + std::to_string(model.layers) + " layers");
}

namespace {

// The budget schedule: the dynamic programme's memory bound is searched (bisection on bytes) for the schedule of
// least recomputation whose whole dry step stays within the budget, so the model's weights, gradients, optimizer
// state and workspace are what the ledger sees, not a guess.
template <class T> MakeChainRunner<T> runner(const CheckpointSchedule& schedule) {
  return [schedule] { return std::make_unique<CheckpointExecutor<T>>(schedule); };
}

template <class T>
CheckpointSchedule fit_budget(std::size_t layers, std::size_t budget, const TechniqueServices<T>& s) {
  const ChainCosts costs = s.chain_costs();
  const std::size_t cells = layers * (layers + 1);
  const std::size_t unit = std::max<std::size_t>(1, budget / std::max<std::size_t>(1, 4000000 / cells));
  std::optional<BudgetPlan> best;
  // Below the largest record no schedule exists: the search starts there. No plan: more memory; a plan whose
  // dry step is over the budget: less.
  std::size_t lo = *std::max_element(costs.record_bytes.begin(), costs.record_bytes.end()), hi = budget;
  while (lo <= hi) {
    const std::size_t memory = lo + (hi - lo) / 2;
    std::optional<BudgetPlan> plan = budget_schedule(costs, memory, unit);
    const bool fits = plan && s.peak_with(runner<T>(plan->schedule)) <= budget;
    if (fits && (!best || plan->recomputed_flops < best->recomputed_flops)) best = std::move(plan);
    if (fits || !plan) lo = memory + 1;
    else if (memory == 0) break;
    else hi = memory - 1;
  }
  if (best) return best->schedule;
  const CheckpointSchedule least = revolve_schedule(layers, 1);  // one snapshot: the least any schedule keeps
  const std::size_t minimum = s.peak_with(runner<T>(least));
  if (minimum <= budget) return least;
  throw Error("technique checkpoint: budget_bytes " + std::to_string(budget) +
              " is below what any schedule reaches for this model, precision and batch: the minimum is " +
              std::to_string(minimum) + " bytes (one snapshot, every layer recomputed from the input)");
}

template <class T> class CheckpointHooks : public TechniqueHooks<T> {
 public:
  CheckpointHooks(const Checkpoint& technique, const TechniqueServices<T>& s)
      : technique_(technique), services_(s), with_reversible_(find_technique<Reversible>(s.all) != nullptr) {}
  void configure(RunContext& train) override { train.recompute_between_runs = with_reversible_; }
  std::unique_ptr<ChainRunner<T>> chain(Sequential<T>& model) override {
    if (with_reversible_) return nullptr;  // Sequential recomputes the runs between the rebuilt ones
    return std::make_unique<CheckpointExecutor<T>>(technique_.schedule(model.size(), services_));
  }

 private:
  const Checkpoint& technique_;
  TechniqueServices<T> services_;
  bool with_reversible_;
};

}  // namespace

template <class T>
CheckpointSchedule Checkpoint::schedule(std::size_t layers, const TechniqueServices<T>& s) const {
  if (schedule_ == "revolve") return revolve_schedule(layers, static_cast<std::size_t>(slots_));
  if (schedule_ == "budget") return fit_budget<T>(layers, static_cast<std::size_t>(budget_bytes_), s);
  const auto sqrt_n = static_cast<std::size_t>(std::lround(std::sqrt(static_cast<double>(layers))));
  return uniform_schedule(layers, segments_ > 0 ? static_cast<std::size_t>(segments_) : std::max<std::size_t>(1, sqrt_n));
}

template <class T> std::unique_ptr<TechniqueHooks<T>> Checkpoint::hooks_for(const TechniqueServices<T>& s) const {
  return std::make_unique<CheckpointHooks<T>>(*this, s);
}

LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Checkpoint)
#define LOWMEM_INSTANTIATE_SCHEDULE(T) \
  template CheckpointSchedule Checkpoint::schedule(std::size_t, const TechniqueServices<T>&) const;
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_SCHEDULE)

}  // namespace lowmem
