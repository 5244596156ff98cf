#pragma once
// What the per-layer suites beyond the generic checker share (test_attention.cpp, test_dynamic_conv.cpp): random
// parameters and tensors, bit equality in every precision, and the ledger's events of one layer step.
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "layers/layer.hpp"
#include "tensor/memory_ledger.hpp"

namespace lowmem::testing {

// Parameters as initialised, then moved by 0.3 N(0, 1) (biases start at 0: move them too).
template <class T> void randomize(Layer<T>& layer, Rng& rng) {
  layer.initialize(rng);
  for (Param<T>* p : layer.params())
    for (index_t i = 0; i < p->value.numel(); ++i) p->value[i] = round_to<T>(to_double(p->value[i]) + 0.3 * rng.normal());
}

template <class T> Tensor<T> random_tensor(const Shape& shape, Rng& rng) {
  Tensor<T> t(shape, MemoryCategory::workspace);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = round_to<T>(rng.normal());
  return t;
}

template <class T> bool same_bits(const T& a, const T& b) {
  if constexpr (std::is_same_v<T, mp>) return a == b && signbit(a) == signbit(b);  // (its limbs may hold padding)
  else return std::memcmp(&a, &b, sizeof(T)) == 0;
}

inline bool same_event(const MemoryEvent& a, const MemoryEvent& b) {
  return a.kind == b.kind && a.category == b.category && a.from == b.from && a.phase == b.phase &&
         a.owner == b.owner && a.buffer == b.buffer && a.bytes == b.bytes;
}

// Every allocation, release and relabelling of one step of the layer `make` builds (inside the ledger: its
// parameters count), on input `shape`: a training forward then backward with dx, or an evaluation forward. dry:
// sizes only, as `lowmem plan` runs it; else random parameters, input and output gradient.
template <class T>
std::vector<MemoryEvent> layer_step_events(const std::function<std::unique_ptr<Layer<T>>()>& make, const Shape& shape,
                                           bool dry, Accumulate mode, bool training) {
  MemoryLedger ledger;
  ledger.set_dry_run(dry);
  ledger.record_timeline(true);
  MemoryLedger::Scope scope(ledger);
  std::unique_ptr<Layer<T>> layer = make();
  Rng rng(1);
  if (!dry) randomize(*layer, rng);
  Tensor<T> x = dry ? Tensor<T>(shape, MemoryCategory::workspace) : random_tensor<T>(shape, rng);
  const RunContext ctx{training, mode};
  Tensor<T> y = layer->forward(std::move(x), ctx);
  if (training) {
    Tensor<T> dy = dry ? Tensor<T>(y.shape(), MemoryCategory::workspace) : random_tensor<T>(y.shape(), rng);
    y = Tensor<T>();
    const Tensor<T> dx = layer->backward(std::move(dy), ctx, true);
  }
  return ledger.events();
}

}  // namespace lowmem::testing
