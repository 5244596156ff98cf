#pragma once
// The reference trainer: one network in precision T, built and initialised from the config's seed, charged to
// a memory ledger, trained with the config's optimizer on batches in a fixed, seeded order. Studies drive it.
#include <functional>
#include <memory>
#include <vector>

#include "data/dataset.hpp"
#include "layers/sequential.hpp"
#include "layers/softmax_cross_entropy.hpp"
#include "techniques/checkpoint.hpp"
#include "techniques/sparsity.hpp"
#include "training/optimizer.hpp"
#include "training/run_config.hpp"

namespace lowmem {

struct DataSplit {
  Dataset train, test;
};

// Loads the data set a config names, applies the limits and normalises both splits with the training split's
// per-channel statistics. Errors say which file or package is missing.
DataSplit load_data(const DataSpec& spec, std::uint64_t seed);

template <class T> class Trainer {
 public:
  using W = wide_t<T>;
  Trainer(const RunConfig& config, MemoryLedger& ledger);
  // With the model's chain run by `schedule` (checkpointing) whatever the config says: how the budget is fitted.
  Trainer(const RunConfig& config, MemoryLedger& ledger, const CheckpointSchedule& schedule);

  // An input batch (n, C, H, W) charged to the ledger as workspace (in a dry run: without values).
  Tensor<T> empty_batch(index_t n) const;
  // Examples indices[0..n) of `data` as a batch x (n, C, H, W) in T (each value rounded once), with labels.
  // In a dry run: the same allocations, no data read (labels all 0).
  Tensor<T> make_batch(const Dataset& data, const std::int64_t* indices, index_t n, const Augment& augment, Rng& rng,
                       std::vector<std::int32_t>& labels) const;
  // The first train.batch examples of `data` in data order, without augmentation (fewer if data has fewer; in a
  // dry run train.batch), as the gradient and reconstruction studies use them; labels, if asked.
  Tensor<T> first_batch(const Dataset& data, std::vector<std::int32_t>* labels = nullptr) const;
  // Forward, loss and backward on one batch; gradients are zeroed first. Returns the loss; leaves the logits.
  W forward_backward(const Tensor<T>& x, const std::vector<std::int32_t>& labels, Tensor<T>* logits = nullptr);
  // forward_backward, then one optimizer step with learning rate lr.
  W train_step(const Tensor<T>& x, const std::vector<std::int32_t>& labels, double lr);

  struct Evaluation {
    double loss = 0, accuracy = 0;
  };
  Evaluation evaluate(const Dataset& data, int batch);

  // Steps of one epoch of the config's training: batches of train.batch in the seeded order of `epoch` (the last
  // incomplete batch dropped), the config's augmentation, the learning-rate schedule over `total_steps`. Starts
  // at optimizer step `step`, stops at total_steps or when on_step(step, loss, lr, seconds) returns false.
  // Returns the next step's index.
  using StepCallback = std::function<bool(std::int64_t step, double loss, double lr, double seconds)>;
  std::int64_t train_epoch(const Dataset& data, int epoch, std::int64_t step, std::int64_t total_steps,
                           const StepCallback& on_step);
  // Optimizer steps the config's training takes on `data`: epochs x (count / batch), capped by train.steps.
  std::int64_t total_steps(const Dataset& data) const;
  // Sum of losses and number of correct predictions on one batch, in evaluation mode.
  std::pair<double, index_t> evaluate_batch(const Tensor<T>& x, const std::vector<std::int32_t>& labels);

  Sequential<T>& model() { return *model_; }
  // Forward layer evaluations of the last training step beyond one per layer (checkpointing recomputes).
  std::int64_t recomputed_evaluations() const { return recomputed_; }
  // Technique mixed_precision: the loss scale now, and the steps skipped because a gradient overflowed.
  double loss_scale() const { return loss_scale_; }
  std::int64_t skipped_steps() const { return skipped_steps_; }
  void set_loss_scale(double scale) { loss_scale_ = scale; }  // for experiments and tests (an injected overflow)
  MemoryLedger& ledger() { return ledger_; }

 private:
  MemoryLedger& ledger_;
  RunConfig config_;
  RunContext train_ctx_, eval_ctx_;
  std::unique_ptr<Sequential<T>> model_;
  std::unique_ptr<Optimizer<T>> optimizer_;
  std::unique_ptr<CheckpointExecutor<T>> checkpoint_;  // technique "checkpoint": runs the model's chain
  index_t microbatches_ = 1;                            // technique "microbatch": slices per optimizer step
  std::int64_t recomputed_ = 0;                         // of the last step, over all its microbatches
  std::unique_ptr<CompressionPolicy> compression_;      // technique approx_activations
  // Technique mixed_precision: f32 master weights and their optimizer; the model's weights are their rounding.
  std::vector<Param<float>> masters_;
  std::unique_ptr<Optimizer<float>> master_optimizer_;
  double loss_scale_ = 1;
  bool dynamic_scale_ = false;
  std::int64_t good_steps_ = 0, skipped_steps_ = 0;
  bool mixed_step(double lr);  // unscales into the masters and steps; false (skipped) if a gradient overflowed
  // Technique sparsity: the model's sparse weights (positions in params()) and DSR's reallocations.
  std::vector<std::size_t> sparse_weights_;
  std::unique_ptr<DynamicSparsity> dynamic_sparsity_;
  std::int64_t reallocation_interval_ = 0, sparse_steps_ = 0;
  void make_weights_sparse(const TechniqueSpec& spec, Sequential<float>* drawn, MemoryLedger& uncounted);
  void reallocate_sparse_weights();
  SoftmaxCrossEntropy<T> loss_;
};

// One step of the run's study on a dry-run ledger: the trainer is built and the step taken with tensors that have
// sizes but no values (MemoryLedger::set_dry_run), so the ledger sees every allocation a real step makes, in the
// same order, at no arithmetic cost (train: a training step, then an evaluation batch; gradient: forward and
// backward keeping the logits). What lowmem plan predicts. schedule: checkpointing by this schedule instead of the
// config's technique. recomputed: receives the step's recomputed layer evaluations.
template <class T>
MemoryLedger dry_step(const RunConfig& run, const CheckpointSchedule* schedule = nullptr,
                      std::int64_t* recomputed = nullptr);

// The checkpoint schedule a config asks for, for its model in precision T (budget: fitted by dry steps). Throws
// lowmem::Error if a budget is below what any schedule reaches, saying that minimum.
template <class T> CheckpointSchedule checkpoint_schedule(const RunConfig& config, std::size_t layers);

}  // namespace lowmem
