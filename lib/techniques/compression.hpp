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
// A policy is active for a lexical scope (CompressionScope), as the memory ledger is: Saved<T>::keep compresses
// while one is active.
#include <cstdint>
#include <string>

#include "tensor/tensor.hpp"

namespace lowmem {

struct CompressionPolicy {
  enum Method { blpa, actnn, naive } method = blpa;
  int bits = 8;
  std::uint64_t seed = 0;        // actnn's stochastic rounding
  mutable std::uint64_t calls = 0;  // one random stream per compressed tensor, in call order
};

const CompressionPolicy* active_compression();
class CompressionScope {
 public:
  explicit CompressionScope(const CompressionPolicy* policy);  // nullptr: none
  ~CompressionScope();
  CompressionScope(const CompressionScope&) = delete;
  CompressionScope& operator=(const CompressionScope&) = delete;

 private:
  const CompressionPolicy* previous_;
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

}  // namespace lowmem
