#include "training/trainer.hpp"

#include <chrono>
#include <cmath>

#include "io/error.hpp"
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

template <class T>
Trainer<T>::Trainer(const RunConfig& config, MemoryLedger& ledger)
    : ledger_(ledger),
      config_(config),
      train_ctx_{true, config.accumulate},
      eval_ctx_{false, config.accumulate} {
  train_ctx_.reconstruct = config.uses("reversible");
  MemoryLedger::Scope scope(ledger_);
  model_ = std::make_unique<Sequential<T>>(build_model<T>(config.model));
  if (!ledger.dry_run()) model_->initialize(config.seed);
  optimizer_ = std::make_unique<Optimizer<T>>(config.train.optimizer, model_->params());
  if (const TechniqueSpec* c = config.find("checkpoint")) {
    const std::size_t n = model_->size();
    const auto sqrt_n = static_cast<std::size_t>(std::lround(std::sqrt(static_cast<double>(n))));
    checkpoint_ = std::make_unique<CheckpointExecutor<T>>(
        c->schedule == "revolve" ? revolve_schedule(n, static_cast<std::size_t>(c->slots))
                                 : uniform_schedule(n, c->segments > 0 ? static_cast<std::size_t>(c->segments)
                                                                       : std::max<std::size_t>(1, sqrt_n)));
  }
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
  Tensor<T> logits = checkpoint_ ? checkpoint_->forward(*model_, x, train_ctx_) : model_->forward(x, train_ctx_);
  const W loss = loss_.forward(logits, labels, train_ctx_);
  if (logits_out) *logits_out = logits;
  logits = Tensor<T>();  // the loss kept what it needs; the logits themselves are not needed for backward
  if (checkpoint_) checkpoint_->backward(*model_, loss_.backward(), train_ctx_);
  else model_->backward(loss_.backward(), train_ctx_);
  return loss;
}

template <class T>
typename Trainer<T>::W Trainer<T>::train_step(const Tensor<T>& x, const std::vector<std::int32_t>& labels, double lr) {
  const W loss = forward_backward(x, labels);
  if (is_finite(loss)) optimizer_->step(lr);
  return loss;
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

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Trainer)

}  // namespace lowmem
