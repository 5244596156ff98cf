#pragma once
// Technique "microbatch" (Sohoni et al.): each optimizer step runs the batch as `count` slices in turn, each
// forward and backward adding into the gradients, the loss of each divided by the whole batch's size, so that
// losses and gradients add up to the whole batch's. Activations are held for one slice at a time. Layers that use
// batch statistics (batch norm) see each slice's instead; batch-independent ones (group, layer, instance norm)
// give the full-batch gradient to rounding. The trainer's step loop runs the slices (Technique::microbatches).
#include "io/config_reader.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

class Microbatch : public Technique {
 public:
  static constexpr const char* name = "microbatch";
  explicit Microbatch(ConfigReader& r);
  const char* type() const override { return name; }
  std::string label() const override { return std::string(name) + "-" + std::to_string(count_); }
  index_t microbatches() const override { return count_; }
  void check_run(const RunFacts& run, const ConfigReader& reader) const override;

 private:
  index_t count_ = 1;
};

// Rows [first, first + count) of a batch (N, ...): a view of its buffer where the slice starts 64-byte aligned,
// else a copy (workspace).
template <class T> Tensor<T> batch_rows(const Tensor<T>& x, index_t first, index_t count);

}  // namespace lowmem
