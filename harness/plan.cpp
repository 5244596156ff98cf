#include "plan.hpp"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "io/sweep.hpp"
#include "numerics/error.hpp"
#include "study.hpp"
#include "techniques/registry.hpp"
#include "tensor/memory_timeline.hpp"
#include "training/trainer.hpp"

namespace lowmem {

MemoryPrediction predict_memory(const RunConfig& run) {
  MemoryPrediction p;
  const MemoryLedger ledger =
      run.study == "reconstruction"
          ? reconstruction_memory(run)
          : dispatch_precision(run.precision, [&]<class T>() {
              MemoryLedger step = dry_step<T>(run, nullptr, &p.recomputed_evaluations);
              p.own_need = own_need<T>(run, step);
              return step;
            });
  p.weights = ledger.peak(MemoryCategory::weights);
  p.gradients = ledger.peak(MemoryCategory::gradients);
  p.optimizer_state = ledger.peak(MemoryCategory::optimizer_state);
  p.saved_activations = ledger.peak(MemoryCategory::saved_activations);
  p.workspace = ledger.peak(MemoryCategory::workspace);
  p.peak = ledger.peak_total();
  return p;
}

namespace {

// Input pixels of one training batch: the denominator of the pixel-wise memory cost (Hascoet et al.).
double pixels_per_batch(const RunConfig& run) {
  return static_cast<double>(run.train.batch) * static_cast<double>(run.model.positions());
}

// "  train.optimizer.lr=0.1 model.blocks=2": the run's swept values other than the technique (shown as its label)
// and the precision (a column of its own).
std::string swept_text(const PlannedRun& run) {
  std::string text;
  for (const auto& [path, value] : run.swept)
    if (path != "technique" && path != "precision")
      text += "  " + path + "=" + value_text(value);
  return text;
}

}  // namespace

std::string plan_table(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                       const std::map<std::string, std::string>& statuses) {
  const bool resuming = !statuses.empty();
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-4s %-16s %-8s %-5s %-7s %6s %12s %12s %12s %12s %12s %12s %12s %6s %9s %10s%s  %s\n",
                "#", "run_id", "study", "prec", "model", "batch", "weights", "gradients", "optimizer", "saved_act",
                "workspace", "peak", "own_need", "over", "B/pixel", "recompute", resuming ? "  resume" : "",
                "technique, swept values");
  out += line;
  std::size_t skipped = 0;
  for (std::size_t i : positions) {
    const RunConfig& r = runs[i].parsed;
    const MemoryPrediction p = predict_memory(r);
    const auto status = statuses.find(runs[i].id);
    const bool skip = status != statuses.end() && is_done(status->second);
    skipped += skip;
    const std::string resume = !resuming                  ? ""
                               : skip                      ? "  skip (" + status->second + ")"
                               : status != statuses.end() ? "  redo (failed)"
                                                          : "  run";
    const std::string need = p.own_need ? std::to_string(p.own_need) : "-";
    char over[16] = "-";
    if (p.own_need) std::snprintf(over, sizeof over, "%+.0f%%", 100.0 * (static_cast<double>(p.peak) / p.own_need - 1));
    std::snprintf(line, sizeof line,
                  "%-4zu %-16s %-8s %-5s %-7s %6d %12zu %12zu %12zu %12zu %12zu %12zu %12s %6s %9.0f %10lld%s  ", i + 1,
                  runs[i].id.c_str(), r.study.c_str(), to_string(r.precision).c_str(), r.model.arch.c_str(),
                  r.train.batch, p.weights, p.gradients, p.optimizer_state, p.saved_activations, p.workspace, p.peak,
                  need.c_str(), over, static_cast<double>(p.peak) / pixels_per_batch(r),
                  static_cast<long long>(p.recomputed_evaluations), resume.c_str());
    out += line + techniques_readable(r.techniques) + swept_text(runs[i]) + "\n";
  }
  out += "memory in bytes: peak of each category and of the total over one step (train: and one evaluation batch);\n"
         "own_need: what the techniques themselves require (model state + saved-activation peak + the widest layer's\n"
         "input and output), over: how far the peak is above it (lowmem's own overhead);\n"
         "B/pixel: peak / (batch x H x W) (text: per token, batch x T); recompute: forward layer evaluations per step beyond one per layer\n";
  if (resuming)
    out += "resume: run --resume would skip " + std::to_string(skipped) + " of these " +
           std::to_string(positions.size()) + " runs (done in the results file) and run the others\n";
  return out;
}

std::string plan_json(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                      const std::map<std::string, std::string>& statuses) {
  nlohmann::json list = nlohmann::json::array();
  for (std::size_t i : positions) {
    const PlannedRun& run = runs[i];
    const MemoryPrediction p = predict_memory(run.parsed);
    const auto status = statuses.find(run.id);
    nlohmann::json swept = nlohmann::json::object();
    for (const auto& [path, value] : run.swept) swept[path] = value;
    list.push_back({{"run_id", run.id},
                    {"position", i},
                    {"study", run.parsed.study},
                    {"precision", to_string(run.parsed.precision)},
                    {"technique_label", techniques_readable(run.parsed.techniques)},
                    {"swept", swept},
                    {"config", run.config},
                    {"resume_skips", status != statuses.end() && is_done(status->second)},
                    {"predicted_peak_bytes", p.peak},
                    {"recomputed_evaluations_per_step", p.recomputed_evaluations},
                    {"pixel_memory_bytes", static_cast<double>(p.peak) / pixels_per_batch(run.parsed)},
                    {"own_need_bytes", p.own_need},
                    {"predicted_bytes",
                     {{"weights", p.weights},
                      {"gradients", p.gradients},
                      {"optimizer_state", p.optimizer_state},
                      {"saved_activations", p.saved_activations},
                      {"workspace", p.workspace}}}});
  }
  return list.dump(2) + "\n";
}

namespace {

// The dry step's timeline of run i, which must have one (not a reconstruction study).
MemoryLedger run_timeline(const std::vector<PlannedRun>& runs, std::size_t i) {
  const RunConfig& r = runs[i].parsed;
  if (r.study == "reconstruction")
    throw Error("plan --timeline: run " + std::to_string(i + 1) + " (" + runs[i].id +
                ") is a reconstruction study, which takes no training step and so has no timeline (select the "
                "other runs with --set or --shard)");
  return dispatch_precision(r.precision, [&]<class T>() { return dry_step<T>(r, nullptr, nullptr, true); });
}

}  // namespace

std::string plan_timeline(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions,
                          std::size_t top) {
  std::string out;
  char line[512];
  for (std::size_t i : positions) {
    const RunConfig& r = runs[i].parsed;
    const MemoryLedger ledger = run_timeline(runs, i);
    const TimelinePeak peak = timeline_peak(ledger);
    std::snprintf(line, sizeof line, "run %zu %s (%s, %s, %s): peak %zu B after event %zu of %zu (%s, %s)\n", i + 1,
                  runs[i].id.c_str(), r.study.c_str(), to_string(r.precision).c_str(),
                  techniques_label(r.techniques).c_str(), peak.total, peak.events, ledger.events().size(),
                  to_string(peak.phase), peak.owner.c_str());
    out += line;
    std::snprintf(line, sizeof line, "  %12s  %-17s  %-10s  %s\n", "bytes", "category", "allocated", "owner");
    out += line;
    std::size_t rest = 0;
    for (std::size_t k = 0; k < peak.alive.size(); ++k) {
      const TimelinePeak::Buffer& b = peak.alive[k];
      if (k >= top) {
        rest += b.bytes;
        continue;
      }
      std::snprintf(line, sizeof line, "  %12zu  %-17s  %-10s  %s\n", b.bytes, to_string(b.category),
                    to_string(b.phase), b.owner.c_str());
      out += line;
    }
    if (peak.alive.size() > top) {
      std::snprintf(line, sizeof line, "  %12zu  (%zu smaller buffers)\n", rest, peak.alive.size() - top);
      out += line;
    }
  }
  out += "buffers alive at each run's peak, largest first: the category each holds then, the phase of the step in "
         "which it was allocated, and who allocated it (a layer's label, or the trainer's batch, loss or optimizer)\n";
  return out;
}

std::string plan_timeline_json(const std::vector<PlannedRun>& runs, const std::vector<std::size_t>& positions) {
  nlohmann::json list = nlohmann::json::array();
  for (std::size_t i : positions) {
    const RunConfig& r = runs[i].parsed;
    const MemoryLedger ledger = run_timeline(runs, i);
    const TimelinePeak peak = timeline_peak(ledger);
    nlohmann::json alive = nlohmann::json::array();
    for (const TimelinePeak::Buffer& b : peak.alive)
      alive.push_back({{"buffer", b.id}, {"bytes", b.bytes}, {"category", to_string(b.category)},
                       {"phase", to_string(b.phase)}, {"owner", b.owner}});
    nlohmann::json columns = {{"kind", nlohmann::json::array()},  {"category", nlohmann::json::array()},
                              {"from", nlohmann::json::array()},  {"phase", nlohmann::json::array()},
                              {"owner", nlohmann::json::array()}, {"buffer", nlohmann::json::array()},
                              {"bytes", nlohmann::json::array()}};
    for (const MemoryEvent& e : ledger.events()) {
      columns["kind"].push_back(static_cast<int>(e.kind));
      columns["category"].push_back(static_cast<int>(e.category));
      columns["from"].push_back(static_cast<int>(e.from));
      columns["phase"].push_back(static_cast<int>(e.phase));
      columns["owner"].push_back(e.owner);
      columns["buffer"].push_back(e.buffer);
      columns["bytes"].push_back(e.bytes);
    }
    nlohmann::json categories = nlohmann::json::array(), phases = nlohmann::json::array();
    for (std::size_t c = 0; c < memory_category_count; ++c) categories.push_back(to_string(static_cast<MemoryCategory>(c)));
    for (std::size_t p = 0; p < memory_phase_count; ++p) phases.push_back(to_string(static_cast<MemoryPhase>(p)));
    list.push_back({{"run_id", runs[i].id},
                    {"position", i},
                    {"study", r.study},
                    {"precision", to_string(r.precision)},
                    {"model", r.model.arch},
                    {"technique", techniques_label(r.techniques)},
                    {"peak", {{"after_event", peak.events}, {"bytes", peak.total}, {"phase", to_string(peak.phase)},
                              {"owner", peak.owner}}},
                    {"setup_events", ledger.peaks_reset_at()},
                    {"alive_at_peak", alive},
                    {"kinds", {"allocate", "release", "move"}},
                    {"categories", categories},
                    {"phases", phases},
                    {"owners", ledger.owners()},
                    {"events", columns}});
  }
  return list.dump() + "\n";
}

}  // namespace lowmem
