#include "techniques/sparsity.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstdio>
#include <limits>
#include <stdexcept>

#include "tensor/memory_ledger.hpp"

namespace lowmem {

index_t sparse_count(index_t numel, double density) {
  return std::clamp<index_t>(std::llround(density * static_cast<double>(numel)), 1, numel);
}

std::shared_ptr<const SparsePattern> dry_pattern(index_t rows, index_t cols, index_t nonzeros) {
  auto p = std::make_shared<SparsePattern>();
  p->rows = rows;
  p->cols = cols;
  p->row_start = Tensor<std::int32_t>(Shape{rows + 1}, MemoryCategory::weights);
  p->column = Tensor<std::int32_t>(Shape{nonzeros}, MemoryCategory::weights);
  return p;
}

std::shared_ptr<const SparsePattern> pattern_from_mask(index_t rows, index_t cols, const std::vector<bool>& keep) {
  if (static_cast<index_t>(keep.size()) != rows * cols) throw std::logic_error("pattern_from_mask: mask size");
  if (rows * cols > std::numeric_limits<std::int32_t>::max())
    throw std::logic_error("pattern_from_mask: a CSR weight of more than 2^31 entries");
  auto p = std::const_pointer_cast<SparsePattern>(
      dry_pattern(rows, cols, static_cast<index_t>(std::count(keep.begin(), keep.end(), true))));
  if (p->column.is_dry()) return p;
  std::int32_t entry = 0;
  for (index_t r = 0; r < rows; ++r) {
    p->row_start[r] = entry;
    for (index_t c = 0; c < cols; ++c)
      if (keep[static_cast<std::size_t>(r * cols + c)]) p->column[entry++] = static_cast<std::int32_t>(c);
  }
  p->row_start[rows] = entry;
  return p;
}

std::vector<bool> largest_magnitudes(const std::vector<double>& magnitudes, index_t count) {
  std::vector<index_t> order(magnitudes.size());
  std::iota(order.begin(), order.end(), index_t(0));
  const auto larger = [&](index_t a, index_t b) {
    const double ma = magnitudes[static_cast<std::size_t>(a)], mb = magnitudes[static_cast<std::size_t>(b)];
    return ma > mb || (ma == mb && a < b);
  };
  std::nth_element(order.begin(), order.begin() + count, order.end(), larger);
  std::vector<bool> keep(magnitudes.size(), false);
  for (index_t i = 0; i < count; ++i) keep[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = true;
  return keep;
}

namespace {

// For each entry of `to`, the old entry at its position (entry_at[r cols + c]), or -1.
std::vector<index_t> sources_at(const SparsePattern& to, const std::vector<index_t>& entry_at) {
  std::vector<index_t> sources(static_cast<std::size_t>(to.nonzeros()));
  for (index_t r = 0; r < to.rows; ++r)
    for (index_t e = to.row_start[r]; e < to.row_start[r + 1]; ++e)
      sources[static_cast<std::size_t>(e)] = entry_at[static_cast<std::size_t>(r * to.cols + to.column[e])];
  return sources;
}

}  // namespace

template <class T> void make_sparse(Param<T>& p, std::shared_ptr<const SparsePattern> pattern) {
  const Shape& shape = p.value.shape();
  if (!p.may_be_sparse || p.pattern || shape.rank() < 2 || pattern->rows != shape[0] ||
      pattern->rows * pattern->cols != shape.numel())
    throw std::logic_error("make_sparse: weight " + shape.str() + " cannot take this pattern");
  Tensor<T> values(Shape{pattern->nonzeros()}, MemoryCategory::weights);
  if (!values.is_dry() && !p.value.is_dry())
    for (index_t r = 0; r < pattern->rows; ++r)
      for (index_t e = pattern->row_start[r]; e < pattern->row_start[r + 1]; ++e)
        values[e] = p.value[r * pattern->cols + pattern->column[e]];
  p.dense_shape = shape;  // before value, whose shape `shape` refers to, is replaced
  p.value = values;
  p.grad = Tensor<T>(Shape{pattern->nonzeros()}, MemoryCategory::gradients);
  p.pattern = std::move(pattern);
}

template <class T>
std::vector<SparseWeight> sparse_weights(const std::vector<Param<T>*>& params, double density, double first,
                                         double last) {
  std::vector<std::size_t> weights;
  for (std::size_t k = 0; k < params.size(); ++k)
    if (params[k]->may_be_sparse) weights.push_back(k);
  std::vector<SparseWeight> chosen;
  for (std::size_t w = 0; w < weights.size(); ++w) {
    // A single weight layer is both the first and the last: sparse if either density is given.
    const double d = weights.size() == 1 ? std::max(first, last) : w == 0 ? first : w + 1 == weights.size() ? last
                                                                                                              : density;
    if (d > 0) chosen.push_back({weights[w], d});
  }
  return chosen;
}

DynamicSparsity::Result DynamicSparsity::reallocate(const std::vector<const SparsePattern*>& patterns,
                                                    const std::vector<std::vector<double>>& magnitudes) {
  const std::size_t layers = patterns.size();
  Result result;
  if (!patterns.empty() && patterns[0]->column.is_dry()) {  // a dry step: the same allocations, every count kept
    for (const SparsePattern* p : patterns) {
      result.patterns.push_back(dry_pattern(p->rows, p->cols, p->nonzeros()));
      result.sources.emplace_back(static_cast<std::size_t>(p->nonzeros()), -1);
    }
    return result;
  }
  // Prune: entries below the threshold go (each layer keeps at least its largest, so none dies).
  std::vector<std::vector<bool>> survives(layers);
  std::vector<index_t> survivors(layers, 0), capacity(layers);
  index_t nonzeros = 0;
  for (std::size_t l = 0; l < layers; ++l) {
    const std::vector<double>& m = magnitudes[l];
    survives[l].resize(m.size());
    for (std::size_t e = 0; e < m.size(); ++e) survivors[l] += (survives[l][e] = m[e] >= threshold_);
    if (survivors[l] == 0 && !m.empty()) {
      survives[l][static_cast<std::size_t>(std::max_element(m.begin(), m.end()) - m.begin())] = true;
      survivors[l] = 1;
    }
    nonzeros += static_cast<index_t>(m.size());
    result.pruned += static_cast<index_t>(m.size()) - survivors[l];
    capacity[l] = patterns[l]->rows * patterns[l]->cols - survivors[l];
  }
  // Adapt the threshold towards N_p pruned per reallocation.
  const double target = prune_fraction_ * static_cast<double>(nonzeros);
  if (static_cast<double>(result.pruned) < 0.9 * target) threshold_ *= 2;
  else if (static_cast<double>(result.pruned) > 1.1 * target) threshold_ = std::max(threshold_ / 2, 1e-300);
  // Regrow as many as were pruned, in proportion to the survivors (largest remainder), within each layer's room.
  const index_t all_survivors = std::accumulate(survivors.begin(), survivors.end(), index_t(0));
  std::vector<index_t> grow(layers, 0);
  index_t left = result.pruned;
  for (std::size_t l = 0; l < layers; ++l) {
    grow[l] = std::min(capacity[l], result.pruned * survivors[l] / std::max<index_t>(1, all_survivors));
    left -= grow[l];
  }
  for (std::size_t l = 0; left > 0; l = (l + 1) % layers) {  // the remainder, one at a time, in layer order
    if (grow[l] < capacity[l]) ++grow[l], --left;
  }
  // Positions: uniformly at random among each layer's zeros after pruning.
  for (std::size_t l = 0; l < layers; ++l) {
    const SparsePattern& old = *patterns[l];
    std::vector<index_t> survivor_at(static_cast<std::size_t>(old.rows * old.cols), -1);
    std::vector<bool> keep(survivor_at.size(), false);
    for (index_t r = 0; r < old.rows; ++r)
      for (index_t e = old.row_start[r]; e < old.row_start[r + 1]; ++e)
        if (survives[l][static_cast<std::size_t>(e)]) {
          const auto at = static_cast<std::size_t>(r * old.cols + old.column[e]);
          survivor_at[at] = e;
          keep[at] = true;
        }
    std::vector<index_t> zeros;
    for (std::size_t i = 0; i < keep.size(); ++i)
      if (!keep[i]) zeros.push_back(static_cast<index_t>(i));
    Rng rng(seed_, (std::uint64_t{1} << 62) + calls_ * layers + l);  // a stream family of its own
    for (index_t g = 0; g < grow[l]; ++g) {  // a partial Fisher-Yates shuffle picks grow[l] of them
      const auto pick = g + static_cast<index_t>(rng.below(static_cast<std::uint64_t>(zeros.size()) - g));
      std::swap(zeros[static_cast<std::size_t>(g)], zeros[static_cast<std::size_t>(pick)]);
      keep[static_cast<std::size_t>(zeros[static_cast<std::size_t>(g)])] = true;
    }
    result.patterns.push_back(pattern_from_mask(old.rows, old.cols, keep));
    result.sources.push_back(sources_at(*result.patterns.back(), survivor_at));  // regrown entries start at 0
  }
  ++calls_;
  return result;
}

Sparsity::Sparsity(ConfigReader& r) {
  constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
  density_ = r.required_in("density", 0.0, 1.0);
  if (density_ <= 0.0) r.fail("density", "expected a density in (0, 1] (the fraction of weights kept), got 0");
  // Read only when given: a default written into the resolved config would change every run id.
  for (auto [key, value] : {std::pair{"first_density", &first_density_}, std::pair{"last_density", &last_density_}})
    if (r.has(key)) {
      *value = r.get_in(key, 1.0, 0.0, 1.0);
      if (*value <= 0.0) r.fail(key, "expected a density in (0, 1] (leave the key out to keep the layer dense)");
    }
  method_ = r.get_choice("method", "magnitude", {"magnitude", "dsr"});
  if (method_ == "dsr") {
    interval_ = r.get_in<std::int64_t>("interval", 100, 1, i64_max);
    prune_fraction_ = r.get_in("prune_fraction", 0.02, 0.0, 1.0);
    threshold_ = r.get_in("threshold", 0.001, 0.0, std::numeric_limits<double>::infinity());
    if (threshold_ <= 0.0)
      r.fail("threshold", "expected an initial pruning threshold above 0 (it only ever doubles or halves)");
  }
}

std::string Sparsity::label() const {
  char density[32];
  std::snprintf(density, sizeof density, "%g", density_);
  std::string label = std::string(name) + "-" + method_ + "-" + density;
  for (auto [end, value] : {std::pair{"first", first_density_}, std::pair{"last", last_density_}})
    if (value > 0) {
      std::snprintf(density, sizeof density, "%g", value);
      label += std::string("-") + end + "-" + density;
    }
  return label;
}

void Sparsity::check_run(const RunFacts& run, const ConfigReader& reader) const {
  if (run.study != "train")
    reader.fail("technique", "sparsity changes the network itself (its weights are pruned), so it applies to the "
                             "train study only; the " + run.study + " study compares against a dense reference");
}

namespace {

template <class T> class SparsityHooks : public TechniqueHooks<T> {
 public:
  SparsityHooks(double density, double first_density, double last_density, bool dynamic, std::int64_t interval,
                double prune_fraction, double threshold, std::uint64_t seed)
      : density_(density), first_density_(first_density), last_density_(last_density), interval_(interval) {
    if (dynamic) dynamic_ = std::make_unique<DynamicSparsity>(prune_fraction, threshold, seed);
  }

  // The chosen weights keep the largest magnitudes of the f32 draw (drawn; in a dry step, which has no values,
  // patterns of the same sizes), and the draw is made sparse alike for mixed precision's masters to copy.
  void store_parameters(Sequential<T>& model, Sequential<float>* drawn, MemoryLedger& uncounted) override {
    const auto params = model.params();
    const auto chosen = sparse_weights(params, density_, first_density_, last_density_);
    if (chosen.empty())
      throw Error("technique sparsity: the model has fewer than 3 conv or linear layers, and the first and the last "
                  "stay dense, so no weight would be sparse (first_density or last_density make them sparse)");
    sparse_.clear();
    for (const auto& [k, density] : chosen) {
      sparse_.push_back(k);
      Param<T>& p = *params[k];
      const index_t rows = p.value.dim(0), cols = p.value.numel() / rows;
      const index_t keep = sparse_count(p.value.numel(), density);
      std::shared_ptr<const SparsePattern> pattern;
      if (drawn) {
        pattern = pattern_from_mask(rows, cols, largest_magnitudes(magnitudes(drawn->params()[k]->value), keep));
        MemoryLedger::Scope draw(uncounted);
        make_sparse(*drawn->params()[k], pattern);
      } else {
        pattern = dry_pattern(rows, cols, keep);
      }
      make_sparse(p, pattern);
    }
  }

  // Static patterns come again from the seed's f32 draw, and the weights' entries are the model's: nothing of its
  // own to save. DSR's moved patterns are not saved (Sparsity::cannot_save_in_flight refuses such runs).
  void archive(StateArchive&, const std::string&) override {
    if (dynamic_) throw Error("technique sparsity \"dsr\": a run in flight cannot be saved");
  }

  // DSR: prune and regrow (on the update's magnitudes: the masters under mixed precision), then move every tensor
  // that follows a weight's pattern onto the new one: the weight, its gradient, and what the update keeps (optimizer
  // state; masters and theirs). A dry step reallocates too, so that plan sees a reallocation step's transients.
  void after_step(Sequential<T>& model, ParameterUpdate<T>& update, bool dry) override {
    if (!dynamic_ || (++steps_ % interval_ != 0 && !dry)) return;  // static patterns: fixed from the f32 draw
    const auto params = model.params();
    std::vector<const SparsePattern*> patterns;
    std::vector<std::vector<double>> sizes;
    for (std::size_t k : sparse_) {
      patterns.push_back(params[k]->pattern.get());
      sizes.push_back(update.magnitudes(k));
    }
    const DynamicSparsity::Result r = dynamic_->reallocate(patterns, sizes);
    for (std::size_t l = 0; l < sparse_.size(); ++l) {
      const std::size_t k = sparse_[l];
      remap_entries(params[k]->value, r.sources[l]);
      remap_entries(params[k]->grad, r.sources[l]);
      params[k]->pattern = r.patterns[l];
      update.remap(k, r.sources[l]);
    }
  }

 private:
  double density_, first_density_, last_density_;
  std::int64_t interval_, steps_ = 0;
  std::unique_ptr<DynamicSparsity> dynamic_;
  std::vector<std::size_t> sparse_;  // positions in the model's params()
};

}  // namespace

template <class T> std::unique_ptr<TechniqueHooks<T>> Sparsity::hooks_for(const TechniqueServices<T>& s) const {
  return std::make_unique<SparsityHooks<T>>(density_, first_density_, last_density_, method_ == "dsr", interval_,
                                            prune_fraction_, threshold_, s.seed);
}

LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Sparsity)

#define LOWMEM_INSTANTIATE_SPARSITY(T)                                                   \
  template void make_sparse<T>(Param<T>&, std::shared_ptr<const SparsePattern>);       \
  template std::vector<SparseWeight> sparse_weights<T>(const std::vector<Param<T>*>&, double, double, double);
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_SPARSITY)

}  // namespace lowmem
