#pragma once
#include <string>
#include <vector>

#include "runner.hpp"

namespace lowmem {

// Memory a run will need, by ledger category, predicted before any training.
struct MemoryPrediction {
  std::size_t weights = 0, gradients = 0, optimizer_state = 0, saved_activations = 0, workspace = 0, peak = 0;
  std::int64_t recomputed_evaluations = 0;  // forward layer evaluations per step beyond one per layer
  std::size_t own_need = 0;                 // what the techniques themselves require (training/trainer.hpp)
};
MemoryPrediction predict_memory(const RunConfig& run);

// The runs at `positions` of the sweep, with what each will need; `statuses` (of an existing results file) adds
// whether run --resume would skip each.
std::string plan_table(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                       const std::map<std::string, std::string>& statuses);
std::string plan_json(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                      const std::map<std::string, std::string>& statuses);
// Per run, the memory timeline of its dry step: the moment of the peak (the event, its phase and owner) and the
// `top` largest buffers alive at it with their owners. Throws Error for a study without a step (reconstruction).
std::string plan_timeline(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                          std::size_t top = 15);
// The same as JSON, with every event of each timeline (columns), for plots/plot_timeline.py.
std::string plan_timeline_json(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions);

}  // namespace lowmem
