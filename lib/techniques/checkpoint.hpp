#pragma once
// Gradient checkpointing over a chain of n layers: keep a few activations, recompute the others in backward.
// A schedule is a list of actions in Griewank & Walther's vocabulary; one executor runs any schedule, so every
// schedule is exact (gradients bit for bit those of stored activations: each recomputation repeats the same
// operations on the same input) and its memory is whatever the ledger sees (lowmem plan predicts it by a dry step).
//
//   snapshot i   keep x_i, the input of layer i (x_0 is the chain's input)
//   restore i    continue from the kept x_i
//   forget i     drop the kept x_i
//   advance i    x_{i+1} = layer_i(x_i), keeping nothing for backward
//   record i     x_{i+1} = layer_i(x_i), keeping what layer i's backward needs
//   reverse i    backward through layer i (after record i; layers are reversed last first)
//
// The forward pass runs the actions up to the last layer's record (then the loss is taken), backward the rest.
// Running statistics (batch norm) are updated by each layer's first evaluation in a step only.
//
// Technique "checkpoint" ({"schedule": "uniform" [, "segments": s] | "revolve", "slots": s | "budget",
// "budget_bytes": b}) runs the model's chain by one of these schedules (its chain hook). Composed with reversible,
// it takes no schedule: each run of non-invertible layers between the rebuilt invertible runs keeps only its input
// and is recomputed from it (Sequential, RunContext::recompute_between_runs).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/config_reader.hpp"
#include "layers/sequential.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

struct CheckpointAction {
  enum Kind { snapshot, restore, forget, advance, record, reverse } kind;
  std::size_t layer;
};
using CheckpointSchedule = std::vector<CheckpointAction>;

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
std::optional<BudgetPlan> budget_schedule(const ChainCosts& costs, std::size_t memory, std::size_t unit);

// Forward layer evaluations (advances and records) of a schedule beyond one per layer.
std::int64_t recomputed_evaluations(const CheckpointSchedule& schedule, std::size_t layers);

// Checks that a schedule reverses every layer once, last first, after recording it from the right input.
// Throws std::logic_error describing the first violation.
void check_schedule(const CheckpointSchedule& schedule, std::size_t layers);

// Runs a schedule on a chain. forward() runs the actions up to the last layer's record and returns the chain's
// output; backward() runs the rest and returns dL/dx0 if asked.
template <class T> class CheckpointExecutor : public ChainRunner<T> {
 public:
  explicit CheckpointExecutor(CheckpointSchedule schedule) : schedule_(std::move(schedule)) {}
  Tensor<T> forward(Sequential<T>& chain, const Tensor<T>& x, const RunContext& ctx) override;
  // dy by value: the caller's buffer is not held through backward (as Sequential::backward).
  Tensor<T> backward(Sequential<T>& chain, Tensor<T> dy, const RunContext& ctx, bool want_input_grad = false) override;
  // Layer evaluations of the last step beyond one per layer.
  std::int64_t recomputed() const { return evaluations_ - static_cast<std::int64_t>(evaluated_.size()); }
  std::int64_t recomputed(const Sequential<T>&) const override { return recomputed(); }

 private:
  void run(Sequential<T>& chain, std::size_t from, std::size_t to, const RunContext& ctx, bool want_input_grad);
  CheckpointSchedule schedule_;
  std::size_t forward_end_ = 0;      // actions [0, forward_end_) form the forward pass
  std::vector<Saved<T>> snapshots_;  // per layer index: its kept input
  std::vector<bool> evaluated_;      // per layer: evaluated in this step (running statistics updated)
  Tensor<T> current_, grad_;         // the state the actions move along, and the gradient flowing back
  std::int64_t evaluations_ = 0;
  bool checked_ = false;  // the schedule was checked against the chain (check_schedule) on the first forward
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
  LOWMEM_TECHNIQUE_HOOKS

 private:
  std::string schedule_;           // uniform | revolve | budget
  std::int64_t segments_ = 0;      // uniform: segment count (0: round(sqrt(layers)))
  std::int64_t slots_ = 0;         // revolve: snapshots, the chain's input included
  std::int64_t budget_bytes_ = 0;  // budget: peak bytes of a step (every ledger category)
};

}  // namespace lowmem
