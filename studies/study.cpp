#include "study.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "techniques/registry.hpp"

namespace lowmem {

void run_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress,
               const StudyOptions& options) {
  if (options.timeline && config.study != "train")
    throw Error("run --timeline: the " + config.study + " study records no timeline (only the train study does; "
                "lowmem plan --timeline shows the gradient study's)");
  record.labels["study"] = config.study;
  record.labels["precision"] = to_string(config.precision);
  record.labels["name"] = config.name;
  record.labels["model"] = config.model.arch;
  record.scalars["seed"] = static_cast<double>(config.seed);  // exact: seeds are below 2^53 (run_config.cpp)
  record.labels["technique"] = techniques_label(config.techniques);  // "store_all", "checkpoint-revolve-2+microbatch-4"
  record.labels["technique_label"] = techniques_readable(config.techniques);  // "microbatch(4) + checkpoint(revolve,2)"
  if (config.study == "train") run_train_study(config, data, record, progress, options);
  else if (config.study == "gradient") run_gradient_study(config, data, record, progress);
  else if (config.study == "reconstruction") run_reconstruction_study(config, data, record, progress);
  else throw Error("unknown study \"" + config.study + "\"");
  // Pixel-wise memory cost (Hascoet et al.): peak memory per image of the batch, per input pixel (text: per token).
  const double pixels = static_cast<double>(std::min<std::int64_t>(config.train.batch, data.train.count)) *
                        static_cast<double>(config.model.positions());
  record.scalars["pixel_memory_bytes"] = record.scalars.at("peak_bytes") / pixels;
  record.scalars["pixel_activation_bytes"] = record.scalars.at("activation_peak_bytes") / pixels;
}

std::string reference_key(const std::string& config_json, const std::string& reference) {
  nlohmann::json key = nlohmann::json::parse(config_json);
  for (const char* k : {"precision", "accumulate", "technique"}) key.erase(k);
  key["reference"] = reference;
  return key.dump();
}

template <class T> RunRecord::Array widen(const Tensor<T>& t) {
  RunRecord::Array a;
  for (index_t d : t.shape().dims()) a.shape.push_back(static_cast<std::uint64_t>(d));
  a.values.resize(static_cast<std::size_t>(t.numel()));
  for (index_t i = 0; i < t.numel(); ++i) a.values[static_cast<std::size_t>(i)] = to_double(t[i]);
  return a;
}

namespace {

// A parameter's value or gradient in its dense shape: a sparse one's entries put back where its pattern says.
template <class T> RunRecord::Array dense(const Tensor<T>& t, const Param<T>& p) {
  RunRecord::Array a = widen(t);
  if (!p.pattern) return a;
  const SparsePattern& s = *p.pattern;
  std::vector<double> values(static_cast<std::size_t>(s.rows * s.cols), 0.0);
  for (index_t r = 0; r < s.rows; ++r)
    for (index_t e = s.row_start[r]; e < s.row_start[r + 1]; ++e)
      values[static_cast<std::size_t>(r * s.cols + s.column[e])] = a.values[static_cast<std::size_t>(e)];
  a.values = std::move(values);
  a.shape.assign(p.dense_shape.dims().begin(), p.dense_shape.dims().end());
  return a;
}

}  // namespace

template <class T>
ModelTensors model_tensors(Sequential<T>& model, const std::string& root, double grad_scale, bool buffers) {
  ModelTensors out;
  for_each_leaf(model, root, [&](const std::string& prefix, Layer<T>& layer) {
    for (Param<T>* p : layer.params()) {
      // A dotted name (attention's "out_proj.weight", PyTorch's submodule) is a path: prefix/out_proj/weight.
      std::string path = p->name;
      std::replace(path.begin(), path.end(), '.', '/');
      const std::size_t leaf = path.rfind('/') + 1;  // 0 without a slash
      const std::string name = prefix + "/" + path;
      out.names.push_back(name);
      out.arrays[name] = dense(p->value, *p);
      if (grad_scale <= 0) continue;
      RunRecord::Array grad = dense(p->grad, *p);
      for (double& g : grad.values) g /= grad_scale;
      out.arrays[prefix + "/" + path.substr(0, leaf) + "grad_" + path.substr(leaf)] = std::move(grad);
    }
    if (buffers)
      for (const auto& [name, tensor] : layer.buffers()) out.arrays[prefix + "/" + name] = widen(*tensor);
  });
  return out;
}

#define LOWMEM_INSTANTIATE_MODEL_TENSORS(T)                      \
  template RunRecord::Array widen<T>(const Tensor<T>&);          \
  template ModelTensors model_tensors<T>(Sequential<T>&, const std::string&, double, bool);
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_MODEL_TENSORS)
#undef LOWMEM_INSTANTIATE_MODEL_TENSORS

void record_memory(const MemoryLedger& ledger, RunRecord& record) {
  std::vector<std::string> names;
  RunRecord::Array peaks, at_peak;
  for (std::size_t i = 0; i < memory_category_count; ++i) {
    const auto c = static_cast<MemoryCategory>(i);
    names.emplace_back(to_string(c));
    peaks.values.push_back(static_cast<double>(ledger.peak(c)));
    at_peak.values.push_back(static_cast<double>(ledger.at_total_peak(c)));
  }
  record.string_arrays["memory/categories"] = names;
  record.arrays["memory/peak_bytes"] = peaks;
  record.arrays["memory/at_total_peak_bytes"] = at_peak;
  record.scalars["peak_bytes"] = static_cast<double>(ledger.peak_total());
  record.scalars["activation_peak_bytes"] = static_cast<double>(ledger.peak(MemoryCategory::saved_activations));
  record.scalars["weights_bytes"] = static_cast<double>(ledger.peak(MemoryCategory::weights));
  record.scalars["gradients_bytes"] = static_cast<double>(ledger.peak(MemoryCategory::gradients));
  record.scalars["optimizer_state_bytes"] = static_cast<double>(ledger.peak(MemoryCategory::optimizer_state));
  record.scalars["workspace_peak_bytes"] = static_cast<double>(ledger.peak(MemoryCategory::workspace));
  record.scalars["rss_peak_bytes"] = static_cast<double>(process_peak_rss_bytes());
}

void record_timeline(const MemoryLedger& ledger, RunRecord& record) {
  RunRecord::Array events;
  for (const MemoryEvent& e : ledger.events())
    for (double v : {static_cast<double>(e.kind), static_cast<double>(e.category), static_cast<double>(e.from),
                     static_cast<double>(e.phase), static_cast<double>(e.owner), static_cast<double>(e.buffer),
                     static_cast<double>(e.bytes)})
      events.values.push_back(v);
  events.shape = {ledger.events().size(), 7};
  record.arrays["memory/timeline/events"] = events;
  // Events of setup, before the step: the peak is sought after them, as the ledger's peak is.
  record.arrays["memory/timeline/setup_events"] = {{static_cast<double>(ledger.peaks_reset_at())}, {}};
  record.string_arrays["memory/timeline/columns"] = {"kind", "category", "from", "phase", "owner", "buffer", "bytes"};
  record.string_arrays["memory/timeline/kinds"] = {"allocate", "release", "move"};
  std::vector<std::string> phases;
  for (std::size_t p = 0; p < memory_phase_count; ++p) phases.emplace_back(to_string(static_cast<MemoryPhase>(p)));
  record.string_arrays["memory/timeline/phases"] = phases;
  record.string_arrays["memory/timeline/owners"] = ledger.owners();
}

}  // namespace lowmem
