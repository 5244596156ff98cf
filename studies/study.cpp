#include "study.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "numerics/error.hpp"
#include "techniques/registry.hpp"

namespace lowmem {

void run_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress) {
  record.labels["study"] = config.study;
  record.labels["precision"] = to_string(config.precision);
  record.labels["name"] = config.name;
  record.labels["model"] = config.model.arch;
  record.labels["seed"] = std::to_string(config.seed);
  record.labels["technique"] = techniques_label(config.techniques);  // "store_all", "checkpoint-revolve-2+microbatch-4"
  if (config.study == "train") run_train_study(config, data, record, progress);
  else if (config.study == "gradient") run_gradient_study(config, data, record, progress);
  else if (config.study == "reconstruction") run_reconstruction_study(config, data, record, progress);
  else throw Error("unknown study \"" + config.study + "\"");
  // Pixel-wise memory cost (Hascoet et al.): peak memory per image of the batch, per input pixel.
  const double pixels = static_cast<double>(std::min<std::int64_t>(config.train.batch, data.train.count)) *
                        static_cast<double>(config.model.input[1] * config.model.input[2]);
  record.scalars["pixel_memory_bytes"] = record.scalars.at("peak_bytes") / pixels;
  record.scalars["pixel_activation_bytes"] = record.scalars.at("activation_peak_bytes") / pixels;
}

std::string reference_key(const std::string& config_json, const std::string& reference) {
  nlohmann::json key = nlohmann::json::parse(config_json);
  for (const char* k : {"precision", "accumulate", "technique"}) key.erase(k);
  key["reference"] = reference;
  return key.dump();
}

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

}  // namespace lowmem
