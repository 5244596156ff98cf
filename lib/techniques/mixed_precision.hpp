#pragma once
// Technique "mixed_precision" (Micikevicius et al.): the model computes and stores in 16 bits ("compute": f16 or
// bf16); f32 master weights and their optimizer state take the update, and the model's weights are their rounding.
// The loss is multiplied by a scale before backward so that small gradients survive in 16 bits: fixed
// ("loss_scale": S >= 1) or dynamic, as PyTorch's GradScaler (start 2^16; an overflowed gradient skips the step and
// halves the scale; 2000 steps in a row without one double it). Masters start from the f32 draw of the seed, so
// every precision starts from the same weights. Memory: masters (weights, gradients) and their optimizer state,
// charged to the ledger as such.
#include "io/config_reader.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

class MixedPrecision : public Technique {
 public:
  static constexpr const char* name = "mixed_precision";
  explicit MixedPrecision(ConfigReader& r);
  const char* type() const override { return name; }
  std::string label() const override;
  std::optional<Precision> model_precision() const override { return parse_precision(compute_); }
  bool needs_f32_draw() const override { return true; }
  void check_run(const RunFacts& run, const ConfigReader& reader) const override;
  LOWMEM_TECHNIQUE_HOOKS

 private:
  std::string compute_;    // f16 | bf16
  double loss_scale_ = 0;  // fixed, or 0: dynamic
};

}  // namespace lowmem
