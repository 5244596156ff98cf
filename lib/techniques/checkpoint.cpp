#include "techniques/checkpoint.hpp"

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

std::int64_t recomputed_evaluations(const CheckpointSchedule& schedule, std::size_t layers) {
  std::int64_t evaluations = 0;
  for (const CheckpointAction& a : schedule) evaluations += a.kind == Kind::advance || a.kind == Kind::record;
  return evaluations - static_cast<std::int64_t>(layers);
}

void check_schedule(const CheckpointSchedule& schedule, std::size_t layers) {
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::size_t position = none, next_reverse = layers;
  std::vector<bool> kept(layers + 1, false);
  std::vector<std::size_t> recorded;
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
        if (kind == Kind::record) recorded.push_back(i);
        position = i + 1;
        break;
      case Kind::reverse:
        if (recorded.empty() || recorded.back() != i || i + 1 != next_reverse) fail(k, "reverse out of order");
        recorded.pop_back();
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
  forward_end_ = 0;
  while (forward_end_ < schedule_.size() &&
         !(schedule_[forward_end_].kind == Kind::record && schedule_[forward_end_].layer + 1 == n))
    ++forward_end_;
  ++forward_end_;  // through the last layer's record: its output is the chain's output
  snapshots_.assign(n + 1, Saved<T>());
  evaluated_.assign(n, false);
  evaluations_ = 0;
  current_ = x;
  position_ = 0;
  run(chain, 0, forward_end_, ctx, false);
  Tensor<T> out = current_;
  current_ = Tensor<T>();
  return out;
}

template <class T>
Tensor<T> CheckpointExecutor<T>::backward(Sequential<T>& chain, const Tensor<T>& dy, const RunContext& ctx,
                                          bool want_input_grad) {
  grad_ = dy;
  run(chain, forward_end_, schedule_.size(), ctx, want_input_grad);
  Tensor<T> dx = grad_;
  grad_ = Tensor<T>();
  return dx;
}

template <class T>
void CheckpointExecutor<T>::run(Sequential<T>& chain, std::size_t from, std::size_t to, const RunContext& ctx,
                                bool want_input_grad) {
  for (std::size_t k = from; k < to; ++k) {
    const auto [kind, i] = schedule_[k];
    switch (kind) {
      case Kind::snapshot: snapshots_[i].keep(current_); break;
      case Kind::restore: current_ = snapshots_[i].get(), position_ = i; break;
      case Kind::forget: snapshots_[i].release(); break;
      case Kind::advance:
      case Kind::record: {
        RunContext step = ctx;
        step.keep = kind == Kind::record ? RunContext::Keep::all : RunContext::Keep::nothing;
        step.update_statistics = ctx.update_statistics && !evaluated_[i];  // recomputations leave them alone
        current_ = chain.layer(i).forward(current_, step);
        evaluated_[i] = true;
        ++evaluations_;
        position_ = i + 1;
        break;
      }
      case Kind::reverse:
        current_ = Tensor<T>();  // the recorded output is not needed any more
        grad_ = chain.layer(i).backward(grad_, ctx, i > 0 || want_input_grad);
        break;
    }
  }
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(CheckpointExecutor)

}  // namespace lowmem
