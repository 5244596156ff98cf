#include "layers/step_chain.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace lowmem {

using Kind = CheckpointAction::Kind;

CheckpointSchedule store_all_schedule(std::size_t steps) {
  CheckpointSchedule s;
  for (std::size_t i = 0; i < steps; ++i) s.push_back({Kind::record, i});
  for (std::size_t i = steps; i-- > 0;) s.push_back({Kind::reverse, i});
  return s;
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

template <class T> Tensor<T> CheckpointExecutor<T>::forward(StepChain<T>& chain, const Tensor<T>& x, const RunContext& ctx) {
  const std::size_t n = chain.steps();
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
Tensor<T> CheckpointExecutor<T>::backward(StepChain<T>& chain, Tensor<T> dy, const RunContext& ctx,
                                          bool want_input_grad) {
  grad_ = std::move(dy);
  run(chain, forward_end_, schedule_.size(), ctx, want_input_grad);
  return std::move(grad_);
}

template <class T>
void CheckpointExecutor<T>::run(StepChain<T>& chain, std::size_t from, std::size_t to, const RunContext& ctx,
                                bool want_input_grad) {
  for (std::size_t k = from; k < to; ++k) {
    const auto [kind, i] = schedule_[k];
    static const std::string chain_output = "(chain output)";
    const MemoryOwner owner(i < chain.steps() ? chain.step_name(i) : chain_output);
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
        current_ = chain.step_forward(i, std::move(current_), step);  // in place unless a snapshot holds it
        evaluated_[i] = true;
        ++evaluations_;
        break;
      }
      case Kind::reverse:
        current_ = Tensor<T>();  // the recorded output is not needed any more
        grad_ = chain.step_backward(i, std::move(grad_), ctx, i > 0 || want_input_grad);
        break;
    }
  }
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(CheckpointExecutor)

}  // namespace lowmem
