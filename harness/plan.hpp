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

std::string plan_table(const std::vector<PlannedRun>& runs);
std::string plan_json(const std::vector<PlannedRun>& runs);

}  // namespace lowmem
