#pragma once
// Studies turn one resolved run config into one results record. Each study is one function; the harness picks
// it by the config's "study" value, runs it, and commits the record to the results file.
#include <functional>
#include <string>

#include "io/results_file.hpp"
#include "tensor/memory_ledger.hpp"
#include "tensor/state_archive.hpp"
#include "training/run_config.hpp"
#include "training/trainer.hpp"

namespace lowmem {

// Called with short progress text ("epoch 1/3 step 120/937 loss 0.512"), as often as every training step. The
// harness's callback may throw to stop the run (Ctrl-C).
using Progress = std::function<void(const std::string&)>;

// What a run records besides its results, chosen on the command line (not part of the config, so run ids keep).
struct StudyOptions {
  // The memory timeline of the run's setup and first training step (train study only), in
  // /runs/<id>/memory/timeline.
  bool timeline = false;
  // A train run saved in flight (train.checkpoint_every): save_state receives its state after every
  // checkpoint_every-th step (Trainer::archive, and the study's position and curves so far); resume_from, if
  // given, is such a state to continue from, bit for bit as if the run had not stopped.
  std::function<void(const StateArchive&)> save_state;
  const StateArchive* resume_from = nullptr;
};

// Fills record.status ("complete" or "diverged"), message, curves, memory and summary columns. Throws
// lowmem::Error when the run cannot be done at all; the harness records that as "failed".
void run_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress,
               const StudyOptions& options = {});

// Studies, one per "study" value.
void run_train_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress,
                     const StudyOptions& options = {});
void run_gradient_study(const RunConfig& config, const DataSplit& data, RunRecord& record, const Progress& progress);
void run_reconstruction_study(const RunConfig& config, const DataSplit& data, RunRecord& record,
                              const Progress& progress);
// The reconstruction study's allocations, on a dry-run ledger (what `lowmem plan` predicts for it).
MemoryLedger reconstruction_memory(const RunConfig& config);

// Key of a reference computation shared by the runs of a sweep (gradient, reconstruction): the resolved config
// without what the runs vary (precision, accumulation, technique), plus what the reference is.
std::string reference_key(const std::string& config_json, const std::string& reference);

// A tensor widened to float64, in its own shape.
template <class T> RunRecord::Array widen(const Tensor<T>& t);

// The model's tensors as PyTorch holds them, widened to float64, named "<root>/<i>[/<child>...]/<name>" in model
// order (composite layers, residual blocks and couplings, by their children): the part after "<root>/" with '.'
// for '/' is the key of the PyTorch twin's state_dict (tests/torch_models.py). Every parameter, a sparse one dense
// again (zeros where pruned); with `grad_scale` > 0 its gradient too, as "grad_<name>", divided by grad_scale (a
// mixed-precision loss scale); with `buffers`, batch norm's running statistics.
struct ModelTensors {
  std::vector<std::string> names;  // the parameters', in model order
  std::map<std::string, RunRecord::Array> arrays;
};
template <class T>
ModelTensors model_tensors(Sequential<T>& model, const std::string& root, double grad_scale, bool buffers);

// The memory columns every study reports: per-category peaks from the ledger, and the process's peak RSS.
void record_memory(const MemoryLedger& ledger, RunRecord& record);
// The ledger's recorded timeline: memory/timeline/events (events x 7: kind, category, from, phase, owner, buffer,
// bytes), memory/timeline/setup_events (events before the step), memory/timeline/columns, /kinds, /phases and
// /owners (names the indices refer to; categories are memory/categories).
void record_timeline(const MemoryLedger& ledger, RunRecord& record);

}  // namespace lowmem
