// Study "gradient": one forward and backward pass on the first `train.batch` training examples in data order,
// no update. Dumps, in float64 and PyTorch's layouts, the input, labels, logits, loss and every parameter with
// its gradient, and compares them with the same computation in the reference precision (default mp).
#include <cmath>
#include <functional>
#include <map>

#include "numerics/error.hpp"
#include "techniques/registry.hpp"
#include "techniques/store_all.hpp"
#include "study.hpp"

namespace lowmem {

namespace {

// Everything one precision computes, widened to double.
struct GradientDump {
  RunRecord::Array input, logits;
  std::vector<double> labels;
  double loss = 0;
  std::vector<std::string> names;            // "layers/<i>[/<child>]/<param>", in model order
  std::map<std::string, RunRecord::Array> tensors;  // weight, bias, grad_weight, grad_bias per name
  MemoryLedger ledger;
  std::int64_t recomputed = 0;  // forward layer evaluations beyond one per layer (checkpointing)
};

template <class T> std::unique_ptr<GradientDump> compute(const RunConfig& config, const DataSplit& data) {
  auto dump = std::make_unique<GradientDump>();
  Trainer<T> trainer(config, dump->ledger);
  std::vector<std::int32_t> labels;
  const Tensor<T> x = trainer.first_batch(data.train, &labels);
  Tensor<T> logits;
  dump->loss = to_double(trainer.forward_backward(x, labels, &logits));
  dump->recomputed = trainer.recomputed_evaluations();
  dump->input = widen(x);
  dump->logits = widen(logits);
  dump->labels.assign(labels.begin(), labels.end());
  // Gradients of mixed precision are scaled by a power of two: divided back exactly.
  ModelTensors tensors = model_tensors(trainer.model(), "layers", trainer.loss_scale(), false);
  dump->names = std::move(tensors.names);
  dump->tensors = std::move(tensors.arrays);
  return dump;
}

std::unique_ptr<GradientDump> compute_in(Precision p, const RunConfig& config, const DataSplit& data) {
  return dispatch_precision(p, [&]<class T>() { return compute<T>(config, data); });
}

// ||a - b|| / ||b||, and the angle between a and b in degrees. The angle is 2 atan2(|a^ - b^|, |a^ + b^|) of the
// unit vectors: accurate for tiny angles, where acos of the cosine has a floor near 1e-6 degrees.
std::pair<double, double> compare(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm_a = 0, norm_b = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm_a += a[i] * a[i];
    norm_b += b[i] * b[i];
  }
  const double relative = norm_b > 0 ? std::sqrt(diff / norm_b) : std::sqrt(diff);
  if (norm_a == 0 || norm_b == 0) return {relative, 0.0};
  double minus = 0, plus = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double ua = a[i] / std::sqrt(norm_a), ub = b[i] / std::sqrt(norm_b);
    minus += (ua - ub) * (ua - ub);
    plus += (ua + ub) * (ua + ub);
  }
  return {relative, 2 * std::atan2(std::sqrt(minus), std::sqrt(plus)) * 180.0 / M_PI};
}

// The reference is the same config in the reference precision with stored activations (store_all): computed once
// per process and shared by every run of a precision or technique sweep. Key: the resolved config without its
// precision and technique.
std::map<std::string, std::unique_ptr<GradientDump>>& reference_cache() {
  static std::map<std::string, std::unique_ptr<GradientDump>> cache;
  return cache;
}

void remember_reference(const std::string& config_json, Precision reference, const GradientDump& dump) {
  reference_cache()[reference_key(config_json, to_string(reference))] = std::make_unique<GradientDump>(dump);
}

const GradientDump& reference_for(const RunConfig& config, const std::string& config_json, const DataSplit& data,
                                  Precision reference) {
  auto& slot = reference_cache()[reference_key(config_json, to_string(reference))];
  if (!slot) {
    RunConfig ref = config;
    ref.precision = reference;
    ref.accumulate = Accumulate::f32;
    ref.techniques = store_all_only();
    slot = compute_in(reference, ref, data);
  }
  return *slot;
}

}  // namespace

void run_gradient_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress) {
  if (progress) progress("forward and backward in " + to_string(config.precision));
  const std::unique_ptr<GradientDump> dump = compute_in(config.precision, config, data);
  record.arrays["input"] = dump->input;
  record.arrays["labels"] = {dump->labels, {}};
  record.arrays["logits"] = dump->logits;
  record.arrays["loss"] = {{dump->loss}, {}};
  for (const auto& [name, array] : dump->tensors) record.arrays[name] = array;
  record.scalars["loss"] = dump->loss;
  record_memory(dump->ledger, record);
  record.scalars["recomputed_evaluations_per_step"] = static_cast<double>(dump->recomputed);
  record.status = std::isfinite(dump->loss) ? "complete" : "diverged";
  if (record.status == "diverged") record.message = "loss is not finite";

  if (config.gradient_reference == "none") return;
  const Precision reference = parse_precision(config.gradient_reference);
  if (reference == config.precision && config.accumulate == Accumulate::f32 && find_technique<StoreAll>(config.techniques)) {
    remember_reference(record.config_json, reference, *dump);  // later runs of the sweep compare with this one
    return;
  }
  if (progress && reference != config.precision) progress("reference gradients in " + to_string(reference));
  const GradientDump& ref = reference_for(config, record.config_json, data, reference);
  // Per layer: all of its parameter gradients as one vector. (A bias followed by batch norm has a true gradient
  // of exactly 0, so a per-tensor relative error would divide rounding noise by zero.)
  std::vector<std::string> layers;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> grads;  // layer -> (run, reference)
  for (const std::string& name : dump->names) {
    const std::string layer = name.substr(0, name.rfind('/'));
    const std::string grad = layer + "/grad_" + name.substr(name.rfind('/') + 1);
    if (!grads.count(layer)) layers.push_back(layer);
    auto& [mine, theirs] = grads[layer];
    const auto& a = dump->tensors.at(grad).values;
    const auto& b = ref.tensors.at(grad).values;
    mine.insert(mine.end(), a.begin(), a.end());
    theirs.insert(theirs.end(), b.begin(), b.end());
  }
  std::vector<double> relative, angles;
  double worst = 0;
  for (const std::string& layer : layers) {
    const auto [rel, angle] = compare(grads[layer].first, grads[layer].second);
    relative.push_back(rel);
    angles.push_back(angle);
    worst = std::max(worst, rel);
  }
  record.string_arrays["gradient_error/layers"] = layers;
  record.arrays["gradient_error/relative"] = {relative, {}};
  record.arrays["gradient_error/angle_degrees"] = {angles, {}};
  record.scalars["grad_max_rel_error"] = worst;
  record.scalars["logits_rel_error"] = compare(dump->logits.values, ref.logits.values).first;
  record.scalars["loss_abs_error"] = std::fabs(dump->loss - ref.loss);
  record.labels["reference"] = to_string(reference);
}

}  // namespace lowmem
