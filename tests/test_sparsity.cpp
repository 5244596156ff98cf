// Technique sparsity: the ledger counts a sparse weight in CSR bytes, a sparse layer computes exactly what the
// dense layer with zeros computes, magnitude pruning keeps the largest weights, DSR keeps the count of nonzeros and
// moves every tensor that follows a pattern, and bad input is refused before any work.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "layers/conv2d.hpp"
#include "layers/linear.hpp"
#include "techniques/sparsity.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

nlohmann::json config_with(const nlohmann::json& technique, const nlohmann::json& optimizer) {
  // (no batch norm: its running statistics are weights-category buffers that are not parameters)
  return {{"model", {{"arch", "cnn"}, {"channels", {6, 6, 6}}, {"batchnorm", false}, {"input", {1, 8, 8}}, {"classes", 4}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"classes", 4}}}}},
          {"train", {{"batch", 8}, {"optimizer", optimizer}}}};
}

const nlohmann::json momentum = {{"lr", 0.05}, {"momentum", 0.9}};

TEST(Sparsity, LedgerCountsSparseWeightsInCsrBytes) {
  MemoryLedger ledger;
  MemoryLedger::Scope scope(ledger);
  Linear<float> linear("linear", 7, 4, true);
  std::vector<bool> keep(28, false);
  for (int i : {0, 3, 6, 7, 8, 13, 20, 21, 22, 27}) keep[static_cast<std::size_t>(i)] = true;  // 10 of 28
  make_sparse(*linear.params()[0], pattern_from_mask(4, 7, keep));
  // bias 4 x 4 B; values 10 x 4 B; column indices 10 x 4 B; row starts (4 + 1) x 4 B.
  EXPECT_EQ(ledger.current(MemoryCategory::weights), 16u + 40u + 40u + 20u);
  EXPECT_EQ(ledger.current(MemoryCategory::gradients), 16u + 40u);
}

// Every buffer of a trainer with sparse weights, from the CSR formula, against what the ledger counts.
// densities: of the weight layers in model order (0: dense). The default: the first and the last stay dense.
template <class T>
void expect_csr_accounting(const nlohmann::json& config, std::size_t state_tensors, bool masters,
                           std::vector<double> densities = {}) {
  const RunConfig run = parse_run_config(config, "test");
  MemoryLedger ledger;
  Trainer<T> trainer(run, ledger);
  if (densities.empty()) {  // 3 convs and a linear layer
    const double d = find_technique<Sparsity>(run.techniques)->density();
    densities = {0, d, d, 0};
  }
  std::size_t weights = 0, gradients = 0, values = 0, weight_layer = 0;
  for (Param<T>* p : trainer.model().params()) {
    const auto n = static_cast<std::size_t>(p->value.numel());
    values += n;
    weights += n * sizeof(T);
    gradients += n * sizeof(T);
    if (!p->may_be_sparse) continue;  // a bias
    ASSERT_LT(weight_layer, densities.size());
    const double density = densities[weight_layer++];
    const SparsePattern* s = p->pattern.get();
    ASSERT_EQ(s != nullptr, density > 0) << "weight layer " << weight_layer - 1;
    if (s) {
      EXPECT_EQ(p->value.numel(), sparse_count(s->rows * s->cols, density));
      weights += n * 4 + static_cast<std::size_t>(s->rows + 1) * 4;
    }
  }
  EXPECT_EQ(weight_layer, densities.size());
  const std::size_t wide = masters ? sizeof(float) : sizeof(T);
  if (masters) weights += values * sizeof(float), gradients += values * sizeof(float);
  EXPECT_EQ(ledger.current(MemoryCategory::weights), weights);
  EXPECT_EQ(ledger.current(MemoryCategory::gradients), gradients);
  EXPECT_EQ(ledger.current(MemoryCategory::optimizer_state), state_tensors * values * wide);
}

TEST(Sparsity, TrainerChargesCsrWeightsGradientsAndOptimizerState) {
  const nlohmann::json sparse = {{"type", "sparsity"}, {"density", 0.25}};
  expect_csr_accounting<float>(config_with(sparse, momentum), 1, false);
  expect_csr_accounting<float>(config_with(sparse, {{"type", "adam"}, {"lr", 0.001}}), 2, false);
  nlohmann::json mixed = config_with({sparse, {{"type", "mixed_precision"}, {"compute", "f16"}}}, momentum);
  expect_csr_accounting<f16>(mixed, 1, true);
}

// first_density and last_density make the end layers sparse at their own density; the middle keep `density`.
TEST(Sparsity, EndLayersAreSparseAtTheirOwnDensityWhenAsked) {
  const nlohmann::json ends = {{"type", "sparsity"}, {"density", 0.25}, {"first_density", 0.5}, {"last_density", 0.1}};
  expect_csr_accounting<float>(config_with(ends, momentum), 1, false, {0.5, 0.25, 0.25, 0.1});
  const nlohmann::json last = {{"type", "sparsity"}, {"density", 0.25}, {"last_density", 0.1}};
  expect_csr_accounting<f16>(config_with({last, {{"type", "mixed_precision"}, {"compute", "f16"}}}, momentum), 1,
                             true, {0, 0.25, 0.25, 0.1});
  // A model of two weight layers has nothing to make sparse unless an end is asked for.
  nlohmann::json two = config_with(last, momentum);
  two["model"]["channels"] = {6};
  expect_csr_accounting<float>(two, 1, false, {0, 0.1});
  // A single weight layer is the first and the last: either density makes it sparse.
  nlohmann::json one = config_with(last, momentum);
  one["model"] = {{"input", {1, 8, 8}}, {"classes", 4}, {"layers", {{{"type", "flatten"}}, {{"type", "linear"}, {"out", 4}}}}};
  expect_csr_accounting<float>(one, 1, false, {0.1});
}

// A layer with a sparse weight against the same layer with a dense weight that is 0 off the pattern: outputs,
// input gradients and bias gradients agree, and the sparse weight gradient is the dense one at the pattern.
template <class L, class... Args> void expect_sparse_equals_dense(Shape input, Args... args) {
  L dense("dense", args...), sparse("sparse", args...);
  Rng rng(3);
  dense.initialize(rng);
  Param<double>&dw = *dense.params()[0], &sw = *sparse.params()[0];
  const index_t rows = dw.value.dim(0), cols = dw.value.numel() / rows;
  std::vector<bool> keep(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = rng.uniform() < 0.3;
  for (std::size_t i = 0; i < keep.size(); ++i)
    if (!keep[i]) dw.value[static_cast<index_t>(i)] = 0;
  for (std::size_t k = 1; k < dense.params().size(); ++k) sparse.params()[k]->value = dense.params()[k]->value.clone(MemoryCategory::weights);
  sw.value = dw.value.clone(MemoryCategory::weights);
  make_sparse(sw, pattern_from_mask(rows, cols, keep));
  Tensor<double> x(input, MemoryCategory::workspace);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  const RunContext ctx;
  const Tensor<double> yd = dense.forward(x, ctx), ys = sparse.forward(x, ctx);
  Tensor<double> dy(yd.shape(), MemoryCategory::workspace);
  for (index_t i = 0; i < dy.numel(); ++i) dy[i] = rng.normal();
  const Tensor<double> dxd = dense.backward(dy, ctx, true), dxs = sparse.backward(dy, ctx, true);
  for (index_t i = 0; i < yd.numel(); ++i) EXPECT_NEAR(ys[i], yd[i], 1e-13) << i;
  for (index_t i = 0; i < dxd.numel(); ++i) EXPECT_NEAR(dxs[i], dxd[i], 1e-13) << i;
  for (std::size_t k = 1; k < dense.params().size(); ++k)
    for (index_t i = 0; i < dense.params()[k]->grad.numel(); ++i)
      EXPECT_NEAR(sparse.params()[k]->grad[i], dense.params()[k]->grad[i], 1e-12);
  const SparsePattern& p = *sw.pattern;
  ASSERT_GT(p.nonzeros(), 0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t e = p.row_start[r]; e < p.row_start[r + 1]; ++e)
      EXPECT_NEAR(sw.grad[e], dw.grad[r * cols + p.column[e]], 1e-12) << r << " " << p.column[e];
}

TEST(Sparsity, SparseLayerComputesWhatTheDenseLayerWithZerosComputes) {
  expect_sparse_equals_dense<Conv2d<double>>(Shape{3, 4, 6, 6}, Conv2dSpec{4, 5, 3, 1, 1, true});
  expect_sparse_equals_dense<Conv2d<double>>(Shape{2, 3, 7, 7}, Conv2dSpec{3, 4, 3, 2, 1, false});
  expect_sparse_equals_dense<Linear<double>>(Shape{5, 9}, index_t{9}, index_t{6}, true);
}

TEST(Sparsity, MagnitudePruningKeepsTheLargestWeightsTiesToTheLowerIndex) {
  EXPECT_EQ(largest_magnitudes({3, 1, 5, 1, 2}, 3), (std::vector<bool>{true, false, true, false, true}));
  EXPECT_EQ(largest_magnitudes({1, 1, 1}, 2), (std::vector<bool>{true, true, false}));
  EXPECT_EQ(sparse_count(100, 0.25), 25);
  EXPECT_EQ(sparse_count(10, 0.01), 1);  // at least one nonzero per layer
  EXPECT_EQ(sparse_count(10, 1.0), 10);
}

TEST(Sparsity, DsrPrunesBelowTheThresholdAndRegrowsAsManyAtZero) {
  // Two layers of 4 x 5; layer 0 keeps 8 entries, layer 1 keeps 4; three of them below the threshold 0.001.
  std::vector<bool> a(20, false), b(20, false);
  for (int i : {0, 1, 2, 3, 5, 9, 14, 19}) a[static_cast<std::size_t>(i)] = true;
  for (int i : {4, 8, 12, 16}) b[static_cast<std::size_t>(i)] = true;
  const auto pa = pattern_from_mask(4, 5, a), pb = pattern_from_mask(4, 5, b);
  const std::vector<std::vector<double>> m = {{0.5, 0.0001, 0.3, 0.2, 0.0002, 0.4, 0.6, 0.7}, {0.9, 0.8, 0.0005, 0.1}};
  DynamicSparsity dsr(0.5, 0.001, 11);  // N_p = 6 of 12: 3 pruned is too few, so the threshold doubles
  const DynamicSparsity::Result r = dsr.reallocate({pa.get(), pb.get()}, m);
  EXPECT_EQ(r.pruned, 3);
  EXPECT_DOUBLE_EQ(dsr.threshold(), 0.002);
  ASSERT_EQ(r.patterns.size(), 2u);
  EXPECT_EQ(r.patterns[0]->nonzeros() + r.patterns[1]->nonzeros(), 12);
  // 9 survivors, 6 in layer 0 and 3 in layer 1: regrowth 3 x 6 / 9 = 2 and 3 x 3 / 9 = 1.
  EXPECT_EQ(r.patterns[0]->nonzeros(), 8);
  EXPECT_EQ(r.patterns[1]->nonzeros(), 4);
  for (std::size_t l = 0; l < 2; ++l) {
    const std::vector<index_t>& sources = r.sources[l];
    const auto survivors = std::count_if(sources.begin(), sources.end(), [](index_t s) { return s >= 0; });
    EXPECT_EQ(survivors, l == 0 ? 6 : 3);
    for (index_t s : sources)
      if (s >= 0) { EXPECT_GE(m[l][static_cast<std::size_t>(s)], 0.001); }  // only survivors carry a value over
  }
  Tensor<double> values(Shape{8}, MemoryCategory::weights);
  for (index_t i = 0; i < 8; ++i) values[i] = m[0][static_cast<std::size_t>(i)];
  remap_entries(values, r.sources[0]);
  for (index_t e = 0; e < 8; ++e) {
    const index_t s = r.sources[0][static_cast<std::size_t>(e)];
    EXPECT_EQ(values[e], s >= 0 ? m[0][static_cast<std::size_t>(s)] : 0.0);
  }
}

TEST(Sparsity, DsrTrainingKeepsItsMemoryAndEveryTensorOnThePattern) {
  for (const char* precision : {"f32", "mixed"}) {
    nlohmann::json technique = {{"type", "sparsity"}, {"density", 0.3}, {"method", "dsr"}, {"interval", 1},
                                {"prune_fraction", 0.2}, {"threshold", 0.05}};
    if (std::string(precision) == "mixed") technique = {technique, {{"type", "mixed_precision"}, {"compute", "bf16"}}};
    const RunConfig run = parse_run_config(config_with(technique, momentum), "test");
    const DataSplit data = load_data(run.data, run.seed);
    MemoryLedger ledger;
    auto check = [&]<class T>(Trainer<T>& trainer) {
      const std::size_t weights = ledger.current(MemoryCategory::weights);
      std::vector<std::int64_t> order(static_cast<std::size_t>(run.train.batch));
      std::iota(order.begin(), order.end(), 0);
      std::vector<std::int32_t> labels;
      Rng rng(0);
      // Where each sparse weight's nonzeros are at the start (copies: holding the pattern would keep its bytes).
      auto columns = [&] {
        std::vector<std::vector<std::int32_t>> all;
        for (Param<T>* p : trainer.model().params())
          if (p->pattern) all.emplace_back(p->pattern->column.data(), p->pattern->column.data() + p->pattern->nonzeros());
        return all;
      };
      const auto first = columns();
      for (int step = 0; step < 6; ++step) {
        const Tensor<T> x = trainer.make_batch(data.train, order.data(), run.train.batch, Augment{}, rng, labels);
        EXPECT_TRUE(std::isfinite(to_double(trainer.train_step(x, labels, 0.05))));
        EXPECT_EQ(ledger.current(MemoryCategory::weights), weights) << precision << " step " << step;
        for (Param<T>* p : trainer.model().params()) {
          EXPECT_EQ(p->grad.numel(), p->value.numel());
          if (p->pattern) { EXPECT_EQ(p->pattern->nonzeros(), p->value.numel()); }
        }
      }
      EXPECT_NE(columns(), first) << precision << ": six reallocations left every pattern in place";
    };
    if (run.precision == Precision::bf16) {
      Trainer<bf16> trainer(run, ledger);
      check(trainer);
    } else {
      Trainer<float> trainer(run, ledger);
      check(trainer);
    }
  }
}

// Same config and seed, same thread count: the same weights and patterns, bit for bit.
TEST(Sparsity, DsrRunsRepeatBitForBit) {
  const nlohmann::json technique = {{"type", "sparsity"}, {"density", 0.3}, {"method", "dsr"}, {"interval", 2},
                                    {"prune_fraction", 0.2}, {"threshold", 0.05}};
  const RunConfig run = parse_run_config(config_with(technique, momentum), "test");
  const DataSplit data = load_data(run.data, run.seed);
  auto train = [&] {
    MemoryLedger ledger;
    Trainer<float> trainer(run, ledger);
    trainer.train_epoch(data.train, 0, 0, 10, [](std::int64_t, double, double, double) { return true; });
    std::vector<float> values;
    std::vector<std::int32_t> columns;
    for (Param<float>* p : trainer.model().params()) {
      values.insert(values.end(), p->value.data(), p->value.data() + p->value.numel());
      if (p->pattern) columns.insert(columns.end(), p->pattern->column.data(), p->pattern->column.data() + p->pattern->nonzeros());
    }
    return std::make_pair(values, columns);
  };
  const auto a = train(), b = train();
  EXPECT_EQ(a.second, b.second);
  ASSERT_EQ(a.first.size(), b.first.size());
  EXPECT_EQ(std::memcmp(a.first.data(), b.first.data(), a.first.size() * sizeof(float)), 0);
}

void expect_refused(const nlohmann::json& config, const std::string& says) {
  try {
    const RunConfig run = parse_run_config(config, "cfg.json");
    MemoryLedger ledger;
    Trainer<float> trainer(run, ledger);
    FAIL() << "accepted; expected: " << says;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
  }
}

TEST(Sparsity, BadInputIsRefusedBeforeAnyWork) {
  expect_refused(config_with({{"type", "sparsity"}, {"density", 0}}, momentum), "density in (0, 1]");
  expect_refused(config_with({{"type", "sparsity"}, {"density", 1.5}}, momentum), "/technique/density");
  expect_refused(config_with({{"type", "sparsity"}}, momentum), "density");
  expect_refused(config_with({{"type", "sparsity"}, {"density", 0.5}, {"method", "random"}}, momentum), "magnitude");
  nlohmann::json gradient = config_with({{"type", "sparsity"}, {"density", 0.5}}, momentum);
  gradient["study"] = "gradient";
  expect_refused(gradient, "train study only");
  nlohmann::json small = config_with({{"type", "sparsity"}, {"density", 0.5}}, momentum);
  small["model"]["channels"] = {6};
  expect_refused(small, "fewer than 3 conv or linear layers");
  expect_refused(config_with({{"type", "sparsity"}, {"density", 0.5}, {"last_density", 0}}, momentum),
                 "/technique/last_density: expected a density in (0, 1]");
  expect_refused(config_with({{"type", "sparsity"}, {"density", 0.5}, {"first_density", "half"}}, momentum),
                 "/technique/first_density");
}

}  // namespace
}  // namespace lowmem
