// A run saved in flight (Trainer::archive) and loaded into a new trainer continues bit for bit: for every
// precision and for each technique that has state (mixed precision's masters and loss scaler, actnn's random
// streams, a static sparsity pattern's entries, Adam's moments and step count, augmentation mid-epoch), the
// losses after the resume and the final state equal those of the same run never interrupted.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "numerics/error.hpp"
#include "tensor/memory_ledger.hpp"
#include "tensor/state_archive.hpp"
#include "training/run_config.hpp"
#include "training/trainer.hpp"

using namespace lowmem;

namespace {

nlohmann::json config(const std::string& precision, const nlohmann::json& technique, const std::string& optimizer) {
  nlohmann::json c = {
      {"seed", 11},
      {"precision", precision},
      {"model",
       {{"input", {1, 8, 8}},
        {"classes", 3},
        {"layers",
         {{{"type", "conv"}, {"out", 4}, {"pad", 1}}, {{"type", "batchnorm"}}, {{"type", "relu"}},
          {{"type", "conv"}, {"out", 4}, {"pad", 1}}, {{"type", "relu"}}, {{"type", "maxpool"}, {"kernel", 2}},
          {{"type", "flatten"}}, {{"type", "linear"}, {"out", 8}}, {{"type", "relu"}}, {{"type", "linear"}, {"out", 3}}}}}},
      {"data",
       {{"dataset", "synthetic"},
        {"synthetic", {{"count", 40}, {"test_count", 8}, {"shape", {1, 8, 8}}, {"classes", 3}}},
        {"augment", {{"flip", true}, {"crop_pad", 1}}}}},
      {"train", {{"batch", 8}, {"steps", 12}, {"optimizer", {{"type", optimizer}, {"lr", 0.02}}}}}};
  if (optimizer == "sgd") c["train"]["optimizer"]["momentum"] = 0.9;
  if (!technique.is_null()) c["technique"] = technique;
  return c;
}

struct Trace {
  std::vector<double> losses;
  std::map<std::string, std::vector<unsigned char>> state;  // at the end
};

// Trains steps [from, to) of the run (5 steps an epoch: 40 examples at batch 8), starting from `saved` if given.
template <class T>
Trace train(const RunConfig& run, const DataSplit& data, std::int64_t from, std::int64_t to, const Trace* saved) {
  MemoryLedger ledger;
  Trainer<T> trainer(run, ledger);
  if (saved) {
    StateArchive load(StateArchive::Mode::load);
    load.blocks = saved->state;
    trainer.archive(load);
  }
  Trace trace;
  const std::int64_t per_epoch = data.train.count / run.train.batch;
  std::int64_t step = from;
  // The epoch of the last step taken: a run saved at an epoch's end resumes into it (its evaluation is next).
  for (int epoch = static_cast<int>(from == 0 ? 0 : (from - 1) / per_epoch); step < to; ++epoch)
    step = trainer.train_epoch(data.train, epoch, step, to, [&](std::int64_t, double loss, double, double) {
      trace.losses.push_back(loss);
      return true;
    });
  StateArchive save(StateArchive::Mode::save);
  trainer.archive(save);
  trace.state = save.blocks;
  return trace;
}

struct Case {
  std::string name, precision, optimizer;
  nlohmann::json technique;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ResumeInFlight : public ::testing::TestWithParam<Case> {};

TEST_P(ResumeInFlight, ContinuesBitForBit) {
  const Case& c = GetParam();
  const RunConfig run = parse_run_config(config(c.precision, c.technique, c.optimizer), "test");
  const DataSplit data = load_data(run.data, run.seed);
  dispatch_precision(run.precision, [&]<class T>() {
    const Trace whole = train<T>(run, data, 0, 12, nullptr);
    for (std::int64_t cut : {3, 5, 7}) {  // mid-epoch, at an epoch's end, mid-epoch of the second
      const Trace first = train<T>(run, data, 0, cut, nullptr);
      const Trace rest = train<T>(run, data, cut, 12, &first);
      std::vector<double> losses = first.losses;
      losses.insert(losses.end(), rest.losses.begin(), rest.losses.end());
      ASSERT_EQ(losses.size(), whole.losses.size());
      for (std::size_t i = 0; i < losses.size(); ++i)
        EXPECT_EQ(losses[i], whole.losses[i]) << c.name << ": loss of step " << i << " after a resume at " << cut;
      EXPECT_EQ(rest.state, whole.state) << c.name << ": final state after a resume at " << cut;
    }
    // The check can fail: without the saved state the continuation differs.
    const Trace fresh = train<T>(run, data, 5, 12, nullptr);
    EXPECT_NE(fresh.state, whole.state) << c.name;
  });
}

INSTANTIATE_TEST_SUITE_P(
    EveryPrecisionAndStatefulTechnique, ResumeInFlight,
    ::testing::Values(Case{"f32", "f32", "sgd", nullptr}, Case{"f64", "f64", "sgd", nullptr},
                      Case{"f16", "f16", "sgd", nullptr}, Case{"bf16", "bf16", "sgd", nullptr},
                      Case{"dd", "dd", "sgd", nullptr}, Case{"mp", "mp", "sgd", nullptr},
                      Case{"adam", "f32", "adam", nullptr},
                      Case{"mixed_f16", "f32", "sgd", {{"type", "mixed_precision"}, {"compute", "f16"}}},
                      Case{"actnn", "f32", "sgd", {{"type", "approx_activations"}, {"method", "actnn"}, {"bits", 2}}},
                      Case{"sparsity", "f32", "sgd", {{"type", "sparsity"}, {"density", 0.5}}},
                      Case{"checkpoint_microbatch", "f32", "sgd",
                           {{{"type", "microbatch"}, {"count", 2}}, {{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 2}}}}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(ResumeInFlight, StateOfAnotherRunIsRefusedByName) {
  const RunConfig small = parse_run_config(config("f32", nullptr, "sgd"), "test");
  nlohmann::json wider = config("f32", nullptr, "sgd");
  wider["model"]["layers"][0]["out"] = 6;
  const RunConfig other = parse_run_config(wider, "test");
  const DataSplit data = load_data(small.data, small.seed);
  const Trace saved = train<float>(small, data, 0, 3, nullptr);
  try {
    train<float>(other, data, 3, 12, &saved);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model/0/weight"), std::string::npos) << e.what();
  }
}

}  // namespace
