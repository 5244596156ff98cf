#pragma once
#include <string>
#include <vector>

#include "runner.hpp"

namespace lowmem {

// Memory a run will need, by ledger category, predicted before any training.
struct MemoryPrediction {
  std::size_t weights = 0, gradients = 0, optimizer_state = 0, saved_activations = 0, workspace = 0, peak = 0;
  std::int64_t recomputed_evaluations = 0;  // forward layer evaluations per step beyond one per layer
};
MemoryPrediction predict_memory(const RunConfig& run);

// The runs at `positions` of the sweep, with what each will need; `statuses` (of an existing results file) adds
// whether run --resume would skip each.
std::string plan_table(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                       const std::map<std::string, std::string>& statuses);
std::string plan_json(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                      const std::map<std::string, std::string>& statuses);

}  // namespace lowmem
