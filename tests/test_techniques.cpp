// The technique contract (techniques/technique.hpp, registry.cpp): every registered type parses, composition rules
// give the same error whatever the order of the list, and two techniques that both decide the same thing (the
// update, the chain, the save hook) are an error rather than a silent first-one-wins.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/config_reader.hpp"
#include "techniques/registry.hpp"
#include "training/trainer.hpp"

namespace lowmem {
namespace {

nlohmann::json config_with(const nlohmann::json& technique, const std::string& precision = "f32") {
  return {{"precision", precision},
          {"model", {{"arch", "cnn"}, {"channels", {4, 4}}, {"input", {1, 8, 8}}, {"classes", 3}}},
          {"technique", technique},
          {"data", {{"dataset", "synthetic"}, {"synthetic", {{"shape", {1, 8, 8}}, {"classes", 3}}}}},
          {"train", {{"batch", 8}, {"optimizer", {{"lr", 0.1}}}}}};
}

std::string error_of(const nlohmann::json& config) {
  try {
    parse_run_config(config, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "accepted";
}

TEST(Techniques, EveryRegisteredTypeParsesAndLabelsItself) {
  const std::vector<std::string> types = technique_types();
  EXPECT_EQ(types, (std::vector<std::string>{"store_all", "reversible", "checkpoint", "microbatch", "mixed_precision",
                                              "approx_activations", "sparsity"}));
  const nlohmann::json minimal = {{"store_all", nlohmann::json::object()}, {"reversible", nlohmann::json::object()},
                                  {"checkpoint", {{"schedule", "revolve"}, {"slots", 2}}}, {"microbatch", {{"count", 2}}},
                                  {"mixed_precision", {{"compute", "bf16"}}},
                                  {"approx_activations", {{"bits", 4}, {"method", "actnn"}}},
                                  {"sparsity", {{"density", 0.5}}}};
  const std::map<std::string, std::string> labels = {
      {"store_all", "store_all"},           {"reversible", "reversible"},
      {"checkpoint", "checkpoint-revolve-2"}, {"microbatch", "microbatch-2"},
      {"mixed_precision", "mixed_precision-bf16"}, {"approx_activations", "approx_activations-actnn-4"},
      {"sparsity", "sparsity-magnitude-0.5"}};
  for (const std::string& type : types) {
    nlohmann::json technique = minimal.at(type);
    technique["type"] = type;
    const RunConfig run = parse_run_config(config_with(technique), "cfg.json");
    ASSERT_EQ(run.techniques.size(), 1u);
    EXPECT_EQ(run.techniques[0]->type(), type);
    EXPECT_EQ(techniques_label(run.techniques), labels.at(type));
  }
  // The readable label of a composition (summary column technique_label): parameters in parentheses, an
  // exponent's sign kept.
  const nlohmann::json composed = {{{"type", "mixed_precision"}, {"compute", "f16"}},
                                   {{"type", "microbatch"}, {"count", 4}},
                                   {{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 2}},
                                   {{"type", "sparsity"}, {"density", 1e-5}}};
  EXPECT_EQ(techniques_readable(parse_run_config(config_with(composed), "cfg.json").techniques),
            "mixed_precision(f16) + microbatch(4) + checkpoint(revolve,2) + sparsity(magnitude,1e-05)");
  EXPECT_EQ(techniques_readable(parse_run_config(config_with({{"type", "store_all"}}), "cfg.json").techniques),
            "store_all");
}

// Of several problems, the one reported does not depend on the order in which the techniques are listed.
TEST(Techniques, CompositionErrorsDoNotDependOnTheListOrder) {
  const nlohmann::json revolve = {{"type", "checkpoint"}, {"schedule", "revolve"}, {"slots", 2}};
  const nlohmann::json reversible = {{"type", "reversible"}};
  const nlohmann::json naive = {{"type", "approx_activations"}, {"method", "naive"}};
  const nlohmann::json store_all = {{"type", "store_all"}};
  const std::vector<nlohmann::json> lists = {
      {revolve, reversible, naive}, {naive, reversible, revolve}, {reversible, naive, revolve}};
  const std::string first = error_of(config_with(lists[0]));
  EXPECT_NE(first.find("cfg.json: /technique:"), std::string::npos) << first;
  for (const auto& list : lists) EXPECT_EQ(error_of(config_with(list)), first);
  // store_all with anything, even itself, is the baseline's rule; a repeated type is named.
  EXPECT_NE(error_of(config_with({store_all, store_all})).find("composes with no other"), std::string::npos);
  EXPECT_NE(error_of(config_with({reversible, reversible})).find("\"reversible\" is listed twice"), std::string::npos);
  // Run checks too: mixed precision on an f16 run and a microbatch count that does not divide the batch.
  const nlohmann::json mixed = {{"type", "mixed_precision"}}, three = {{"type", "microbatch"}, {"count", 3}};
  EXPECT_EQ(error_of(config_with({three, mixed}, "f16")), error_of(config_with({mixed, three}, "f16")));
}

// A technique that offers a save hook, for the test below: two of them cannot both decide how activations are kept.
class Packing : public Technique {
 public:
  const char* type() const override { return "packing"; }
  LOWMEM_TECHNIQUE_HOOKS
};

template <class T> class PackingHooks : public TechniqueHooks<T>, public SaveHook<T> {
 public:
  std::shared_ptr<const PackedTensor<T>> pack(const Tensor<T>&) const override { return nullptr; }
  const SaveHook<T>* save_hook() const override { return this; }
};

template <class T> std::unique_ptr<TechniqueHooks<T>> Packing::hooks_for(const TechniqueServices<T>&) const {
  return std::make_unique<PackingHooks<T>>();
}
LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Packing)

TEST(Techniques, TwoTechniquesDecidingTheSameHookAreRefused) {
  RunConfig run = parse_run_config(config_with({{"type", "store_all"}}, "f64"), "cfg.json");
  run.techniques = {std::make_shared<const Packing>()};
  MemoryLedger ledger;
  EXPECT_NO_THROW(Trainer<double>(run, ledger));
  run.techniques = {std::make_shared<const Packing>(), std::make_shared<const Packing>()};
  try {
    Trainer<double> trainer(run, ledger);
    FAIL() << "two save hooks accepted";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("both provide the save hook"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowmem
