#pragma once
// The reference trainer: one network in precision T, built and initialised from the config's seed, charged to
// a memory ledger, trained with the config's optimizer on batches in a fixed, seeded order. Studies drive it.
// It is the plain training loop: the run's memory techniques act only through their hooks (techniques/technique.hpp),
// which it asks at fixed points: when it is built (configure, store_parameters, update, chain, save_hook) and in
// each step (microbatch slices, the chain's forward and backward, the update, after_step).
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "data/dataset.hpp"
#include "layers/sequential.hpp"
#include "layers/softmax_cross_entropy.hpp"
#include "techniques/technique.hpp"
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
  // chain: if given, runs the model's chain whatever the techniques say (how a technique tries out schedules in
  // dry steps: TechniqueServices::peak_with).
  Trainer(const RunConfig& config, MemoryLedger& ledger, const MakeChainRunner<T>* chain = nullptr);
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

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

  // A step's examples not yet made: examples indices[0..n) of data (nullptr in a dry run), made batch or
  // microbatch at a time as the step needs them, so that under technique microbatch only the microbatch in
  // flight is in memory, the rest staying in the data set (as a batch stays on the host beside a GPU). Made in
  // order with one augmentation generator, the slices hold exactly the values of the whole batch.
  struct StepExamples {
    const Dataset* data;
    const std::int64_t* indices;
    index_t n;
    Augment augment;
    Rng* rng;
  };
  W train_step(const StepExamples& examples, double lr);

  struct Evaluation {
    double loss = 0, accuracy = 0;
  };
  Evaluation evaluate(const Dataset& data, int batch);

  // Saves or loads everything later steps depend on: the model's parameters and buffers (batch norm's running
  // statistics), the update's state (optimizer; masters and loss scaler), each technique's, the augmentation
  // stream of the epoch in progress and the last step's recomputation count. Loaded into a trainer built from the
  // same config, the next train_epoch continues as the saved run would have, bit for bit.
  void archive(StateArchive& a);

  // Steps of one epoch of the config's training: batches of train.batch in the seeded order of `epoch` (the last
  // incomplete batch dropped), the config's augmentation, the learning-rate schedule over `total_steps`. Starts
  // at optimizer step `step` (past the epoch's start: a run resumed in flight, which goes on from the batch that
  // step is in), stops at total_steps or when on_step(step, loss, lr, seconds) returns false.
  // Returns the next step's index.
  using StepCallback = std::function<bool(std::int64_t step, double loss, double lr, double seconds)>;
  std::int64_t train_epoch(const Dataset& data, int epoch, std::int64_t step, std::int64_t total_steps,
                           const StepCallback& on_step);
  // Optimizer steps the config's training takes on `data`: train.steps where it is set (running into as many
  // epochs as it needs, the last one cut short), else epochs x (count / batch).
  std::int64_t total_steps(const Dataset& data) const;
  // The epochs those steps span: train.epochs, or with train.steps as many as they need.
  int epochs_to_run(const Dataset& data) const;
  // The logits of a batch in evaluation mode.
  Tensor<T> predict(const Tensor<T>& x);
  // Sum of losses and number of correct predictions on one batch, in evaluation mode.
  std::pair<double, index_t> evaluate_batch(const Tensor<T>& x, const std::vector<std::int32_t>& labels);

  Sequential<T>& model() { return *model_; }
  // The classes the model scores (a sequence model: its vocabulary), and at how many positions per example (1; a
  // sequence model: the window's length). Labels come positions() per example.
  index_t classes() const;
  index_t positions() const;
  // Forward layer evaluations of the last training step beyond one per layer (checkpointing recomputes).
  std::int64_t recomputed_evaluations() const { return recomputed_; }
  // The loss scale now (mixed precision; 1 without), and the steps skipped because a gradient overflowed.
  double loss_scale() const { return update_->loss_scale(); }
  std::int64_t skipped_steps() const { return update_->skipped_steps(); }
  void set_loss_scale(double scale) { update_->set_loss_scale(scale); }  // for tests (an injected overflow)
  // Figures the run's techniques report (mixed precision: skipped_steps, final_loss_scale).
  std::map<std::string, double> technique_report() const { return update_->report(); }
  MemoryLedger& ledger() { return ledger_; }

 private:
  TechniqueServices<T> services() const;
  // The examples rows [first, first + count) of a step, and their labels.
  using SliceSource = std::function<std::pair<Tensor<T>, std::vector<std::int32_t>>(index_t first, index_t count)>;
  W forward_backward(index_t n, const SliceSource& slice, Tensor<T>* logits_out);
  W apply_update(W loss, double lr);  // the optimizer step after forward_backward (skipped on a non-finite loss)
  // Logits (n, ..., classes) as rows of scores (n positions(), classes): what the loss takes.
  Tensor<T> as_score_rows(const Tensor<T>& logits) const;
  MemoryLedger& ledger_;
  RunConfig config_;
  RunContext train_ctx_, eval_ctx_;
  std::unique_ptr<Sequential<T>> model_;
  std::vector<std::unique_ptr<TechniqueHooks<T>>> hooks_;  // the run's techniques, in config order
  std::vector<std::string> hook_types_;                    // their types, for messages
  std::unique_ptr<ParameterUpdate<T>> update_;             // how gradients become weights
  std::unique_ptr<ChainRunner<T>> chain_;                  // how the model's chain runs forward and backward
  const SaveHook<T>* save_hook_ = nullptr;                 // how kept activations are stored (nullptr: whole)
  std::int64_t recomputed_ = 0;                            // of the last step, over all its microbatches
  Rng augment_{0};                                         // the augmentation stream of epoch augment_epoch_
  int augment_epoch_ = -1;
  SoftmaxCrossEntropy<T> loss_;
};

// One step of the run's study on a dry-run ledger: the trainer is built and the step taken with tensors that have
// sizes but no values (MemoryLedger::set_dry_run), so the ledger sees every allocation a real step makes, in the
// same order, at no arithmetic cost (train: a training step, then an evaluation batch; gradient: forward and
// backward keeping the logits). What lowmem plan predicts. chain: the model's chain run by what it makes instead of
// by the techniques (see Trainer). recomputed: receives the step's recomputed layer evaluations. timeline: the
// ledger records its memory timeline (MemoryLedger::events).
template <class T>
MemoryLedger dry_step(const RunConfig& run, const MakeChainRunner<T>* chain = nullptr, std::int64_t* recomputed = nullptr,
                      bool timeline = false);
// The same step taken for real on the first examples of `data`, recording its memory timeline: what a run
// measures, equal to the dry step's timeline event for event (test).
template <class T> MemoryLedger measured_step(const RunConfig& run, const DataSplit& data);

// What the run's techniques themselves require, given its dry step (`plan` prints it beside the peak): model
// state (the weights, gradients and optimizer state peaks) + the saved-activation peak + the working set of the
// widest layer of the chain (its input and output at one step's slice of rows; a composite layer such as a
// coupling block counts as one), + the whole batch when it is cut into microbatches; or, if larger, the state +
// the widest layer at the evaluation batch. A bound any executor of the same techniques could meet: the peak's
// distance above it is lowmem's own overhead.
template <class T> std::size_t own_need(const RunConfig& run, const MemoryLedger& step);
// Checks a run's techniques against its model: each technique's check_model, then, for a technique fitted by dry
// steps (checkpoint budget), a dry step, which fits it or says why it cannot. Throws lowmem::Error.
void check_techniques(const RunConfig& run, const ModelFacts& model);

}  // namespace lowmem
