#include "training/trainer.hpp"

#include <chrono>
#include <cmath>
#include <optional>
#include <tuple>

#include "numerics/error.hpp"
#include "techniques/microbatch.hpp"
#include "tensor/compute.hpp"
#include "tensor/state_archive.hpp"
#include "training/model_factory.hpp"

namespace lowmem {

DataSplit load_data(const DataSpec& spec, std::uint64_t seed) {
  DataSplit d;
  if (spec.dataset == "fashion-mnist") {
    d.train = load_fashion_mnist(spec.path, true, spec.train_limit);
    d.test = load_fashion_mnist(spec.path, false, spec.test_limit);
  } else if (spec.text()) {  // the validation split is the test set
    std::tie(d.train, d.test) =
        split_text(read_text(spec.path, spec.level), {spec.seq_len, spec.validation, spec.train_limit, spec.test_limit});
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

// Owners in the memory timeline of what the trainer itself allocates.
const std::string loss_owner = "loss", batch_owner = "batch", optimizer_owner = "optimizer";

// Per layer of the model's chain, on a dry model: flops of one evaluation for the batch, bytes of its input, and
// bytes its record keeps (what a training-mode forward leaves in saved activations).
template <class T> ChainCosts chain_costs(const RunConfig& config) {
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  MemoryLedger::Scope scope(ledger);
  Sequential<T> model = build_model<T>(config.model);
  // Each forward sees one microbatch (technique "microbatch"), not the whole batch.
  const index_t batch = config.train.batch / config.microbatches();
  ChainCosts c;
  Shape in = model.input_shape();
  RunContext record{true, config.accumulate};
  record.conv_band_columns = config.conv_band_columns;
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

}  // namespace

template <class T>
Trainer<T>::Trainer(const RunConfig& config, MemoryLedger& ledger, const MakeChainRunner<T>* chain)
    : ledger_(ledger),
      config_(config),
      train_ctx_{true, config.accumulate},
      eval_ctx_{false, config.accumulate} {
  train_ctx_.conv_band_columns = eval_ctx_.conv_band_columns = config.conv_band_columns;
  const TechniqueServices<T> services = this->services();
  bool draw = false;
  for (const auto& t : config_.techniques) {
    draw = draw || t->needs_f32_draw();
    if (auto hooks = t->hooks<T>(services)) hooks_.push_back(std::move(hooks)), hook_types_.push_back(t->type());
  }
  for (auto& h : hooks_) h->configure(train_ctx_);
  MemoryLedger::Scope scope(ledger_);
  const MemoryPhaseScope phase(MemoryPhase::setup);
  model_ = std::make_unique<Sequential<T>>(build_model<T>(config.model));
  if (!ledger.dry_run()) initialize_model(*model_, config.model, config.seed);
  // The f32 network of the same seed, drawn and dropped uncounted: mixed precision's masters start from it and
  // sparsity chooses its pattern on it, so that every precision gets the same masters and the same pattern.
  MemoryLedger uncounted;
  std::unique_ptr<Sequential<float>> initial;
  if (draw && !ledger.dry_run()) {
    MemoryLedger::Scope drawing(uncounted);
    initial = std::make_unique<Sequential<float>>(build_model<float>(config.model));
    initialize_model(*initial, config.model, config.seed);
  }
  for (auto& h : hooks_) h->store_parameters(*model_, initial.get(), uncounted);
  // At most one technique decides each of these; a second one is a composition its techniques should refuse.
  auto take = [&](auto& slot, const char* what, auto offer) {
    std::string provider;
    for (std::size_t k = 0; k < hooks_.size(); ++k) {
      auto offered = offer(*hooks_[k]);
      if (!offered) continue;
      if (!provider.empty())
        throw std::logic_error("techniques " + provider + " and " + hook_types_[k] + " both provide the " + what);
      slot = std::move(offered);
      provider = hook_types_[k];
    }
  };
  {
    const MemoryOwner owner(optimizer_owner);
    take(update_, "update", [&](TechniqueHooks<T>& h) { return h.update(*model_, initial.get()); });
    if (!update_) update_ = std::make_unique<PlainUpdate<T>>(*model_, services.optimizer);
  }
  if (chain) chain_ = (*chain)();
  else take(chain_, "chain", [&](TechniqueHooks<T>& h) { return h.chain(*model_); });
  if (!chain_) chain_ = std::make_unique<ChainRunner<T>>();
  take(save_hook_, "save hook", [](TechniqueHooks<T>& h) { return h.save_hook(); });
  // Peaks start with training: setup's one-time buffers (a dense weight beside its sparse copy while it is pruned)
  // are not memory that training needs.
  ledger_.reset_peaks();
}

template <class T> index_t Trainer<T>::classes() const { return model_->output_shape().dims().back(); }
template <class T> index_t Trainer<T>::positions() const { return model_->output_shape().numel() / classes(); }

template <class T> Tensor<T> Trainer<T>::as_score_rows(const Tensor<T>& logits) const {
  return logits.reshaped(Shape{logits.numel() / classes(), classes()});
}

template <class T> TechniqueServices<T> Trainer<T>::services() const {
  TechniqueServices<T> s;
  s.all = config_.techniques;
  s.seed = config_.seed;
  s.optimizer = [spec = config_.train.optimizer](std::vector<Param<T>*> params) -> std::unique_ptr<OptimizerBase<T>> {
    return std::make_unique<Optimizer<T>>(spec, std::move(params));
  };
  s.f32_optimizer = [spec = config_.train.optimizer](std::vector<Param<float>*> params) -> std::unique_ptr<OptimizerBase<float>> {
    return std::make_unique<Optimizer<float>>(spec, std::move(params));
  };
  s.chain_costs = [config = config_] { return chain_costs<T>(config); };
  s.peak_with = [config = config_](const MakeChainRunner<T>& chain) { return dry_step<T>(config, &chain).peak_total(); };
  return s;
}

template <class T>
Tensor<T> Trainer<T>::make_batch(const Dataset& data, const std::int64_t* indices, index_t n, const Augment& augment,
                                 Rng& rng, std::vector<std::int32_t>& labels) const {
  const MemoryOwner owner(batch_owner);
  Tensor<T> x = empty_batch(n);
  MemoryLedger::Scope scope(ledger_);
  Tensor<float> pixels(x.shape(), MemoryCategory::workspace);  // staging: the data set holds float32 values
  labels.assign(static_cast<std::size_t>(n * positions()), 0);
  if (ledger_.dry_run()) return x;  // a dry step allocates the same and reads nothing
  const Shape& in = model_->input_shape();
  if (Shape(data.example_shape()) != in || data.targets != positions())
    throw Error("data " + data.source + " has examples of shape " + Shape(data.example_shape()).str() +
                " but the model expects " + in.str() + " (set model.input)");
  fill_batch(data, indices, n, augment, rng, pixels.data(), labels.data());
  for (std::int32_t label : labels)
    if (label < 0 || label >= classes())
      throw Error("data " + data.source + ": label " + std::to_string(label) + " is outside the model's " +
                  std::to_string(classes()) + " classes");
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
  std::vector<index_t> dims{n};
  for (index_t d : model_->input_shape().dims()) dims.push_back(d);
  return Tensor<T>(Shape(dims), MemoryCategory::workspace);
}

template <class T>
typename Trainer<T>::W Trainer<T>::forward_backward(const Tensor<T>& x, const std::vector<std::int32_t>& labels,
                                                    Tensor<T>* logits_out) {
  const index_t n = x.dim(0), p = positions();
  return forward_backward(n, [&](index_t first, index_t count) {
    return std::pair{count == n ? x : batch_rows(x, first, count),
                     std::vector<std::int32_t>(labels.begin() + first * p, labels.begin() + (first + count) * p)};
  }, logits_out);
}

template <class T>
typename Trainer<T>::W Trainer<T>::forward_backward(index_t n, const SliceSource& source, Tensor<T>* logits_out) {
  MemoryLedger::Scope scope(ledger_);
  const MemoryPhaseScope phase(MemoryPhase::forward);  // until backward, per microbatch
  model_->zero_grad();
  // Microbatches (technique "microbatch"): k slices of the batch in turn, each forward and backward adding into the
  // gradients, the loss of each divided by the whole batch's size so that losses and gradients add up to the
  // whole batch's. Layers that use batch statistics (batch norm) see each slice's instead.
  const index_t slices = config_.microbatches(), rows = n / slices;
  if (n % slices != 0)
    throw Error("technique microbatch: count " + std::to_string(slices) + " does not divide the batch of " +
                std::to_string(n) + " examples");
  if (logits_out && slices > 1) {
    std::vector<index_t> dims{n};
    for (index_t d : model_->output_shape().dims()) dims.push_back(d);
    *logits_out = Tensor<T>(Shape(dims), MemoryCategory::workspace);
  }
  W loss(0);
  recomputed_ = 0;
  for (index_t k = 0; k < slices; ++k) {
    auto [slice, slice_labels] = source(k * rows, rows);
    train_ctx_.first_sample = k * rows;
    Tensor<T> logits;
    {
      const SaveHookScope<T> kept(save_hook_);  // what the model keeps, as the techniques store it
      logits = chain_->forward(*model_, slice, train_ctx_);
      slice = Tensor<T>();  // held from here by the layers that keep it, if any
    }
    const std::vector<index_t> logits_shape = logits.shape().dims();
    {
      const MemoryOwner owner(loss_owner);
      // A sequence model's scores at every position are rows of the loss (next-token prediction), all averaged.
      loss = loss + loss_.forward(as_score_rows(logits), slice_labels, train_ctx_, n * positions());
    }
    if (logits_out && slices == 1) *logits_out = logits;
    else if (logits_out && !logits.is_dry())
      std::copy(logits.data(), logits.data() + logits.numel(), logits_out->data() + k * logits.numel());
    logits = Tensor<T>();  // the loss kept what it needs; the logits themselves are not needed for backward
    const SaveHookScope<T> kept(save_hook_);  // what recomputations in backward keep, too
    const MemoryPhaseScope backward(MemoryPhase::backward);
    Tensor<T> dlogits;
    {
      const MemoryOwner owner(loss_owner);
      dlogits = loss_.backward(update_->loss_scale());
      dlogits = dlogits.reshaped(Shape(logits_shape));
    }
    chain_->backward(*model_, std::move(dlogits), train_ctx_);
    recomputed_ += chain_->recomputed(*model_);
  }
  return loss;
}

template <class T>
typename Trainer<T>::W Trainer<T>::train_step(const Tensor<T>& x, const std::vector<std::int32_t>& labels, double lr) {
  return apply_update(forward_backward(x, labels), lr);
}

template <class T> typename Trainer<T>::W Trainer<T>::train_step(const StepExamples& e, double lr) {
  return apply_update(forward_backward(e.n, [&](index_t first, index_t count) {
    std::vector<std::int32_t> labels;
    Tensor<T> x = make_batch(*e.data, e.indices ? e.indices + first : nullptr, count, e.augment, *e.rng, labels);
    return std::pair{std::move(x), std::move(labels)};
  }, nullptr), lr);
}

template <class T> typename Trainer<T>::W Trainer<T>::apply_update(W loss, double lr) {
  if (!is_finite(loss)) {
    update_->skip();
    return loss;
  }
  const MemoryOwner owner(optimizer_owner);
  const MemoryPhaseScope phase(MemoryPhase::optimizer);
  if (update_->step(lr)) {
    MemoryLedger::Scope scope(ledger_);
    for (auto& h : hooks_) h->after_step(*model_, *update_, ledger_.dry_run());
  }
  return loss;
}

template <class T> std::int64_t Trainer<T>::total_steps(const Dataset& data) const {
  const std::int64_t per_epoch = data.count / config_.train.batch;
  return config_.train.steps > 0 ? config_.train.steps : per_epoch * config_.train.epochs;
}

template <class T> int Trainer<T>::epochs_to_run(const Dataset& data) const {
  const std::int64_t per_epoch = std::max<std::int64_t>(1, data.count / config_.train.batch);
  if (config_.train.steps <= 0) return config_.train.epochs;
  const std::int64_t steps = config_.train.steps;  // rounded up, without overflow near INT64_MAX
  return static_cast<int>(std::min<std::int64_t>(steps / per_epoch + (steps % per_epoch != 0), INT32_MAX));
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
  if (augment_epoch_ != epoch) augment_ = Rng(config_.seed, 2000 + static_cast<std::uint64_t>(epoch)), augment_epoch_ = epoch;
  const std::int64_t first = step - epoch * per_epoch;  // 0, unless resumed in flight
  if (first < 0 || first > per_epoch)
    throw std::logic_error("train_epoch: step " + std::to_string(step) + " is not in epoch " + std::to_string(epoch));
  for (std::int64_t b = first; b < per_epoch && step < total_steps; ++b) {
    if (step > 0) ledger_.record_timeline(false);  // a run's timeline: its setup and first step
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = learning_rate(spec.optimizer, spec.schedule, step, per_epoch, total_steps);
    train_ctx_.step = step;  // random layers draw by it (a resumed run draws as the uninterrupted one)
    const double loss =
        to_double(train_step(StepExamples{&data, order.data() + b * batch, batch, config_.data.augment, &augment_}, lr));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!on_step(step++, loss, lr, seconds)) break;
  }
  return step;
}

template <class T> void Trainer<T>::archive(StateArchive& a) {
  for_each_leaf(*model_, "model", [&](const std::string& name, Layer<T>& layer) {
    for (Param<T>* p : layer.params()) a.tensor(name + "/" + p->name, p->value);
    for (auto& [buffer, tensor] : layer.buffers()) a.tensor(name + "/" + buffer, *tensor);
  });
  update_->archive(a, "update");
  for (std::size_t i = 0; i < hooks_.size(); ++i)
    hooks_[i]->archive(a, "technique/" + std::to_string(i) + "-" + hook_types_[i]);
  a.value("loop/augment_epoch", augment_epoch_);
  a.value("loop/augment_stream", augment_);
  a.value("loop/recomputed", recomputed_);
}

template <class T> typename Trainer<T>::Evaluation Trainer<T>::evaluate(const Dataset& data, int batch) {
  ledger_.record_timeline(false);  // a run's timeline: its setup and first step
  Evaluation e;
  index_t correct = 0;
  double loss_sum = 0;
  std::vector<std::int64_t> order(static_cast<std::size_t>(data.count));
  for (std::int64_t i = 0; i < data.count; ++i) order[static_cast<std::size_t>(i)] = i;
  Rng unused(0);
  std::vector<std::int32_t> labels;
  for (std::int64_t start = 0; start < data.count; start += batch) {
    const index_t n = std::min<index_t>(batch, data.count - start);
    const MemoryPhaseScope phase(MemoryPhase::evaluation);
    const Tensor<T> x = make_batch(data, order.data() + start, n, Augment{}, unused, labels);
    const auto [batch_loss, batch_correct] = evaluate_batch(x, labels);
    loss_sum += batch_loss;
    correct += batch_correct;
  }
  if (data.count > 0) {  // per example, or per position of a sequence model
    const double predictions = static_cast<double>(data.count * positions());
    e.loss = loss_sum / predictions;
    e.accuracy = static_cast<double>(correct) / predictions;
  }
  return e;
}

template <class T> Tensor<T> Trainer<T>::predict(const Tensor<T>& x) {
  MemoryLedger::Scope scope(ledger_);
  const MemoryPhaseScope phase(MemoryPhase::evaluation);
  return model_->forward(x, eval_ctx_);
}

template <class T>
std::pair<double, index_t> Trainer<T>::evaluate_batch(const Tensor<T>& x, const std::vector<std::int32_t>& labels) {
  MemoryLedger::Scope scope(ledger_);
  const MemoryPhaseScope phase(MemoryPhase::evaluation);
  const Tensor<T> logits = as_score_rows(predict(x));
  const MemoryOwner owner(loss_owner);
  const double loss = to_double(loss_.forward(logits, labels, eval_ctx_)) * static_cast<double>(logits.dim(0));
  return {loss, SoftmaxCrossEntropy<T>::correct(logits, labels)};
}

namespace {

// One step of the run's study as dry_step describes it; with data, a real one on its first examples (the memory
// timeline a run measures), else a dry one.
template <class T>
MemoryLedger one_step(const RunConfig& run, const MakeChainRunner<T>* chain, std::int64_t* recomputed, bool timeline,
                      const DataSplit* data) {
  MemoryLedger ledger;
  ledger.set_dry_run(!data);
  ledger.record_timeline(timeline);
  std::unique_ptr<Trainer<T>> made = std::make_unique<Trainer<T>>(run, ledger, chain);
  Trainer<T>& trainer = *made;
  const Dataset none;  // a dry batch reads no data
  const Dataset& train = data ? data->train : none;
  const Dataset& test = data ? data->test : none;
  std::vector<std::int64_t> first(static_cast<std::size_t>(std::max(run.train.batch, run.train.eval_batch)));
  for (std::size_t i = 0; i < first.size(); ++i) first[i] = static_cast<std::int64_t>(i);
  const std::int64_t* indices = data ? first.data() : nullptr;
  Rng rng(0);
  std::vector<std::int32_t> labels;
  if (run.study == "train") {
    // As in Trainer::train_epoch: the step makes its examples batch or microbatch at a time.
    trainer.train_step(typename Trainer<T>::StepExamples{&train, indices, run.train.batch, Augment{}, &rng},
                       run.train.optimizer.lr);
    const MemoryPhaseScope phase(MemoryPhase::evaluation);
    const Tensor<T> x = trainer.make_batch(test, indices, run.train.eval_batch, Augment{}, rng, labels);
    trainer.evaluate_batch(x, labels);
  } else {
    const MemoryPhaseScope phase(MemoryPhase::forward);
    const Tensor<T> x = trainer.make_batch(train, indices, run.train.batch, Augment{}, rng, labels);
    Tensor<T> logits;  // the gradient study keeps the logits for its dump, through backward
    trainer.forward_backward(x, labels, &logits);
  }
  if (recomputed) *recomputed = trainer.recomputed_evaluations();
  ledger.record_timeline(false);  // the timeline ends with the step; tearing the trainer down is not part of it
  made.reset();  // the model's tensors go back to the ledger before it is returned
  return ledger;
}

}  // namespace

template <class T>
MemoryLedger dry_step(const RunConfig& run, const MakeChainRunner<T>* chain, std::int64_t* recomputed, bool timeline) {
  return one_step<T>(run, chain, recomputed, timeline, nullptr);
}

template <class T> MemoryLedger measured_step(const RunConfig& run, const DataSplit& data) {
  return one_step<T>(run, nullptr, nullptr, true, &data);
}

template <class T> std::size_t own_need(const RunConfig& run, const MemoryLedger& step) {
  MemoryLedger ledger;  // the model is built only for its shapes
  ledger.set_dry_run(true);
  const MemoryLedger::Scope scope(ledger);
  Sequential<T> model = build_model<T>(run.model);
  const auto bytes = [](index_t values) { return static_cast<std::size_t>(values) * sizeof(T); };
  const index_t slice = (run.train.batch + run.microbatches() - 1) / run.microbatches();
  std::size_t layer = 0;  // values in and out of the widest layer, per row
  Shape in = model.input_shape();
  for (std::size_t i = 0; i < model.size(); ++i) {
    const Shape out = model.layer(i).output_shape(in);
    layer = std::max(layer, static_cast<std::size_t>(in.numel() + out.numel()));
    in = out;
  }
  const std::size_t state = step.peak(MemoryCategory::weights) + step.peak(MemoryCategory::gradients) +
                            step.peak(MemoryCategory::optimizer_state);
  // A microbatched training step makes its slices one at a time (the input in memory is the slice's, the first
  // layer's); the gradient study cuts them from the whole batch, which it holds meanwhile.
  const bool whole_batch = run.study != "train" && run.microbatches() > 1;
  const std::size_t batch = whole_batch ? bytes(run.train.batch * model.input_shape().numel()) : 0;
  const std::size_t training =
      state + step.peak(MemoryCategory::saved_activations) + batch + bytes(slice * static_cast<index_t>(layer));
  const std::size_t evaluation = run.study == "train" ? state + bytes(run.train.eval_batch * static_cast<index_t>(layer)) : 0;
  return std::max(training, evaluation);
}

void check_techniques(const RunConfig& run, const ModelFacts& model) {
  bool dry_steps = false;
  for (const auto& t : run.techniques) {
    t->check_model(model);
    dry_steps = dry_steps || t->fitted_by_dry_steps();
  }
  if (dry_steps) dispatch_precision(run.precision, [&]<class T>() { dry_step<T>(run); });  // fits, or says why not
}

#define LOWMEM_INSTANTIATE_STEPS(T)                                                                   \
  template MemoryLedger dry_step<T>(const RunConfig&, const MakeChainRunner<T>*, std::int64_t*, bool); \
  template MemoryLedger measured_step<T>(const RunConfig&, const DataSplit&);                          \
  template std::size_t own_need<T>(const RunConfig&, const MemoryLedger&);
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_STEPS)

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Trainer)


}  // namespace lowmem
