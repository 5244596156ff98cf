#pragma once
// The contract every memory technique obeys. A technique is one room: lib/techniques/<type>.{hpp,cpp} and one line
// in registry.cpp. It is parsed from its own JSON object, checks what it cannot do, and at run time is asked by the
// trainer at fixed hook points; layers never know it exists.
//
// Parsed (class Technique, one object per entry of the config's "technique" list):
//   constructor(reader)    reads its own object; every key it reads is valid, any other key an error (the reader
//                          records defaults into the effective config).
//   label()                how results name it: "checkpoint-revolve-2".
//   check_composition      refuses the techniques it cannot compose with (the rules live here, with the
//                          techniques, not in the runner); check_run the runs it cannot do (study, batch,
//                          precision); check_model the models (no invertible layer for reversible, ...).
//   microbatches(), model_precision(), needs_f32_draw(), fitted_by_dry_steps(): what it changes about the run
//                          before any hook exists (slices per step; the precision the model computes in).
//
// Hooks (class TechniqueHooks<T>, made per run for the model's precision T; every hook has a do-nothing default):
//   configure(ctx)         what layers keep in a training forward (reversible: rebuild instead of keeping).
//   store_parameters       how parameters are stored (sparsity: CSR), given the f32 draw of the same seed.
//   update                 how gradients become weights (mixed precision: loss scale, f32 masters); default: the
//                          config's optimizer on the model's parameters (PlainUpdate). At most one technique.
//   chain                  how the model's chain runs forward and backward (checkpoint: a schedule of
//                          snapshots and recomputations); default: store everything. At most one technique.
//                          A technique that fits its schedule to memory gets the run's dry step (services).
//   save_hook              how a kept activation is stored and given back (approx_activations: K bits).
//   after_step             after an optimizer step (sparsity dsr: prune and regrow).
// microbatching is the step's slice count (Technique::microbatches), which the trainer's loop runs.
//
// Memory: a technique declares its memory by allocating it. Every buffer goes through the ledger, and `lowmem plan`
// runs the same hooks in a dry step (tensors with sizes, no values), so what plan predicts is exactly what the
// hooks allocate in a run: a new technique needs no separate memory model.
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/sequential.hpp"

namespace lowmem {

class StateArchive;  // tensor/state_archive.hpp
class ConfigReader;   // io/config_reader.hpp
class MemoryLedger;   // tensor/memory_ledger.hpp

class Technique;
using TechniqueList = std::vector<std::shared_ptr<const Technique>>;
template <class T> class TechniqueHooks;
template <class T> struct TechniqueServices;

// What a technique may check a run against (the run config itself lives above, in lib/training).
struct RunFacts {
  std::string study;  // train | gradient | reconstruction
  index_t batch = 0;  // train.batch
  Precision precision = Precision::f32;
  Accumulate accumulate = Accumulate::f32;
};
// The model as a technique may check it.
struct ModelFacts {
  std::string arch;
  std::size_t layers = 0;
  bool any_invertible = false;
  bool any_recurrent = false;  // an lstm (technique checkpoint over time)
};

class Technique {
 public:
  virtual ~Technique() = default;
  virtual const char* type() const = 0;
  virtual std::string label() const { return type(); }

  virtual index_t microbatches() const { return 1; }
  virtual std::optional<Precision> model_precision() const { return std::nullopt; }
  // The f32 network of the run's seed is drawn (uncounted) for store_parameters and update to start from.
  virtual bool needs_f32_draw() const { return false; }
  // Its hooks run dry steps when made (checkpoint budget): validating a run then means making them.
  virtual bool fitted_by_dry_steps() const { return false; }
  // Why a run with this technique cannot be saved in flight (train.checkpoint_every), or "" if it can.
  virtual std::string cannot_save_in_flight() const { return ""; }

  // Throw lowmem::Error through run.fail(key, ...) on the run's top-level reader ("technique", "precision").
  virtual void check_composition(const TechniqueList& /*all*/, const ConfigReader& /*run*/) const {}
  virtual void check_run(const RunFacts& /*run*/, const ConfigReader& /*run*/) const {}
  // Throws lowmem::Error("/technique: ...").
  virtual void check_model(const ModelFacts& /*model*/) const {}

  template <class T> std::unique_ptr<TechniqueHooks<T>> hooks(const TechniqueServices<T>& s) const {
    return make_hooks(s);
  }

 protected:
  // nullptr: no run-time hooks. Techniques override all six with LOWMEM_TECHNIQUE_HOOKS.
#define LOWMEM_NO_HOOKS_FOR(T) \
  virtual std::unique_ptr<TechniqueHooks<T>> make_hooks(const TechniqueServices<T>&) const { return nullptr; }
  LOWMEM_FOR_EACH_PRECISION(LOWMEM_NO_HOOKS_FOR)
#undef LOWMEM_NO_HOOKS_FOR
};

// In a technique's class: its hooks are hooks_for<T>, one template defined in its .cpp and instantiated there with
// LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Class). The macro leaves the class's access public.
#define LOWMEM_TECHNIQUE_HOOKS_FOR(T) \
  std::unique_ptr<TechniqueHooks<T>> make_hooks(const TechniqueServices<T>& s) const override { return hooks_for(s); }
#define LOWMEM_TECHNIQUE_HOOKS                                                                  \
 public:                                                                                        \
  template <class T> std::unique_ptr<TechniqueHooks<T>> hooks_for(const TechniqueServices<T>&) const; \
                                                                                                \
 protected:                                                                                     \
  LOWMEM_FOR_EACH_PRECISION(LOWMEM_TECHNIQUE_HOOKS_FOR)                                         \
                                                                                                \
 public:
#define LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Class)                                                              \
  template std::unique_ptr<TechniqueHooks<float>> Class::hooks_for(const TechniqueServices<float>&) const;     \
  template std::unique_ptr<TechniqueHooks<double>> Class::hooks_for(const TechniqueServices<double>&) const;   \
  template std::unique_ptr<TechniqueHooks<f16>> Class::hooks_for(const TechniqueServices<f16>&) const;         \
  template std::unique_ptr<TechniqueHooks<bf16>> Class::hooks_for(const TechniqueServices<bf16>&) const;       \
  template std::unique_ptr<TechniqueHooks<mp>> Class::hooks_for(const TechniqueServices<mp>&) const;           \
  template std::unique_ptr<TechniqueHooks<dd>> Class::hooks_for(const TechniqueServices<dd>&) const;

// The first technique of the list of type C, or nullptr.
template <class C> const C* find_technique(const TechniqueList& all) {
  for (const auto& t : all)
    if (auto* c = dynamic_cast<const C*>(t.get())) return c;
  return nullptr;
}

// An optimizer as techniques see it (lib/training/optimizer.hpp implements it): one update of every parameter
// from its gradient, and the state tensors of parameter k, aligned with its value.
template <class U> class OptimizerBase {
 public:
  virtual ~OptimizerBase() = default;
  virtual void step(double lr) = 0;
  virtual std::vector<Tensor<U>*> state(std::size_t k) = 0;
  // Saves or loads everything a later step depends on (state tensors, the step count) under `prefix`.
  virtual void archive(StateArchive& a, const std::string& prefix) = 0;
};
template <class U> using MakeOptimizer = std::function<std::unique_ptr<OptimizerBase<U>>(std::vector<Param<U>*>)>;

// How gradients become weights: the optimizer on the model's parameters (PlainUpdate), or a technique's own.
template <class T> class ParameterUpdate {
 public:
  virtual ~ParameterUpdate() = default;
  // One step from the gradients; false if it was skipped (an overflowed gradient).
  virtual bool step(double lr) = 0;
  // The step's loss was not finite: no step.
  virtual void skip() {}
  // The factor the loss's gradient is multiplied by before backward (loss scaling).
  virtual double loss_scale() const { return 1; }
  virtual void set_loss_scale(double) {}
  virtual std::int64_t skipped_steps() const { return 0; }
  // Figures this update reports with the run (mixed precision: skipped steps, final loss scale); each becomes a
  // run attribute and a /summary column of the results file.
  virtual std::map<std::string, double> report() const { return {}; }
  // For techniques that change parameter storage while training (sparsity dsr); an update that keeps tensors
  // aligned with the parameters implements both. |w| of parameter k as pruning sees it (mixed precision: the f32
  // master), and: parameter k moved to a new sparsity pattern, so move every tensor kept aligned with it.
  virtual std::vector<double> magnitudes(std::size_t k) const;
  virtual void remap(std::size_t k, const std::vector<index_t>& sources);
  // Saves or loads everything a later step depends on (optimizer state; masters and loss scaler) under `prefix`.
  virtual void archive(StateArchive& a, const std::string& prefix) = 0;
};

template <class T> class PlainUpdate : public ParameterUpdate<T> {
 public:
  PlainUpdate(Sequential<T>& model, const MakeOptimizer<T>& make) : params_(model.params()), optimizer_(make(params_)) {}
  bool step(double lr) override {
    optimizer_->step(lr);
    return true;
  }
  std::vector<double> magnitudes(std::size_t k) const override;
  void remap(std::size_t k, const std::vector<index_t>& sources) override;
  void archive(StateArchive& a, const std::string& prefix) override { optimizer_->archive(a, prefix + "/optimizer"); }

 private:
  std::vector<Param<T>*> params_;
  std::unique_ptr<OptimizerBase<T>> optimizer_;
};

// How the model's chain runs forward and backward; this default keeps what every layer keeps (store_all).
template <class T> class ChainRunner {
 public:
  virtual ~ChainRunner() = default;
  virtual Tensor<T> forward(Sequential<T>& chain, const Tensor<T>& x, const RunContext& ctx) {
    return chain.forward(x, ctx);
  }
  // dy by value: the caller's buffer is not held through backward. Returns dL/dx0 if asked.
  virtual Tensor<T> backward(Sequential<T>& chain, Tensor<T> dy, const RunContext& ctx, bool want_input_grad = false) {
    return chain.backward(std::move(dy), ctx, want_input_grad);
  }
  // Layer evaluations of the last step beyond one per layer.
  virtual std::int64_t recomputed(const Sequential<T>& chain) const { return chain.recomputed(); }
};

// Makes the runner of a model's chain (a schedule a technique is trying out).
template <class T> using MakeChainRunner = std::function<std::unique_ptr<ChainRunner<T>>()>;

// The model's chain as a schedule sees it, per layer i: the cost of one forward evaluation for a microbatch
// (flops), the bytes of its input x_i, and the bytes a training-mode forward of it keeps for backward.
struct ChainCosts {
  std::vector<double> flops;
  std::vector<std::size_t> input_bytes, record_bytes;
};

// What the trainer gives a technique's hooks.
template <class T> struct TechniqueServices {
  TechniqueList all;                   // the run's techniques, for composition at run time
  std::uint64_t seed = 0;              // the run's seed
  MakeOptimizer<T> optimizer;          // the config's optimizer, over parameters in T ...
  MakeOptimizer<float> f32_optimizer;  // ... and over f32 parameters (master weights)
  // For techniques that fit themselves to memory (checkpoint budget): the chain's costs, and the peak of a whole
  // dry step of this run with its chain run by what `chain` makes (every other technique as configured).
  std::function<ChainCosts()> chain_costs;
  std::function<std::size_t(const MakeChainRunner<T>& chain)> peak_with;
};

// The trainer builds a run in this order: every technique's hooks (config order; no allocation here: the ledger
// is not active yet), configure (each), the model, the f32 draw (if a technique needs_f32_draw), store_parameters
// (each), update, chain and save_hook (at most one technique provides each; two are an error), then the peaks
// are reset: setup's one-time buffers are not a run's memory.
template <class T> class TechniqueHooks {
 public:
  virtual ~TechniqueHooks() = default;
  virtual void configure(RunContext& /*train*/) {}
  // drawn: the f32 network of the same seed, if the technique said needs_f32_draw(), and nullptr in a dry step
  // (a dry step has sizes only); changes to it are charged to `uncounted`.
  virtual void store_parameters(Sequential<T>& /*model*/, Sequential<float>* /*drawn*/, MemoryLedger& /*uncounted*/) {}
  virtual std::unique_ptr<ParameterUpdate<T>> update(Sequential<T>& /*model*/, Sequential<float>* /*drawn*/) {
    return nullptr;
  }
  virtual std::unique_ptr<ChainRunner<T>> chain(Sequential<T>& /*model*/) { return nullptr; }
  // Active while the chain runs forward and backward. It packs the Saved<T> of the model's type (rank >= 2);
  // its forward_output is applied by Sequential::forward between layers (not by a ChainRunner of its own).
  virtual const SaveHook<T>* save_hook() const { return nullptr; }
  // After a step that updated the weights (not after a skipped one); dry: a dry step (do what a real step
  // allocates, whatever the technique's own timing).
  virtual void after_step(Sequential<T>& /*model*/, ParameterUpdate<T>& /*update*/, bool /*dry*/) {}
  // Saves or loads the technique's own state that later steps depend on (a random stream's position), under
  // `prefix`, for a run saved in flight (train.checkpoint_every). Most techniques have none.
  virtual void archive(StateArchive& /*a*/, const std::string& /*prefix*/) {}
};

}  // namespace lowmem
