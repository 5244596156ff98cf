#pragma once
// Technique "reversible" (Gomez et al.; Hascoet et al.): backprop by reconstruction. Each maximal run of
// invertible layers keeps only its last output; backward rebuilds every input of the run from it, layer by layer,
// in the run's own precision (Sequential with RunContext::reconstruct). Saved-activation memory then no longer
// grows with the number of invertible layers. Composes with checkpoint (which then recomputes the runs of
// non-invertible layers between them from their inputs), microbatch, mixed precision, approx_activations.
#include "io/config_reader.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

class Reversible : public Technique {
 public:
  static constexpr const char* name = "reversible";
  explicit Reversible(ConfigReader&) {}
  const char* type() const override { return name; }
  void check_model(const ModelFacts& model) const override;
  LOWMEM_TECHNIQUE_HOOKS
};

}  // namespace lowmem
