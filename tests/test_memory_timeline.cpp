// The memory timeline: the dry step that `lowmem plan` takes records the same events, in the same order, with the
// same owners and phases, as a real step on data (every technique); and the peak read off the timeline is the
// ledger's peak, made of the buffers alive at it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <numeric>

#include "tensor/memory_timeline.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

nlohmann::json config_with(const nlohmann::json& technique, const nlohmann::json& model, const std::string& study) {
  return {{"study", study},
          {"model", model},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {2, 8, 8}}, {"classes", 3}, {"count", 64}}}}},
          {"train", {{"batch", 8}, {"optimizer", {{"lr", 0.05}, {"momentum", 0.9}}}}}};
}

const nlohmann::json cnn = {{"arch", "cnn"}, {"channels", {4, 4, 8}}, {"input", {2, 8, 8}}, {"classes", 3}};
const nlohmann::json hybrid = {{"arch", "hybrid"}, {"input", {2, 8, 8}}, {"classes", 3}, {"stages", 2},
                               {"blocks", 1}, {"width", 8}};

std::string describe(const MemoryLedger& l, std::size_t i) {
  const MemoryEvent& e = l.events()[i];
  return "event " + std::to_string(i) + ": kind " + std::to_string(e.kind) + " " + to_string(e.category) + " " +
         to_string(e.phase) + " " + l.owners()[e.owner] + " buffer " + std::to_string(e.buffer) + " " +
         std::to_string(e.bytes) + " B";
}

template <class T> void expect_equal_timelines(const nlohmann::json& config) {
  const RunConfig run = parse_run_config(config, "test");
  const MemoryLedger predicted = dry_step<T>(run, nullptr, nullptr, true);
  const MemoryLedger measured = measured_step<T>(run, load_data(run.data, run.seed));
  ASSERT_GT(predicted.events().size(), 10u);
  ASSERT_EQ(predicted.events().size(), measured.events().size()) << config.dump();
  for (std::size_t i = 0; i < predicted.events().size(); ++i)
    ASSERT_EQ(describe(predicted, i), describe(measured, i)) << config.dump();
  EXPECT_EQ(predicted.peaks_reset_at(), measured.peaks_reset_at());
  // The peak read off the timeline is the ledger's, and the buffers alive at it add up to it.
  const TimelinePeak peak = timeline_peak(predicted);
  EXPECT_EQ(peak.total, predicted.peak_total()) << config.dump();
  const std::size_t alive = std::accumulate(peak.alive.begin(), peak.alive.end(), std::size_t{0},
                                            [](std::size_t s, const TimelinePeak::Buffer& b) { return s + b.bytes; });
  EXPECT_EQ(alive, peak.total);
  for (std::size_t i = 1; i < peak.alive.size(); ++i) EXPECT_GE(peak.alive[i - 1].bytes, peak.alive[i].bytes);
  std::size_t at_peak[memory_category_count] = {};
  for (const auto& b : peak.alive) at_peak[static_cast<std::size_t>(b.category)] += b.bytes;
  for (std::size_t c = 0; c < memory_category_count; ++c)
    EXPECT_EQ(at_peak[c], predicted.at_total_peak(static_cast<MemoryCategory>(c))) << to_string(static_cast<MemoryCategory>(c));
}

TEST(MemoryTimeline, PredictedEqualsMeasuredEventForEventUnderEveryTechnique) {
  const nlohmann::json revolve = {{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 2}};
  for (const nlohmann::json& technique :
       {nlohmann::json{{"type", "store_all"}}, nlohmann::json{{"type", "checkpoint"}}, revolve,
        nlohmann::json{{"type", "microbatch"}, {"count", 2}},
        nlohmann::json{{"type", "approx_activations"}, {"bits", 4}, {"method", "actnn"}},
        nlohmann::json{{"type", "approx_activations"}, {"bits", 2}, {"method", "naive"}},
        nlohmann::json{{"type", "sparsity"}, {"density", 0.3}, {"method", "dsr"}, {"interval", 1}},
        nlohmann::json{{"type", "checkpoint"}, {"schedule", "budget"}, {"budget_bytes", 100000}},
        nlohmann::json::array({{{"type", "mixed_precision"}, {"compute", "f16"}}, {{"type", "microbatch"}, {"count", 2}},
                               revolve, {{"type", "approx_activations"}, {"bits", 4}, {"method", "actnn"}}})})
    expect_equal_timelines<float>(config_with(technique, cnn, "train"));
  expect_equal_timelines<double>(config_with({{"type", "store_all"}}, cnn, "gradient"));
  for (const nlohmann::json& technique :
       {nlohmann::json{{"type", "reversible"}},
        nlohmann::json::array({{{"type", "reversible"}}, {{"type", "checkpoint"}}})})
    expect_equal_timelines<float>(config_with(technique, hybrid, "train"));
}

// Owners and phases say where memory goes: layers allocate under their labels, the loss and the batch under theirs,
// and a checkpointed step has recomputation events that a store_all step has none of.
TEST(MemoryTimeline, OwnersAndPhasesNameTheLayersAndTheStep) {
  const RunConfig plain = parse_run_config(config_with({{"type", "store_all"}}, cnn, "train"), "test");
  const MemoryLedger l = dry_step<float>(plain, nullptr, nullptr, true);
  auto has_owner = [&](const std::string& part) {
    for (const std::string& o : l.owners())
      if (o.find(part) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(has_owner("(cnn layer 0: conv)")) << "owners: " << nlohmann::json(l.owners()).dump();
  EXPECT_TRUE(has_owner("batch"));
  EXPECT_TRUE(has_owner("loss"));
  auto phases = [](const MemoryLedger& ledger) {
    std::vector<std::size_t> count(memory_phase_count, 0);
    for (const MemoryEvent& e : ledger.events()) ++count[static_cast<std::size_t>(e.phase)];
    return count;
  };
  const auto p = phases(l);
  for (MemoryPhase ph : {MemoryPhase::setup, MemoryPhase::forward, MemoryPhase::backward, MemoryPhase::evaluation})
    EXPECT_GT(p[static_cast<std::size_t>(ph)], 0u) << to_string(ph);
  EXPECT_EQ(p[static_cast<std::size_t>(MemoryPhase::recompute)], 0u);
  const RunConfig checkpointed = parse_run_config(config_with({{"type", "checkpoint"}}, cnn, "train"), "test");
  EXPECT_GT(phases(dry_step<float>(checkpointed, nullptr, nullptr, true))[static_cast<std::size_t>(MemoryPhase::recompute)], 0u);
}

}  // namespace
}  // namespace lowmem

namespace lowmem {
namespace {

// A timeline replays to the ledger's totals only if it saw every buffer: it starts on an empty ledger, and once
// stopped it cannot resume.
TEST(MemoryTimeline, StartsOnAnEmptyLedgerOnly) {
  MemoryLedger ledger;
  ledger.record_timeline(true);
  const std::uint64_t a = ledger.allocate(MemoryCategory::workspace, 64);
  ledger.release(MemoryCategory::workspace, 64, a);
  ledger.record_timeline(false);
  EXPECT_THROW(ledger.record_timeline(true), std::logic_error);
  MemoryLedger used;
  used.allocate(MemoryCategory::weights, 8);
  EXPECT_THROW(used.record_timeline(true), std::logic_error);
  ASSERT_EQ(ledger.events().size(), 2u);
  EXPECT_EQ(ledger.events()[1].buffer, a);
  EXPECT_EQ(ledger.events()[1].kind, MemoryEvent::release);
}

}  // namespace
}  // namespace lowmem
