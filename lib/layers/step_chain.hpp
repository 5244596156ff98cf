#pragma once
// Gradient checkpointing over a chain of n steps: keep a few states, recompute the others in backward. The steps
// are a model's layers (technique checkpoint over layers: Sequential) or a recurrent layer's time steps (over
// time: Lstm, Gruslys et al. 2016's backpropagation through time with checkpoints).
// A schedule is a list of actions in Griewank & Walther's vocabulary; one executor runs any schedule, so every
// schedule is exact (gradients bit for bit those of stored activations: each recomputation repeats the same
// operations on the same input) and its memory is whatever the ledger sees (lowmem plan predicts it by a dry step).
//
//   snapshot i   keep x_i, the input of step i (x_0 is the chain's input)
//   restore i    continue from the kept x_i
//   forget i     drop the kept x_i
//   advance i    x_{i+1} = step_i(x_i), keeping nothing for backward
//   record i     x_{i+1} = step_i(x_i), keeping what step i's backward needs
//   reverse i    backward through step i (after record i; steps are reversed last first)
//
// The forward pass runs the actions up to the last step's record (then the loss is taken), backward the rest.
// Running statistics (batch norm) are updated by each step's first evaluation in a training step only.
// The schedules themselves (uniform, revolve, budget) are the technique's: lib/techniques/checkpoint.hpp.
#include <cstdint>
#include <string>
#include <vector>

#include "layers/layer.hpp"
#include "layers/saved.hpp"

namespace lowmem {

struct CheckpointAction {
  enum Kind { snapshot, restore, forget, advance, record, reverse } kind;
  std::size_t layer;  // the step
};
using CheckpointSchedule = std::vector<CheckpointAction>;

// Every step recorded in the forward pass, then reversed: stored activations.
CheckpointSchedule store_all_schedule(std::size_t steps);

// Forward step evaluations (advances and records) of a schedule beyond one per step.
std::int64_t recomputed_evaluations(const CheckpointSchedule& schedule, std::size_t steps);

// Checks that a schedule reverses every step once, last first, after recording it from the right input.
// Throws std::logic_error describing the first violation.
void check_schedule(const CheckpointSchedule& schedule, std::size_t steps);

// Where RunContext::time_schedule comes from: the schedule for a recurrent layer of `steps` time steps.
struct TimeSchedule {
  virtual ~TimeSchedule() = default;
  virtual CheckpointSchedule schedule(std::size_t steps) const = 0;
};

// What the executor runs: steps 0 .. steps() - 1, each a map of the state forward and of its gradient backward.
template <class T> class StepChain {
 public:
  virtual ~StepChain() = default;
  virtual std::size_t steps() const = 0;
  virtual const std::string& step_name(std::size_t i) const = 0;  // the owner of its memory in the timeline
  virtual Tensor<T> step_forward(std::size_t i, Tensor<T> x, const RunContext& ctx) = 0;
  virtual Tensor<T> step_backward(std::size_t i, Tensor<T> dy, const RunContext& ctx, bool want_input_grad) = 0;
};

// Runs a schedule on a chain. forward() runs the actions up to the last step's record and returns the chain's
// output; backward() runs the rest and returns dL/dx0 if asked. Snapshots live here, from forward to backward.
template <class T> class CheckpointExecutor {
 public:
  CheckpointExecutor() = default;
  explicit CheckpointExecutor(CheckpointSchedule schedule) : schedule_(std::move(schedule)) {}
  Tensor<T> forward(StepChain<T>& chain, const Tensor<T>& x, const RunContext& ctx);
  // dy by value: the caller's buffer is not held through backward (as Sequential::backward).
  Tensor<T> backward(StepChain<T>& chain, Tensor<T> dy, const RunContext& ctx, bool want_input_grad = false);
  // Step evaluations of the last training step beyond one per step.
  std::int64_t recomputed() const { return evaluations_ - static_cast<std::int64_t>(evaluated_.size()); }

 private:
  void run(StepChain<T>& chain, std::size_t from, std::size_t to, const RunContext& ctx, bool want_input_grad);
  CheckpointSchedule schedule_;
  std::size_t forward_end_ = 0;      // actions [0, forward_end_) form the forward pass
  std::vector<Saved<T>> snapshots_;  // per step index: its kept input
  std::vector<bool> evaluated_;      // per step: evaluated in this training step (running statistics updated)
  Tensor<T> current_, grad_;         // the state the actions move along, and the gradient flowing back
  std::int64_t evaluations_ = 0;
  bool checked_ = false;  // the schedule was checked against the chain (check_schedule) on the first forward
};

}  // namespace lowmem
