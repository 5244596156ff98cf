// Planning a sweep: the config expanded into runs (PlannedRun, with their ids), every run's model checked against
// its techniques before the first starts, the check of the data against a model, and --shard's positions.
// (The `lowmem plan` table and memory prediction are in plan.cpp.)
#include "runner.hpp"

#include <cstdio>
#include <map>

#include "io/config_reader.hpp"
#include "io/limits.hpp"
#include "io/sweep.hpp"
#include "numerics/error.hpp"
#include "training/model_factory.hpp"

namespace lowmem {

std::string run_id(const nlohmann::json& resolved) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : resolved.dump()) hash = (hash ^ c) * 0x100000001b3ULL;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

std::vector<PlannedRun> plan_runs(const std::string& config_file, const std::vector<std::string>& overrides) {
  nlohmann::json config = read_json_file(config_file);
  for (const std::string& o : overrides) apply_override(config, o);
  const std::vector<std::string> swept = swept_paths(config);
  std::vector<PlannedRun> runs;
  std::map<std::string, std::size_t> seen;
  for (nlohmann::json& resolved : expand_sweep(config, config_file)) {
    nlohmann::json effective;
    RunConfig parsed = parse_run_config(resolved, config_file, &effective);
    PlannedRun run{run_id(effective), effective, std::move(parsed), {}};
    for (const std::string& path : swept) {  // the effective value (defaults filled in), else the one the sweep set
      const nlohmann::json* value = find_path(effective, path);
      if (!value) value = find_path(resolved, path);
      if (value) run.swept.emplace_back(path, *value);
    }
    validate_model(run.parsed, config_file);
    if (auto [it, fresh] = seen.emplace(run.id, runs.size()); !fresh)
      throw Error(config_file + ": /sweep: runs " + std::to_string(it->second + 1) + " and " +
                  std::to_string(runs.size() + 1) + " are the same config (a sweep value is repeated, or is the default)");
    runs.push_back(std::move(run));
  }
  return runs;
}

void check_data_fits(const RunConfig& run, const DataSplit& data) {
  const Shape examples(data.train.example_shape());
  if (examples != run.model.input)
    throw Error("data " + data.train.source + " has " + (data.train.tokens ? "windows" : "images") + " of shape " +
                examples.str() + " but model.input is " + run.model.input.str());
  if (data.train.classes > run.model.classes)
    throw Error("data " + data.train.source + " has " + std::to_string(data.train.classes) +
                " classes but model.classes is " + std::to_string(run.model.classes));
  if (run.train.batch > data.train.count)
    throw Error("train.batch " + std::to_string(run.train.batch) + " is larger than the training set (" +
                std::to_string(data.train.count) + " examples in " + data.train.source + ")");
}

namespace {

std::string text_bytes(long double b) {
  char s[64];
  std::snprintf(s, sizeof s, "%.0Lf bytes", b);
  return s;
}

std::int64_t value_bytes(Precision p) {
  return dispatch_precision(p, []<class T>() { return static_cast<std::int64_t>(sizeof(T)); });
}

// A lower bound on a run's memory, known before any step: its weights and one input batch (and a synthetic data
// set). Past the limit (the machine's memory by default) the run could not even start, and a dry step over such
// sizes takes long itself.
void check_memory_limit(const RunConfig& run, Sequential<float>& model) {
  const long double bytes = static_cast<long double>(value_bytes(run.precision));
  long double weights = 0;
  for (const Param<float>* p : model.params()) weights += static_cast<long double>(p->value.numel()) * bytes;
  const long double batch = static_cast<long double>(run.train.batch) * run.model.input.numel() * bytes;
  const std::int64_t limit = memory_limit_bytes();
  if (weights + batch > static_cast<long double>(limit))
    throw Error("the weights (" + text_bytes(weights) + ") and one input batch of /train/batch " +
                std::to_string(run.train.batch) + " (" + text_bytes(batch) + ") alone exceed the memory limit of " +
                text_bytes(limit) + " (" +
                (limits().memory_bytes ? "--limit memory" : "this machine's memory") + "; " + raise_hint("memory") + ")");
  // A synthetic data set is generated in memory (float32 pixels, int32 labels): its size is known now too.
  if (run.data.dataset == "synthetic") {
    const long double examples = static_cast<long double>(run.data.synthetic.count) + run.data.synthetic_test;
    const long double data = examples * (static_cast<long double>(run.model.input.numel()) * 4 + 4);
    if (data + weights > static_cast<long double>(limit))
      throw Error("/data/synthetic: " + std::to_string(run.data.synthetic.count) + " + " +
                  std::to_string(run.data.synthetic_test) + " examples need " + text_bytes(data) +
                  ", more than the memory limit of " + text_bytes(limit) + " (" +
                  raise_hint("memory") + ")");
  }
}

}  // namespace

void validate_model(const RunConfig& run, const std::string& config_file) {
  // Shapes are checked while the model is built; a dry-run ledger keeps this free of real allocations.
  MemoryLedger ledger;
  ledger.set_dry_run(true);
  MemoryLedger::Scope scope(ledger);
  try {
    Sequential<float> model = build_model<float>(run.model);
    bool any_invertible = false, any_recurrent = false;
    for (std::size_t i = 0; i < model.size(); ++i) {
      any_invertible = any_invertible || model.invertible(i);
      any_recurrent = any_recurrent || std::string(model.layer(i).kind()) == "lstm";
    }
    check_techniques(run, ModelFacts{run.model.arch, model.size(), any_invertible, any_recurrent});
    check_memory_limit(run, model);
    if (run.study == "reconstruction" && !any_invertible)
      throw Error("/study: \"reconstruction\" inverts invertible layers, and model (" + run.model.arch + ") has none " +
                  "(invertible: " + invertible_layer_types + ")");
  } catch (const Error& e) {
    throw Error(config_file + ": " + e.what());
  }
}

std::vector<std::size_t> shard_positions(std::size_t runs, const Shard& shard) {
  std::vector<std::size_t> positions;
  for (std::size_t k = shard.index; k < runs; k += shard.count) positions.push_back(k);
  return positions;
}

}  // namespace lowmem
