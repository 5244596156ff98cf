#pragma once
// Technique "checkpoint": keep a few states, recompute the others in backward, by a schedule in the action
// vocabulary of layers/step_chain.hpp (one executor runs them all).
//   {"schedule": "uniform" [, "segments": s] | "revolve", "slots": s | "budget", "budget_bytes": b
//    [, "over": "layers" | "time"]}
// Over layers (the default) it runs the model's chain by the schedule (its chain hook). Over time it runs the time
// steps of every recurrent layer (lstm) by it, as Gruslys et al. 2016 did for backpropagation through time, and the
// model's chain stores its activations as usual (its configure hook: RunContext::time_schedule).
// Composed with reversible, it takes no schedule: each run of non-invertible layers between the rebuilt invertible
// runs keeps only its input and is recomputed from it (Sequential, RunContext::recompute_between_runs).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/config_reader.hpp"
#include "layers/sequential.hpp"
#include "layers/step_chain.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

// Chen et al.: `segments` segments of (nearly) equal length; every segment's input kept; the last segment recorded
// in the forward pass, the others recomputed once in backward. segments = 1 is store-all.
CheckpointSchedule uniform_schedule(std::size_t layers, std::size_t segments);

// Griewank & Walther's binomial checkpointing with `slots` snapshots (the chain's input included): the fewest
// advances for a chain of equal steps. For l steps, with t the smallest integer with C(s + t, s) >= l, that is
// t l - C(s + t, s + 1) advances (not counting the records).
CheckpointSchedule revolve_schedule(std::size_t layers, std::size_t slots);
// The minimum number of advances for l steps and s slots (dynamic programming over the first snapshot position).
std::int64_t revolve_advances(std::size_t steps, std::size_t slots);

// The chain as the budget schedule sees it: ChainCosts (techniques/technique.hpp), per layer the cost of one
// forward evaluation, the bytes of its input x_i (what a snapshot holds), and the bytes its record keeps.

// Beaumont et al.'s optimal checkpointing for heterogeneous chains (rotor), in these actions: the schedule of least
// recomputation (total flops of its advances) among those whose snapshots and records never hold more than
// `memory` bytes at once (x_0 excepted: the batch is held anyway), by dynamic programming over (segment, memory)
// with memory counted in units of `unit` bytes (sizes rounded up, so the bound holds). nullopt if none fits.
struct BudgetPlan {
  CheckpointSchedule schedule;
  double recomputed_flops = 0;
};
// The programme's tables (cost and choice per cell, and the solve that wrote it), for a caller that solves many
// times: fit_budget's bisection solves about twenty times, and tables of ~100 MB allocated and cleared afresh for
// each solve cost more than the solving. A solve stamps the cells it writes instead of clearing the tables.
struct BudgetTables {
  std::vector<double> cost;
  std::vector<std::uint32_t> choice, stamp;
  std::uint32_t solves = 0;
};
std::optional<BudgetPlan> budget_schedule(const ChainCosts& costs, std::size_t memory, std::size_t unit,
                                          BudgetTables* tables = nullptr);

// The model's chain run by a schedule over its layers.
template <class T> class ScheduledChain : public ChainRunner<T> {
 public:
  explicit ScheduledChain(CheckpointSchedule schedule) : executor_(std::move(schedule)) {}
  Tensor<T> forward(Sequential<T>& chain, const Tensor<T>& x, const RunContext& ctx) override;
  Tensor<T> backward(Sequential<T>& chain, Tensor<T> dy, const RunContext& ctx, bool want_input_grad = false) override;
  std::int64_t recomputed(const Sequential<T>&) const override { return executor_.recomputed(); }

 private:
  CheckpointExecutor<T> executor_;
};

class Checkpoint : public Technique {
 public:
  static constexpr const char* name = "checkpoint";
  explicit Checkpoint(ConfigReader& r);
  const char* type() const override { return name; }
  std::string label() const override;
  bool fitted_by_dry_steps() const override { return schedule_ == "budget"; }
  void check_composition(const TechniqueList& all, const ConfigReader& run) const override;
  void check_model(const ModelFacts& model) const override;
  // The schedule for a chain of `layers` (budget: fitted by the services' dry steps). Throws lowmem::Error if a
  // budget is below what any schedule reaches, saying that minimum.
  template <class T> CheckpointSchedule schedule(std::size_t layers, const TechniqueServices<T>& s) const;
  // uniform and revolve, for a chain of any length.
  CheckpointSchedule rule_schedule(std::size_t layers) const;
  bool over_time() const { return over_time_; }
  std::int64_t budget_bytes() const { return budget_bytes_; }
  LOWMEM_TECHNIQUE_HOOKS

 private:
  std::string schedule_;           // uniform | revolve | budget
  std::int64_t segments_ = 0;      // uniform: segment count (0: round(sqrt(layers)))
  std::int64_t slots_ = 0;         // revolve: snapshots, the chain's input included
  std::int64_t budget_bytes_ = 0;  // budget: peak bytes of a step (every ledger category)
  bool over_time_ = false;         // "over": "time": the recurrent layers' time steps, not the model's layers
};

}  // namespace lowmem
