#include "training/trainer.hpp"

#include <chrono>
#include <cmath>
#include <optional>

#include "numerics/error.hpp"
#include "techniques/sparsity.hpp"
#include "tensor/compute.hpp"
#include "training/model_factory.hpp"

namespace lowmem {

DataSplit load_data(const DataSpec& spec, std::uint64_t seed) {
  DataSplit d;
  if (spec.dataset == "fashion-mnist") {
    d.train = load_fashion_mnist(spec.path, true, spec.train_limit);
    d.test = load_fashion_mnist(spec.path, false, spec.test_limit);
  } else if (spec.dataset == "cifar10") {
    d.train = load_cifar10(spec.path, true, spec.train_limit);
    d.test = load_cifar10(spec.path, false, spec.test_limit);
  } else {
    SyntheticSpec test = spec.synthetic;
    test.count = spec.synthetic_test;
    d.train = make_synthetic(spec.synthetic, seed, true);
    d.test = make_synthetic(test, seed, false);
    if (spec.train_limit > 0 && spec.train_limit < d.train.count) {
      d.train.count = spec.train_limit;
      d.train.images.resize(static_cast<std::size_t>(d.train.count * d.train.image_size()));
      d.train.labels.resize(static_cast<std::size_t>(d.train.count));
    }
  }
  if (d.train.count == 0 || d.test.count == 0)
    throw Error("data " + (d.train.count == 0 ? d.train.source : d.test.source) + " has no examples");
  if (spec.normalize) {
    const ChannelStats stats = channel_stats(d.train);
    normalize(d.train, stats);
    normalize(d.test, stats);
  }
  return d;
}

namespace {

// Rows [first, first + count) of a batch (N, ...) as a new tensor.
template <class T> Tensor<T> batch_rows(const Tensor<T>& x, index_t first, index_t count) {
  std::vector<index_t> dims = x.shape().dims();
  dims[0] = count;
  Tensor<T> rows(Shape(dims), MemoryCategory::workspace);
  const index_t size = x.numel() / x.dim(0);
  if (!x.is_dry()) std::copy(x.data() + first * size, x.data() + (first + count) * size, rows.data());
  return rows;
}

template <class U> std::vector<double> magnitudes(const Tensor<U>& t) {
  if (t.is_dry()) return {};
  std::vector<double> m(static_cast<std::size_t>(t.numel()));
  for (index_t i = 0; i < t.numel(); ++i) m[static_cast<std::size_t>(i)] = std::abs(to_double(t[i]));
  return m;
}

RunConfig without_checkpoint(RunConfig config) {
  std::erase_if(config.techniques, [](const TechniqueSpec& t) { return t.type == "checkpoint"; });
  if (config.techniques.empty()) config.techniques.emplace_back();
  return config;
}

}  // namespace

template <class T>
Trainer<T>::Trainer(const RunConfig& config, MemoryLedger& ledger)
    : ledger_(ledger),
      config_(config),
      train_ctx_{true, config.accumulate},
      eval_ctx_{false, config.accumulate} {
  train_ctx_.reconstruct = config.uses("reversible");
  // Checkpoint composed with reversible: the runs of non-invertible layers between the rebuilt invertible runs are
  // recomputed from their inputs (Sequential), not run by the checkpoint executor.
  train_ctx_.recompute_between_runs = train_ctx_.reconstruct && config.uses("checkpoint");
  if (const TechniqueSpec* m = config.find("microbatch")) microbatches_ = m->count;
  if (const TechniqueSpec* a = config.find("approx_activations")) {
    compression_ = std::make_unique<CompressionPolicy>();
    compression_->bits = a->bits;
    compression_->method = a->method == "actnn"   ? CompressionPolicy::actnn
                           : a->method == "naive" ? CompressionPolicy::naive
                                                  : CompressionPolicy::blpa;
    compression_->seed = config.seed;
  }
  MemoryLedger::Scope scope(ledger_);
  model_ = std::make_unique<Sequential<T>>(build_model<T>(config.model));
  if (!ledger.dry_run()) model_->initialize(config.seed);
  const TechniqueSpec* mixed = config.find("mixed_precision");
  const TechniqueSpec* sparsity = config.find("sparsity");
  // The f32 network of the same seed, drawn and dropped uncounted: mixed precision's masters start from it and
  // sparsity chooses its pattern on it, so that every precision gets the same masters and the same pattern.
  MemoryLedger uncounted;
  std::unique_ptr<Sequential<float>> initial;
  if ((mixed || sparsity) && !ledger.dry_run()) {
    MemoryLedger::Scope draw(uncounted);
    initial = std::make_unique<Sequential<float>>(build_model<float>(config.model));
    initial->initialize(config.seed);
  }
  if (sparsity) make_weights_sparse(*sparsity, initial.get(), uncounted);
  if (mixed) {
    const auto params = model_->params();
    for (std::size_t k = 0; k < params.size(); ++k) {
      masters_.push_back(make_param<float>(params[k]->name, params[k]->value.shape()));
      if (!initial) continue;
      const Tensor<float>& drawn = initial->params()[k]->value;
      std::copy(drawn.data(), drawn.data() + drawn.numel(), masters_.back().value.data());
      for (index_t i = 0; i < drawn.numel(); ++i) params[k]->value[i] = round_to<T>(drawn[i]);
    }
    std::vector<Param<float>*> master_params;
    for (Param<float>& p : masters_) master_params.push_back(&p);
    master_optimizer_ = std::make_unique<Optimizer<float>>(config.train.optimizer, master_params);
    dynamic_scale_ = mixed->loss_scale == 0;
    loss_scale_ = dynamic_scale_ ? 65536.0 : mixed->loss_scale;  // PyTorch's GradScaler starts at 2^16
  } else {
    optimizer_ = std::make_unique<Optimizer<T>>(config.train.optimizer, model_->params());
  }
  if (config.uses("checkpoint") && !train_ctx_.recompute_between_runs)
    checkpoint_ = std::make_unique<CheckpointExecutor<T>>(checkpoint_schedule<T>(config, model_->size()));
  // Peaks start with training: setup's one-time buffers (a dense weight beside its sparse copy while it is pruned)
  // are not memory that training needs.
  ledger_.reset_peaks();
}

// Technique sparsity: the chosen weights keep the largest magnitudes of the f32 draw (drawn; in a dry run, which has
// no values, patterns of the same sizes), and the draw is made sparse alike for the masters to copy.
template <class T>
void Trainer<T>::make_weights_sparse(const TechniqueSpec& spec, Sequential<float>* drawn, MemoryLedger& uncounted) {
  const auto params = model_->params();
  sparse_weights_ = sparse_weight_indices(params);
  if (sparse_weights_.empty())
    throw Error("technique sparsity: the model has fewer than 3 conv or linear layers, and the first and the last "
                "stay dense, so no weight would be sparse");
  for (std::size_t k : sparse_weights_) {
    Param<T>& p = *params[k];
    const index_t rows = p.value.dim(0), cols = p.value.numel() / rows;
    const index_t keep = sparse_count(p.value.numel(), spec.density);
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
  if (spec.method == "dsr") {
    dynamic_sparsity_ = std::make_unique<DynamicSparsity>(spec.prune_fraction, spec.threshold, config_.seed);
    reallocation_interval_ = spec.interval;
  }
}

// DSR: prune and regrow (on the masters' magnitudes under mixed precision), then move every tensor that follows a
// weight's pattern onto the new one: the weight, its gradient, its optimizer state, and its master and theirs.
template <class T> void Trainer<T>::reallocate_sparse_weights() {
  MemoryLedger::Scope scope(ledger_);
  const auto params = model_->params();
  std::vector<const SparsePattern*> patterns;
  std::vector<std::vector<double>> sizes;
  for (std::size_t k : sparse_weights_) {
    patterns.push_back(params[k]->pattern.get());
    sizes.push_back(masters_.empty() ? magnitudes(params[k]->value) : magnitudes(masters_[k].value));
  }
  const DynamicSparsity::Result r = dynamic_sparsity_->reallocate(patterns, sizes);
  for (std::size_t l = 0; l < sparse_weights_.size(); ++l) {
    const std::size_t k = sparse_weights_[l];
    const std::vector<index_t>& sources = r.sources[l];
    remap_entries(params[k]->value, sources);
    remap_entries(params[k]->grad, sources);
    params[k]->pattern = r.patterns[l];
    if (optimizer_)
      for (Tensor<T>* state : optimizer_->state(k)) remap_entries(*state, sources);
    if (master_optimizer_) {
      remap_entries(masters_[k].value, sources);
      remap_entries(masters_[k].grad, sources);
      for (Tensor<float>* state : master_optimizer_->state(k)) remap_entries(*state, sources);
    }
  }
}

template <class T>
Trainer<T>::Trainer(const RunConfig& config, MemoryLedger& ledger, const CheckpointSchedule& schedule)
    : Trainer(without_checkpoint(config), ledger) {
  checkpoint_ = std::make_unique<CheckpointExecutor<T>>(schedule);
}

template <class T>
Tensor<T> Trainer<T>::make_batch(const Dataset& data, const std::int64_t* indices, index_t n, const Augment& augment,
                                 Rng& rng, std::vector<std::int32_t>& labels) const {
  Tensor<T> x = empty_batch(n);
  MemoryLedger::Scope scope(ledger_);
  Tensor<float> pixels(x.shape(), MemoryCategory::workspace);  // staging: the data set holds float32 pixels
  labels.assign(static_cast<std::size_t>(n), 0);
  if (ledger_.dry_run()) return x;  // a dry step allocates the same and reads nothing
  const Shape& in = model_->input_shape();
  if (Shape{data.channels, data.height, data.width} != in)
    throw Error("data " + data.source + " has images of shape " + Shape{data.channels, data.height, data.width}.str() +
                " but the model expects " + in.str() + " (set model.input)");
  fill_batch(data, indices, n, augment, rng, pixels.data(), labels.data());
  for (std::int32_t label : labels)
    if (label < 0 || label >= model_->output_shape()[0])
      throw Error("data " + data.source + ": label " + std::to_string(label) + " is outside the model's " +
                  std::to_string(model_->output_shape()[0]) + " classes");
  convert(pixels.data(), x.data(), x.numel());
  return x;
}

template <class T>
Tensor<T> Trainer<T>::first_batch(const Dataset& data, std::vector<std::int32_t>* labels) const {
  const index_t n = ledger_.dry_run() ? config_.train.batch : std::min<index_t>(config_.train.batch, data.count);
  std::vector<std::int64_t> first(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) first[static_cast<std::size_t>(i)] = i;
  Rng unused(0);
  std::vector<std::int32_t> kept;
  return make_batch(data, first.data(), n, Augment{}, unused, labels ? *labels : kept);
}

template <class T> Tensor<T> Trainer<T>::empty_batch(index_t n) const {
  MemoryLedger::Scope scope(ledger_);
  const Shape& in = model_->input_shape();
  return Tensor<T>(Shape{n, in[0], in[1], in[2]}, MemoryCategory::workspace);
}

template <class T>
typename Trainer<T>::W Trainer<T>::forward_backward(const Tensor<T>& x, const std::vector<std::int32_t>& labels,
                                                    Tensor<T>* logits_out) {
  MemoryLedger::Scope scope(ledger_);
  model_->zero_grad();
  // Microbatches (technique "microbatch"): k slices of the batch in turn, each forward and backward adding into the
  // gradients, the loss of each divided by the whole batch's size so that losses and gradients add up to the
  // whole batch's. Layers that use batch statistics (batch norm) see each slice's instead.
  const index_t n = x.dim(0), slices = microbatches_, rows = n / slices;
  if (n % slices != 0)
    throw Error("technique microbatch: count " + std::to_string(slices) + " does not divide the batch of " +
                std::to_string(n) + " examples");
  if (logits_out && slices > 1) *logits_out = Tensor<T>(Shape{n, model_->output_shape()[0]}, MemoryCategory::workspace);
  W loss(0);
  recomputed_ = 0;
  for (index_t k = 0; k < slices; ++k) {
    const Tensor<T> slice = slices == 1 ? x : batch_rows(x, k * rows, rows);
    const std::vector<std::int32_t> slice_labels(labels.begin() + k * rows, labels.begin() + (k + 1) * rows);
    Tensor<T> logits;
    {
      const CompressionScope approximate(compression_.get());  // what the model keeps, in K bits
      logits = checkpoint_ ? checkpoint_->forward(*model_, slice, train_ctx_) : model_->forward(slice, train_ctx_);
    }
    loss = loss + loss_.forward(logits, slice_labels, train_ctx_, n);
    if (logits_out && slices == 1) *logits_out = logits;
    else if (logits_out && !logits.is_dry())
      std::copy(logits.data(), logits.data() + logits.numel(), logits_out->data() + k * logits.numel());
    logits = Tensor<T>();  // the loss kept what it needs; the logits themselves are not needed for backward
    const CompressionScope approximate(compression_.get());  // checkpoint records in backward, in K bits too
    if (checkpoint_) checkpoint_->backward(*model_, loss_.backward(loss_scale_), train_ctx_);
    else model_->backward(loss_.backward(loss_scale_), train_ctx_);
    recomputed_ += checkpoint_ ? checkpoint_->recomputed() : model_->recomputed();
  }
  return loss;
}

template <class T>
typename Trainer<T>::W Trainer<T>::train_step(const Tensor<T>& x, const std::vector<std::int32_t>& labels, double lr) {
  const W loss = forward_backward(x, labels);
  if (!is_finite(loss)) {
    if (master_optimizer_) ++skipped_steps_;  // an overflow in the forward pass: no step either
    return loss;
  }
  const bool stepped = master_optimizer_ ? mixed_step(lr) : (optimizer_->step(lr), true);
  // A dry step reallocates too, so that plan sees the transient buffers of a reallocation step.
  if (stepped && dynamic_sparsity_ && (++sparse_steps_ % reallocation_interval_ == 0 || ledger_.dry_run()))
    reallocate_sparse_weights();
  return loss;
}

// Dynamic loss scaling as PyTorch's GradScaler: an overflowed gradient skips the step and halves the scale; 2000
// steps in a row without one double it. The unscaled gradient is computed in f32 (dividing by a power of two).
template <class T> bool Trainer<T>::mixed_step(double lr) {
  const auto params = model_->params();
  bool finite = true;
  for (Param<T>* p : params)
    for (index_t i = 0; i < (p->grad.is_dry() ? 0 : p->grad.numel()) && finite; ++i) finite = is_finite(p->grad[i]);
  if (!finite) {
    ++skipped_steps_;
    if (dynamic_scale_) loss_scale_ /= 2, good_steps_ = 0;
    return false;
  }
  const float unscale = static_cast<float>(1.0 / loss_scale_);
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < (params[k]->grad.is_dry() ? 0 : params[k]->grad.numel()); ++i)
      masters_[k].grad[i] = round_to<float>(params[k]->grad[i]) * unscale;
  master_optimizer_->step(lr);
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < (params[k]->value.is_dry() ? 0 : params[k]->value.numel()); ++i)
      params[k]->value[i] = round_to<T>(masters_[k].value[i]);
  if (dynamic_scale_ && ++good_steps_ == 2000) loss_scale_ *= 2, good_steps_ = 0;
  return true;
}

template <class T> std::int64_t Trainer<T>::total_steps(const Dataset& data) const {
  const std::int64_t per_epoch = data.count / config_.train.batch;
  const std::int64_t all = per_epoch * config_.train.epochs;
  return config_.train.steps > 0 ? std::min(all, config_.train.steps) : all;
}

template <class T>
std::int64_t Trainer<T>::train_epoch(const Dataset& data, int epoch, std::int64_t step, std::int64_t total_steps,
                                     const StepCallback& on_step) {
  const TrainSpec& spec = config_.train;
  const std::int64_t batch = spec.batch, per_epoch = data.count / batch;
  if (per_epoch == 0)
    throw Error("train.batch " + std::to_string(batch) + " is larger than the training set (" +
                std::to_string(data.count) + " examples in " + data.source + ")");
  const std::vector<std::int64_t> order = epoch_order(data.count, config_.seed, epoch);
  Rng augment_rng(config_.seed, 2000 + static_cast<std::uint64_t>(epoch));
  std::vector<std::int32_t> labels;
  for (std::int64_t b = 0; b < per_epoch && step < total_steps; ++b) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = learning_rate(spec.optimizer, spec.schedule, step, per_epoch, total_steps);
    const Tensor<T> x = make_batch(data, order.data() + b * batch, batch, config_.data.augment, augment_rng, labels);
    const double loss = to_double(train_step(x, labels, lr));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!on_step(step++, loss, lr, seconds)) break;
  }
  return step;
}

template <class T> typename Trainer<T>::Evaluation Trainer<T>::evaluate(const Dataset& data, int batch) {
  Evaluation e;
  index_t correct = 0;
  double loss_sum = 0;
  std::vector<std::int64_t> order(static_cast<std::size_t>(data.count));
  for (std::int64_t i = 0; i < data.count; ++i) order[static_cast<std::size_t>(i)] = i;
  Rng unused(0);
  std::vector<std::int32_t> labels;
  for (std::int64_t start = 0; start < data.count; start += batch) {
    const index_t n = std::min<index_t>(batch, data.count - start);
    const Tensor<T> x = make_batch(data, order.data() + start, n, Augment{}, unused, labels);
    const auto [batch_loss, batch_correct] = evaluate_batch(x, labels);
    loss_sum += batch_loss;
    correct += batch_correct;
  }
  if (data.count > 0) {
    e.loss = loss_sum / static_cast<double>(data.count);
    e.accuracy = static_cast<double>(correct) / static_cast<double>(data.count);
  }
  return e;
}

template <class T>
std::pair<double, index_t> Trainer<T>::evaluate_batch(const Tensor<T>& x, const std::vector<std::int32_t>& labels) {
  MemoryLedger::Scope scope(ledger_);
  const Tensor<T> logits = model_->forward(x, eval_ctx_);
  const double loss = to_double(loss_.forward(logits, labels, eval_ctx_)) * static_cast<double>(x.dim(0));
  return {loss, SoftmaxCrossEntropy<T>::correct(logits, labels)};
}

template <class T>
MemoryLedger dry_step(const RunConfig& run, const CheckpointSchedule* schedule, std::int64_t* recomputed) {
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  std::unique_ptr<Trainer<T>> made =
      schedule ? std::make_unique<Trainer<T>>(run, ledger, *schedule) : std::make_unique<Trainer<T>>(run, ledger);
  Trainer<T>& trainer = *made;
  const Dataset none;  // a dry batch reads no data
  Rng rng(0);
  std::vector<std::int32_t> labels;
  if (run.study == "train") {
    {
      const Tensor<T> x = trainer.make_batch(none, nullptr, run.train.batch, Augment{}, rng, labels);
      trainer.train_step(x, labels, run.train.optimizer.lr);
    }  // a step's batch is freed before the evaluation, as in the train study
    const Tensor<T> x = trainer.make_batch(none, nullptr, run.train.eval_batch, Augment{}, rng, labels);
    trainer.evaluate_batch(x, labels);
  } else {
    const Tensor<T> x = trainer.make_batch(none, nullptr, run.train.batch, Augment{}, rng, labels);
    Tensor<T> logits;  // the gradient study keeps the logits for its dump, through backward
    trainer.forward_backward(x, labels, &logits);
  }
  if (recomputed) *recomputed = trainer.recomputed_evaluations();
  made.reset();  // the model's tensors go back to the ledger before it is returned
  return ledger;
}

namespace {

// Per layer of the model's chain, on a dry model: flops of one evaluation for the batch, bytes of its input, and
// bytes its record keeps (what a training-mode forward leaves in saved activations).
template <class T> ChainCosts chain_costs(const RunConfig& config) {
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  MemoryLedger::Scope scope(ledger);
  Sequential<T> model = build_model<T>(config.model);
  // Each forward sees one microbatch (technique "microbatch"), not the whole batch.
  const TechniqueSpec* slices = config.find("microbatch");
  const index_t batch = config.train.batch / (slices ? slices->count : 1);
  ChainCosts c;
  Shape in = model.input_shape();
  const RunContext record{true, config.accumulate};
  for (std::size_t i = 0; i < model.size(); ++i) {
    std::vector<index_t> dims{batch};
    for (index_t d : in.dims()) dims.push_back(d);
    const Tensor<T> x(Shape(dims), MemoryCategory::workspace);
    c.flops.push_back(model.layer(i).forward_flops(in) * static_cast<double>(batch));
    c.input_bytes.push_back(x.bytes());
    const std::size_t before = ledger.current(MemoryCategory::saved_activations);
    const Tensor<T> y = model.layer(i).forward(x, record);
    c.record_bytes.push_back(ledger.current(MemoryCategory::saved_activations) - before);
    model.layer(i).backward(Tensor<T>(y.shape(), MemoryCategory::workspace), record, false);  // releases it
    in = model.layer(i).output_shape(in);
  }
  return c;
}

// The budget schedule: the dynamic programme's memory bound is searched (bisection on bytes) for the schedule of
// least recomputation whose whole dry step stays within the budget, so the model's weights, gradients, optimizer
// state and workspace are what the ledger sees, not a guess.
template <class T> CheckpointSchedule fit_budget(const RunConfig& config, std::size_t layers, std::size_t budget) {
  const ChainCosts costs = chain_costs<T>(config);
  const std::size_t cells = layers * (layers + 1);
  const std::size_t unit = std::max<std::size_t>(1, budget / std::max<std::size_t>(1, 4000000 / cells));
  std::optional<BudgetPlan> best;
  // Below the largest record no schedule exists: the search starts there. No plan: more memory; a plan whose
  // dry step is over the budget: less.
  std::size_t lo = *std::max_element(costs.record_bytes.begin(), costs.record_bytes.end()), hi = budget;
  while (lo <= hi) {
    const std::size_t memory = lo + (hi - lo) / 2;
    std::optional<BudgetPlan> plan = budget_schedule(costs, memory, unit);
    const bool fits = plan && dry_step<T>(config, &plan->schedule).peak_total() <= budget;
    if (fits && (!best || plan->recomputed_flops < best->recomputed_flops)) best = std::move(plan);
    if (fits || !plan) lo = memory + 1;
    else if (memory == 0) break;
    else hi = memory - 1;
  }
  if (best) return best->schedule;
  const CheckpointSchedule least = revolve_schedule(layers, 1);  // one snapshot: the least any schedule keeps
  const std::size_t minimum = dry_step<T>(config, &least).peak_total();
  if (minimum <= budget) return least;
  throw Error("technique checkpoint: budget_bytes " + std::to_string(budget) +
              " is below what any schedule reaches for this model, precision and batch: the minimum is " +
              std::to_string(minimum) + " bytes (one snapshot, every layer recomputed from the input)");
}

}  // namespace

template <class T> CheckpointSchedule checkpoint_schedule(const RunConfig& config, std::size_t layers) {
  const TechniqueSpec* c = config.find("checkpoint");
  if (c->schedule == "revolve") return revolve_schedule(layers, static_cast<std::size_t>(c->slots));
  if (c->schedule == "budget") return fit_budget<T>(config, layers, static_cast<std::size_t>(c->budget_bytes));
  const auto sqrt_n = static_cast<std::size_t>(std::lround(std::sqrt(static_cast<double>(layers))));
  return uniform_schedule(layers, c->segments > 0 ? static_cast<std::size_t>(c->segments)
                                                   : std::max<std::size_t>(1, sqrt_n));
}

template MemoryLedger dry_step<float>(const RunConfig&, const CheckpointSchedule*, std::int64_t*);
template MemoryLedger dry_step<double>(const RunConfig&, const CheckpointSchedule*, std::int64_t*);
template MemoryLedger dry_step<f16>(const RunConfig&, const CheckpointSchedule*, std::int64_t*);
template MemoryLedger dry_step<bf16>(const RunConfig&, const CheckpointSchedule*, std::int64_t*);
template MemoryLedger dry_step<mp>(const RunConfig&, const CheckpointSchedule*, std::int64_t*);
template CheckpointSchedule checkpoint_schedule<float>(const RunConfig&, std::size_t);
template CheckpointSchedule checkpoint_schedule<double>(const RunConfig&, std::size_t);
template CheckpointSchedule checkpoint_schedule<f16>(const RunConfig&, std::size_t);
template CheckpointSchedule checkpoint_schedule<bf16>(const RunConfig&, std::size_t);
template CheckpointSchedule checkpoint_schedule<mp>(const RunConfig&, std::size_t);

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Trainer)


}  // namespace lowmem
