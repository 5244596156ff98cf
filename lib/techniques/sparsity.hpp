#pragma once
// Sparse weights (technique "sparsity": Sohoni et al.'s first technique, after Mostafa & Wang 2019). A sparse
// weight is a matrix in CSR: rows are output channels (or features), columns the rest of PyTorch's layout
// flattened (Cin k k for a conv). The parameter's value and gradient tensors hold only the nonzeros, in CSR order,
// and the optimizer's state tensors have the same length, so all of them follow the one pattern. The pattern's
// column indices and row starts (int32) are charged to the ledger as weights. Bytes at nnz nonzeros, b per value:
//   weights nnz (b + 4) + (rows + 1) 4,   gradient nnz b,   each optimizer state tensor nnz b.
// Methods:
//   magnitude  every sparse layer keeps the `density` fraction of its initial weights of largest magnitude,
//              chosen once on the f32 draw of the seed (so every precision gets the same pattern), and keeps that
//              pattern for the whole run.
//   dsr        dynamic sparse reparameterization: starts as magnitude; every `interval` optimizer steps it prunes
//              the nonzeros below a global threshold H and regrows as many at random zero positions (value 0),
//              shared among layers in proportion to their surviving weights. H starts at `threshold` (0.001) and adapts to
//              prune about N_p = prune_fraction nnz per reallocation: it doubles when fewer than 0.9 N_p were
//              pruned and halves when more than 1.1 N_p. The total count of nonzeros never changes.
// The first and the last weight layers stay dense, as in Mostafa & Wang's networks, unless `first_density` or
// `last_density` makes them sparse too (at their own density; DSR then reallocates over them as well). Applies to
// the train study only (the others compare against a dense reference).
#include <cstdint>
#include <memory>
#include <vector>

#include "io/config_reader.hpp"
#include "layers/layer.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

// Nonzeros a layer of `numel` weights keeps at `density`: round(density numel), at least 1.
index_t sparse_count(index_t numel, double density);
// The pattern of the entries where keep[i] is true (row-major over rows x cols), charged as weights. In a dry run
// (tensors without values): a pattern of `count(keep)` entries without indices.
std::shared_ptr<const SparsePattern> pattern_from_mask(index_t rows, index_t cols, const std::vector<bool>& keep);
std::shared_ptr<const SparsePattern> dry_pattern(index_t rows, index_t cols, index_t nonzeros);
// The `count` entries of largest magnitude, ties to the lower index.
std::vector<bool> largest_magnitudes(const std::vector<double>& magnitudes, index_t count);

// Makes a dense weight (rank >= 2) sparse: value keeps the pattern's entries in CSR order, grad becomes that many
// zeros, both charged to the active ledger.
template <class T> void make_sparse(Param<T>& p, std::shared_ptr<const SparsePattern> pattern);

// The weights that technique sparsity makes sparse, as positions in a model's parameter list with their density:
// the weights that support it (conv, linear) at `density`, the first and the last at `first` and `last` (0: they
// stay dense).
struct SparseWeight {
  std::size_t index;
  double density;
};
template <class T>
std::vector<SparseWeight> sparse_weights(const std::vector<Param<T>*>& params, double density, double first,
                                         double last);

// DSR's reallocation, over the sparse layers of one model.
class DynamicSparsity {
 public:
  DynamicSparsity(double prune_fraction, double threshold, std::uint64_t seed)
      : prune_fraction_(prune_fraction), seed_(seed), threshold_(threshold) {}
  struct Result {
    std::vector<std::shared_ptr<const SparsePattern>> patterns;  // per layer
    std::vector<std::vector<index_t>> sources;                   // per layer, for remap_entries
    index_t pruned = 0;
  };
  // magnitudes[l]: |w| of layer l's entries, in CSR order. Call with the same history for the same results.
  // Dry patterns (a dry step): new patterns of the same sizes, allocated as a real reallocation allocates them.
  Result reallocate(const std::vector<const SparsePattern*>& patterns, const std::vector<std::vector<double>>& magnitudes);
  double threshold() const { return threshold_; }

 private:
  double prune_fraction_;
  std::uint64_t seed_;
  double threshold_;
  std::uint64_t calls_ = 0;
};

class Sparsity : public Technique {
 public:
  static constexpr const char* name = "sparsity";
  explicit Sparsity(ConfigReader& r);
  const char* type() const override { return name; }
  std::string label() const override;
  double density() const { return density_; }
  bool needs_f32_draw() const override { return true; }
  void check_run(const RunFacts& run, const ConfigReader& reader) const override;
  std::string cannot_save_in_flight() const override {
    return method_ == "dsr" ? "sparsity \"dsr\" moves its patterns while training, which a saved state does not "
                              "hold yet (\"magnitude\" can be saved)"
                            : "";
  }
  LOWMEM_TECHNIQUE_HOOKS

 private:
  double density_ = 1;           // fraction of each sparse layer's weights kept, in (0, 1]
  double first_density_ = 0;     // the first weight layer's, and the last's; 0: dense (the default)
  double last_density_ = 0;
  std::string method_;           // magnitude | dsr
  std::int64_t interval_ = 100;  // dsr: optimizer steps between reallocations
  double prune_fraction_ = 0.02; // dsr: N_p, the nonzeros pruned per reallocation, as a fraction
  double threshold_ = 0.001;     // dsr: the initial pruning threshold H
};

}  // namespace lowmem
