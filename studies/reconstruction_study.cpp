// Study "reconstruction": how rounding error builds up when a reversible network rebuilds its activations from
// its output (Hascoet et al., PAPERS.md section 3), per precision, against a multiprecision reference.
//
// On the first `train.batch` training examples in data order: a training-mode forward (batch statistics, running
// statistics untouched) in the run's precision keeps every activation x_0 .. x_L of the model's chain. Then each
// run of invertible layers is inverted from its last output, layer by layer: x^_i = layer_i^-1(x^_{i+1}). A
// coupling block is one layer here, so revnet and hybrid networks are inverted block by block, flat ones layer by
// layer. Per inverted layer i, in forward order, for the rebuilt input x^_i:
//   snr                          mean(x_i^2) / mean((x_i - x^_i)^2), x_i the same precision's forward (Hascoet)
//   rel_error_self               ||x^_i - x_i|| / ||x_i||
//   rel_error_reference          ||x^_i - r_i|| / ||r_i||, r_i the reference precision's forward (default mp)
//   forward_rel_error_reference  ||x_i - r_i|| / ||r_i||: the forward's own rounding, which the inverse starts from
//   alpha                        snr_i / snr_{i+1}: SNR of the layer's rebuilt input over that of its rebuilt
//                                output (NaN for the last layer of a run, whose output is the forward's own)
// Weights: as initialised from the seed, or ("weights": "trained") after the config's training in f32 with
// stored activations, rounded once into each precision: the same network in every precision and the reference.
#include <cmath>
#include <map>

#include "numerics/error.hpp"
#include "techniques/registry.hpp"
#include "study.hpp"

namespace lowmem {

namespace {


// The chain's activations x_0 (input) .. x_L (logits) of one training-mode forward.
// Keeps only what the inverses need (invertible batch norm's batch statistics): every activation is held here.
const RunContext forward_ctx{true, Accumulate::f32, /*update_statistics=*/false, RunContext::Keep::for_inverse};

template <class T> std::vector<Tensor<T>> forward_activations(Sequential<T>& model, Tensor<T> x, Accumulate accumulate) {
  RunContext ctx = forward_ctx;
  ctx.accumulate = accumulate;
  std::vector<Tensor<T>> acts{x};
  for (std::size_t i = 0; i < model.size(); ++i) acts.push_back(model.layer(i).forward(acts.back(), ctx));
  return acts;
}

// Parameters after the config's training in f32 (stored activations), widened to double: computed once per
// process for the runs of a precision sweep. Throws if the training diverges.
using Parameters = std::vector<std::vector<double>>;
const Parameters& trained_parameters(const RunConfig& config, const std::string& key, const DataSplit& data,
                                     const Progress& progress) {
  static std::map<std::string, Parameters> cache;
  Parameters& slot = cache[key];
  if (!slot.empty()) return slot;
  RunConfig f32 = config;
  f32.precision = Precision::f32;
  f32.accumulate = Accumulate::f32;
  f32.techniques = store_all_only();
  MemoryLedger ledger;
  Trainer<float> trainer(f32, ledger);
  const std::int64_t total = trainer.total_steps(data.train);
  std::int64_t step = 0;
  for (int epoch = 0; epoch < trainer.epochs_to_run(data.train) && step < total; ++epoch)
    step = trainer.train_epoch(data.train, epoch, step, total, [&](std::int64_t s, double loss, double, double) {
      if (!std::isfinite(loss))
        throw Error("reconstruction.weights \"trained\": the f32 training diverged at step " + std::to_string(s));
      if (progress && s % 20 == 0) progress("training the weights in f32: step " + std::to_string(s + 1) + "/" +
                                            std::to_string(total) + " loss " + std::to_string(loss));
      return true;
    });
  for (Param<float>* p : trainer.model().params()) slot.emplace_back(p->value.data(), p->value.data() + p->value.numel());
  return slot;
}

template <class T> void load_parameters(Sequential<T>& model, const Parameters& values) {
  const auto params = model.params();
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < params[k]->value.numel(); ++i)
      params[k]->value[i] = round_to<T>(values[k][static_cast<std::size_t>(i)]);
}

// Sums over all elements, in mp: exact enough for every precision, the mp run included.
struct Sums {
  mp signal = 0, error = 0;
};
template <class A, class B> Sums sums(const Tensor<A>& approximate, const Tensor<B>& truth) {
  Sums s;
  for (index_t i = 0; i < truth.numel(); ++i) {
    const mp t = round_to<mp>(truth[i]), d = round_to<mp>(approximate[i]) - t;
    s.signal += t * t;
    s.error += d * d;
  }
  return s;
}
double snr_of(const Sums& s) { return to_double(mp(s.signal / s.error)); }  // error 0: +inf
double rel_of(const Sums& s) { return to_double(mp(sqrt(s.error / s.signal))); }

struct ReferenceCache {
  std::unique_ptr<MemoryLedger> ledger = std::make_unique<MemoryLedger>();  // declared first: outlives the tensors
  std::vector<Tensor<mp>> activations;
};

template <class R> std::vector<Tensor<mp>> widened(const std::vector<Tensor<R>>& acts, MemoryLedger& ledger) {
  MemoryLedger::Scope scope(ledger);
  std::vector<Tensor<mp>> out;
  for (const Tensor<R>& a : acts) {
    Tensor<mp> w(a.shape(), MemoryCategory::workspace);
    for (index_t i = 0; i < a.numel(); ++i) w[i] = round_to<mp>(a[i]);
    out.push_back(w);
  }
  return out;
}

// The reference activations are the same config's forward in the reference precision: computed once per process
// and shared by the runs of a precision sweep. Key: the resolved config without precision, accumulation, technique.
std::map<std::string, ReferenceCache>& reference_cache() {
  static std::map<std::string, ReferenceCache> cache;
  return cache;
}

template <class R>
std::vector<Tensor<mp>> reference_in(const RunConfig& config, const DataSplit& data, const Parameters* weights,
                                     MemoryLedger& ledger) {
  RunConfig ref = config;
  ref.precision = precision_of<R>();
  ref.accumulate = Accumulate::f32;
  MemoryLedger scratch;
  Trainer<R> trainer(ref, scratch);
  if (weights) load_parameters(trainer.model(), *weights);
  MemoryLedger::Scope scope(scratch);
  return widened(forward_activations(trainer.model(), trainer.first_batch(data.train), ref.accumulate), ledger);
}

// The study's computation on the run's ledger: the forward keeping every activation, then each run of invertible
// layers inverted from its end, layer by layer. visit(i, rebuilt x^_i, forward x_i, last_of_run) for every inverted
// layer. In a dry run (plan) the same tensors are allocated and nothing is computed or visited.
// The reference activations for this run: cached; this run's own if it is in the reference precision.
template <class T>
const std::vector<Tensor<mp>>& reference_for(const RunConfig& config, RunRecord& record, const DataSplit& data,
                                             const Parameters* weights, const std::vector<Tensor<T>>& acts,
                                             const Progress& progress) {
  const Precision r = parse_precision(config.reconstruction.reference);
  ReferenceCache& slot = reference_cache()[reference_key(record.config_json, to_string(r))];
  if (!slot.activations.empty()) return slot.activations;
  if (r == config.precision && config.accumulate == Accumulate::f32) {
    slot.activations = widened(acts, *slot.ledger);
  } else {
    if (progress) progress("reference forward in " + to_string(r));
    slot.activations = dispatch_precision(r, [&]<class R>() { return reference_in<R>(config, data, weights, *slot.ledger); });
  }
  return slot.activations;
}

template <class T, class Visit>
void forward_and_invert(Trainer<T>& trainer, const RunConfig& config, const DataSplit& data, const Progress& progress,
                        std::vector<Tensor<T>>& acts, Visit&& visit) {
  Sequential<T>& model = trainer.model();
  MemoryLedger::Scope scope(trainer.ledger());
  if (progress) progress("forward in " + to_string(config.precision));
  acts = forward_activations(model, trainer.first_batch(data.train), config.accumulate);
  for (std::size_t end = model.size(); end > 0;) {  // layers [i, end) form a run of invertible layers
    if (!model.invertible(end - 1)) {
      --end;
      continue;
    }
    if (progress) progress("inverting from layer " + std::to_string(end - 1));
    Tensor<T> rebuilt = acts[end];
    std::size_t i = end;
    while (i > 0 && model.invertible(i - 1)) {
      --i;
      rebuilt = model.invertible(i)->inverse(rebuilt);
      if (!rebuilt.is_dry()) visit(i, rebuilt, acts[i], i + 1 == end);
    }
    end = i;
  }
}

template <class T>
void reconstruct(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress) {
  const Parameters* weights = nullptr;
  if (config.reconstruction.weights == "trained")
    weights = &trained_parameters(config, reference_key(record.config_json, "trained in f32"), data, progress);
  record.labels["weights"] = config.reconstruction.weights;
  MemoryLedger ledger;
  Trainer<T> trainer(config, ledger);
  Sequential<T>& model = trainer.model();
  if (weights) {
    load_parameters(model, *weights);
    record.scalars["training_steps"] = static_cast<double>(trainer.total_steps(data.train));
  }
  std::vector<Tensor<T>> acts;
  const std::vector<Tensor<mp>>* reference = nullptr;
  struct Result {
    double snr, self, ref, forward;
    bool last_of_run;
  };
  std::map<std::size_t, Result> results;  // by layer index: forward order
  forward_and_invert(trainer, config, data, progress, acts,
                     [&](std::size_t i, const Tensor<T>& rebuilt, const Tensor<T>& forward, bool last_of_run) {
    if (!reference && config.reconstruction.reference != "none")
      reference = &reference_for(config, record, data, weights, acts, progress);
    const Sums self = sums(rebuilt, forward);
    results[i] = {snr_of(self), rel_of(self), reference ? rel_of(sums(rebuilt, (*reference)[i])) : NAN,
                  reference ? rel_of(sums(forward, (*reference)[i])) : NAN, last_of_run};
  });
  if (results.empty())
    throw Error("study reconstruction: model (" + config.model.arch + ") has no invertible layers to invert");

  std::vector<std::string> names;
  std::vector<double> snr, rel_self, rel_ref, forward_ref, alpha;
  for (auto it = results.begin(); it != results.end(); ++it) {
    const Result& r = it->second;
    names.push_back(model.layer(it->first).label());
    snr.push_back(r.snr);
    rel_self.push_back(r.self);
    rel_ref.push_back(r.ref);
    forward_ref.push_back(r.forward);
    alpha.push_back(r.last_of_run ? NAN : r.snr / std::next(it)->second.snr);
  }
  if (reference) record.labels["reference"] = config.reconstruction.reference;
  record.string_arrays["reconstruction/layer_names"] = names;
  record.arrays["reconstruction/snr"] = {snr, {}};
  record.arrays["reconstruction/rel_error_self"] = {rel_self, {}};
  record.arrays["reconstruction/rel_error_reference"] = {rel_ref, {}};
  record.arrays["reconstruction/forward_rel_error_reference"] = {forward_ref, {}};
  record.arrays["reconstruction/alpha"] = {alpha, {}};
  // The deepest reconstruction: the input of the first inverted layer, rebuilt through every layer after it.
  record.scalars["inverted_layers"] = static_cast<double>(names.size());
  record.scalars["input_snr"] = snr.front();
  record.scalars["input_rel_error_self"] = rel_self.front();
  record.scalars["input_rel_error_reference"] = rel_ref.front();
  record.scalars["parameters"] = static_cast<double>(model.parameter_count());
  record_memory(ledger, record);
  record.status = "complete";
}

template <class T> MemoryLedger dry_reconstruction(const RunConfig& config) {
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  Trainer<T> trainer(config, ledger);
  const DataSplit none;  // a dry batch reads no data
  std::vector<Tensor<T>> acts;
  forward_and_invert(trainer, config, none, nullptr, acts, [](auto&&...) {});
  return ledger;
}

}  // namespace

void run_reconstruction_study(const RunConfig& config, const DataSplit& data, RunRecord& record,
                              const Progress& progress) {
  dispatch_precision(config.precision, [&]<class T>() { reconstruct<T>(config, data, record, progress); });
}

MemoryLedger reconstruction_memory(const RunConfig& config) {
  return dispatch_precision(config.precision, [&]<class T>() { return dry_reconstruction<T>(config); });
}

}  // namespace lowmem
