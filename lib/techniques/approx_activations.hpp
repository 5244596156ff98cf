#pragma once
// Approximate activations (technique "approx_activations"): what layers keep for backward is stored in K bits
// (K in {2, 4, 8}) and decompressed when backward needs it. The forward pass itself stays exact; ReLU keeps an
// exact 1-bit mask instead of its output. Quantizers:
//   blpa   Chakrabarti & Moseley's: per channel, 2^K levels 6 sigma_c / 2^K apart covering the channel's
//          mean +- 3 sigma_c, aligned so that 0 is a level (a ReLU's zeros stay exactly 0; its mask, which the
//          paper's alignment protects, is kept exactly as bits here), deterministic nearest rounding.
//   actnn  ActNN's: per group of 256 consecutive values, 2^K levels between the group's min and max, stochastic
//          rounding (unbiased; seeded, so runs repeat bit for bit).
//   naive  the baseline that approximates inside ordinary backprop: the actnn quantizer with nearest rounding,
//          and every layer's output of the model's chain is replaced by its K-bit version in the forward pass too,
//          so errors accumulate from layer to layer.
// Checkpoint snapshots and reversible runs' outputs stay exact (they open a scope without a hook). The technique
// works through one hook (layers/saved.hpp): CompressionHook packs what Saved<T> keeps.
// Composes with every technique; "naive" not with checkpoint, whose recomputations would not repeat its
// approximated forward pass.
#include <cstdint>
#include <string>

#include "io/config_reader.hpp"
#include "techniques/technique.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

struct CompressionPolicy {
  enum Method { blpa, actnn, naive } method = blpa;
  int bits = 8;
  std::uint64_t seed = 0;        // actnn's stochastic rounding
  mutable std::uint64_t calls = 0;  // one random stream per compressed tensor, in call order
};

// A tensor in K bits: packed codes (saved activations in the ledger) and per-channel or per-group offsets and
// steps (float).
struct CompressedTensor {
  Shape shape;
  int bits = 8;
  CompressionPolicy::Method method = CompressionPolicy::blpa;
  Tensor<std::uint8_t> codes;
  Tensor<float> offset, step;
};

template <class T> CompressedTensor compress(const Tensor<T>& t, const CompressionPolicy& policy);
template <class T> Tensor<T> decompress(const CompressedTensor& c);  // charged as workspace

// The save hook of a policy: what layers keep is compressed; under "naive" the chain's outputs are replaced by
// their K-bit versions in the forward pass too.
template <class T> class CompressionHook : public SaveHook<T> {
 public:
  explicit CompressionHook(const CompressionPolicy& policy) : policy_(policy) {}
  std::shared_ptr<const PackedTensor<T>> pack(const Tensor<T>& t) const override;
  Tensor<T> forward_output(Tensor<T> y) const override;
  std::uint64_t& calls() const { return policy_.calls; }  // the random streams used so far (actnn)

 private:
  CompressionPolicy policy_;
};

class ApproxActivations : public Technique {
 public:
  static constexpr const char* name = "approx_activations";
  explicit ApproxActivations(ConfigReader& r);
  const char* type() const override { return name; }
  std::string label() const override;
  void check_composition(const TechniqueList& all, const ConfigReader& run) const override;
  LOWMEM_TECHNIQUE_HOOKS

 private:
  CompressionPolicy::Method method_ = CompressionPolicy::blpa;
  std::string method_name_;
  int bits_ = 8;
};

}  // namespace lowmem
