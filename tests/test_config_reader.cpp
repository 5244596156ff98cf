// Strict config reading (lib/io/config_reader) and sweep expansion / overrides (lib/io/sweep).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/config_reader.hpp"
#include "io/sweep.hpp"

namespace lowmem {
namespace {

using json = nlohmann::json;
constexpr int kIntMax = std::numeric_limits<int>::max();

// The lowmem::Error message thrown by f, or a marker that makes the comparison fail visibly.
template <class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no lowmem::Error thrown>";
}

std::string write_file(const std::string& name, const std::string& text) {
  const auto path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << text;
  return path;
}

// ---------------------------------------------------------------- ConfigReader

TEST(ConfigReader, TypedGettersAndDefaults) {
  const json j = {{"flag", true}, {"n", 3}, {"big", 5000000000LL}, {"lr", 0.5}, {"whole", 2.0},
                  {"two", 2},     {"name", "adam"}, {"sizes", {1, 2, 3}}};
  ConfigReader r(j, "/train", "cfg.json");
  EXPECT_EQ(r.required<bool>("flag"), true);
  EXPECT_EQ(r.required<int>("n"), 3);
  EXPECT_EQ(r.required<std::int64_t>("big"), 5000000000LL);
  EXPECT_EQ(r.required<double>("lr"), 0.5);
  EXPECT_EQ(r.required<int>("whole"), 2);        // integral float is an integer
  EXPECT_EQ(r.required<double>("two"), 2.0);     // an integer is a number
  EXPECT_EQ(r.required<std::string>("name"), "adam");
  EXPECT_EQ(r.get_list<int>("sizes", {}), (std::vector<int>{1, 2, 3}));
  // Absent keys give the fallback.
  EXPECT_EQ(r.get("epochs", 7), 7);
  EXPECT_EQ(r.get("momentum", 0.9), 0.9);
  EXPECT_EQ(r.get<std::string>("schedule", "cosine"), "cosine");
  EXPECT_EQ(r.get("shuffle", false), false);
  EXPECT_EQ(r.get_list<std::string>("tags", {"a"}), (std::vector<std::string>{"a"}));
  // Present keys win over the fallback.
  EXPECT_EQ(r.get("n", 100), 3);
  EXPECT_NO_THROW(r.finish());
  EXPECT_EQ(error_of([&] { r.required<int>("missing"); }), "cfg.json: /train/missing: missing required key");
}

TEST(ConfigReader, TypeErrorsShowTheValue) {
  const json j = {{"x", 2.5}, {"y", "3"}, {"b", 1}, {"big", 1e10}, {"huge", 18446744073709551615ULL},
                  {"s", 3},   {"nul", nullptr}, {"list", {1, 2.5}}, {"notlist", 4}};
  ConfigReader r(j, "", "cfg.json");
  EXPECT_EQ(error_of([&] { r.required<int>("x"); }), "cfg.json: /x: expected an integer, got 2.5");
  EXPECT_EQ(error_of([&] { r.get("y", 0); }), "cfg.json: /y: expected an integer, got \"3\"");
  EXPECT_EQ(error_of([&] { r.required<bool>("b"); }), "cfg.json: /b: expected a boolean, got 1");
  EXPECT_EQ(error_of([&] { r.required<double>("y"); }), "cfg.json: /y: expected a number, got \"3\"");
  EXPECT_EQ(error_of([&] { r.required<std::string>("s"); }), "cfg.json: /s: expected a string, got 3");
  EXPECT_EQ(error_of([&] { r.get("nul", 1.0); }), "cfg.json: /nul: expected a number, got null");
  EXPECT_EQ(error_of([&] { r.required<int>("big"); }),
            "cfg.json: /big: expected an integer between -2147483648 and 2147483647, got 10000000000.0");
  EXPECT_EQ(r.required<std::int64_t>("big"), 10000000000LL);
  EXPECT_EQ(error_of([&] { r.required<std::int64_t>("huge"); }),
            "cfg.json: /huge: expected an integer between -9223372036854775808 and 9223372036854775807, got "
            "18446744073709551615");
  EXPECT_EQ(error_of([&] { r.get_list<int>("list", {}); }), "cfg.json: /list/1: expected an integer, got 2.5");
  EXPECT_EQ(error_of([&] { r.get_list<double>("notlist", {}); }), "cfg.json: /notlist: expected a list of numbers, got 4");

  const json opt = {{"lr", "fast"}};
  ConfigReader o(opt, "/train/optimizer", "cfg.json");
  EXPECT_EQ(error_of([&] { o.required<double>("lr"); }), "cfg.json: /train/optimizer/lr: expected a number, got \"fast\"");
}

TEST(ConfigReader, NoFilePrefixWithoutFile) {
  const json j = {{"x", "a"}};
  ConfigReader r(j, "/train", "");
  EXPECT_EQ(error_of([&] { r.required<int>("x"); }), "/train/x: expected an integer, got \"a\"");
  EXPECT_EQ(r.where("x"), "/train/x");
  EXPECT_EQ(r.where(""), "/train");
  EXPECT_EQ(error_of([&] { r.fail("x", "too large"); }), "/train/x: too large");
  EXPECT_EQ(ConfigReader(j, "", "").where("a/b~c"), "/a~1b~0c");  // pointer tokens are escaped
}

TEST(ConfigReader, RangesNameTheBounds) {
  const json j = {{"batch", -3}, {"depth", 9}, {"p", 1.5}, {"k", 4}, {"ok", 5}, {"steps", 0}};
  ConfigReader r(j, "/train", "cfg.json");
  EXPECT_EQ(error_of([&] { r.get_in("batch", 32, 1, kIntMax); }), "cfg.json: /train/batch: expected an integer >= 1, got -3");
  EXPECT_EQ(error_of([&] { r.required_in("depth", std::numeric_limits<int>::lowest(), 8); }),
            "cfg.json: /train/depth: expected an integer <= 8, got 9");
  EXPECT_EQ(error_of([&] { r.get_in("p", 0.5, 0.0, 1.0); }), "cfg.json: /train/p: expected a number between 0.0 and 1.0, got 1.5");
  EXPECT_EQ(error_of([&] { r.required_in<std::int64_t>("k", 5, 10); }),
            "cfg.json: /train/k: expected an integer between 5 and 10, got 4");
  EXPECT_EQ(error_of([&] { r.required_in("steps", 1.0, std::numeric_limits<double>::infinity()); }),
            "cfg.json: /train/steps: expected a number >= 1.0, got 0");
  EXPECT_EQ(r.required_in("ok", 1, 5), 5);  // bounds are inclusive
  EXPECT_EQ(r.get_in("absent", 32, 1, kIntMax), 32);
  EXPECT_EQ(error_of([&] { r.required_in("gone", 1, 2); }), "cfg.json: /train/gone: missing required key");
}

TEST(ConfigReader, ChoicesListAndSuggest) {
  const std::vector<std::string> precisions = {"f32", "f64", "f16", "bf16", "mp"};
  const json j = {{"precision", "f8"}, {"p2", "F32"}, {"p3", "bg16"}, {"p4", 16}, {"p5", "mp"}};
  ConfigReader r(j, "", "cfg.json");
  EXPECT_EQ(error_of([&] { r.get_choice("precision", "f32", precisions); }),
            "cfg.json: /precision: expected one of \"f32\", \"f64\", \"f16\", \"bf16\", \"mp\", got \"f8\"");
  EXPECT_EQ(error_of([&] { r.required_choice("p2", precisions); }),
            "cfg.json: /p2: expected one of \"f32\", \"f64\", \"f16\", \"bf16\", \"mp\", got \"F32\" (did you mean \"f32\"?)");
  EXPECT_EQ(error_of([&] { r.required_choice("p3", precisions); }),
            "cfg.json: /p3: expected one of \"f32\", \"f64\", \"f16\", \"bf16\", \"mp\", got \"bg16\" (did you mean \"bf16\"?)");
  EXPECT_EQ(error_of([&] { r.required_choice("p4", precisions); }),
            "cfg.json: /p4: expected one of \"f32\", \"f64\", \"f16\", \"bf16\", \"mp\", got 16");
  EXPECT_EQ(r.required_choice("p5", precisions), "mp");
  EXPECT_EQ(r.get_choice("absent", "f64", precisions), "f64");
  EXPECT_EQ(error_of([&] { r.required_choice("gone", precisions); }), "cfg.json: /gone: missing required key");
}

TEST(ConfigReader, ClosestMatchRule) {
  const std::vector<std::string> keys = {"batch", "epochs", "learning_rate", "lr"};
  EXPECT_EQ(closest_match("bacth", keys), "batch");
  EXPECT_EQ(closest_match("LEARNING_RATE", keys), "learning_rate");  // case-insensitive, whatever the distance
  EXPECT_EQ(closest_match("l", keys), "lr");
  EXPECT_EQ(closest_match("x", keys), std::nullopt);          // distance 2 to "lr" but a total rewrite
  EXPECT_EQ(closest_match("optimizer", keys), std::nullopt);  // nothing near
  EXPECT_EQ(closest_match("ab", {"abc", "abd"}), std::nullopt);  // tie: no guess
}

TEST(ConfigReader, UnknownKeysAreRejectedWithSuggestion) {
  const json j = {{"bacth", 32}, {"epochs", 2}};
  ConfigReader r(j, "/train", "cfg.json");
  EXPECT_EQ(r.get("batch", 16), 16);
  EXPECT_EQ(r.get("epochs", 1), 2);
  EXPECT_EQ(error_of([&] { r.finish(); }), "cfg.json: /train/bacth: unknown key (did you mean \"batch\"?)");

  const json k = {{"LEARNING_RATE", 0.1}};
  ConfigReader upper(k, "", "cfg.json");
  upper.get("learning_rate", 0.01);
  EXPECT_EQ(error_of([&] { upper.finish(); }), "cfg.json: /LEARNING_RATE: unknown key (did you mean \"learning_rate\"?)");

  const json far = {{"optimizer", "sgd"}, {"batch", 1}};
  ConfigReader r2(far, "/train", "cfg.json");
  r2.get("batch", 1);
  r2.get("epochs", 1);
  EXPECT_EQ(error_of([&] { r2.finish(); }), "cfg.json: /train/optimizer: unknown key; valid keys: \"batch\", \"epochs\"");

  ConfigReader empty_schema(far, "", "");
  EXPECT_EQ(error_of([&] { empty_schema.finish(); }), "/batch: unknown key");
}

TEST(ConfigReader, FinishPassesWhenEveryKeyWasDeclared) {
  const json j = {{"a", 1}, {"b", "x"}, {"c", {{"d", 1}}}, {"e", {1, 2}}, {"f", true}};
  ConfigReader r(j, "", "cfg.json");
  EXPECT_TRUE(r.has("f"));  // has() does not declare...
  EXPECT_FALSE(r.has("zz"));
  r.get("a", 0);
  r.required<std::string>("b");
  r.raw("c");  // ...but raw() does
  r.allow("e");
  EXPECT_EQ(error_of([&] { r.finish(); }), "cfg.json: /f: unknown key; valid keys: \"a\", \"b\", \"c\", \"e\"");
  r.allow("f");
  EXPECT_NO_THROW(r.finish());
  EXPECT_EQ(r.raw("e"), json({1, 2}));
  EXPECT_EQ(error_of([&] { r.raw("nope"); }), "cfg.json: /nope: missing required key");
}

TEST(ConfigReader, NestedObjectsCarryTheirPath) {
  const json j = json::parse(R"({"model": {"layers": [{"out": 8}, {"out": 4}, {"out": 0}], "head": 3},
                                 "train": {"opt": {"lr": 0.1}}})");
  ConfigReader root(j, "", "cfg.json");
  ConfigReader model = root.object("model");
  const auto layers = model.object_list("layers");
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[0].where("out"), "cfg.json: /model/layers/0/out");
  auto l2 = layers[2];
  EXPECT_EQ(error_of([&] { l2.get_in("out", 1, 1, kIntMax); }), "cfg.json: /model/layers/2/out: expected an integer >= 1, got 0");
  EXPECT_EQ(error_of([&] { model.object("head"); }), "cfg.json: /model/head: expected an object, got 3");
  EXPECT_EQ(error_of([&] { model.object_list("head"); }), "cfg.json: /model/head: expected a list of objects, got 3");
  EXPECT_EQ(error_of([&] { root.object("data"); }), "cfg.json: /data: missing required key");

  auto train = root.optional_object("train");
  ASSERT_TRUE(train.has_value());
  EXPECT_EQ(train->object("opt").required<double>("lr"), 0.1);
  EXPECT_FALSE(root.optional_object("eval").has_value());
  EXPECT_NO_THROW(root.finish());  // "eval" was declared although absent

  const json bad = json::parse(R"({"layers": [{"out": 1}, 3]})");
  ConfigReader b(bad, "/model", "cfg.json");
  EXPECT_EQ(error_of([&] { b.object_list("layers"); }), "cfg.json: /model/layers/1: expected an object, got 3");
}

TEST(ConfigReader, RejectsNonObjectsAndTemporaries) {
  const json three = 3;
  EXPECT_EQ(error_of([&] { ConfigReader(three, "", "cfg.json"); }), "cfg.json: (top level): expected an object, got 3");
  EXPECT_EQ(error_of([&] { ConfigReader(three, "/model", ""); }), "/model: expected an object, got 3");
  static_assert(!std::is_constructible_v<ConfigReader, json&&, std::string, std::string>);
}

// ---------------------------------------------------------------- read_json_file

TEST(ReadJsonFile, ParsesAndReportsErrors) {
  const auto good = write_file("lowmem_cfg_good.json", R"({"train": {"batch": 4}})");
  EXPECT_EQ(read_json_file(good)["train"]["batch"], 4);

  const std::string missing = "/nonexistent/lowmem_cfg.json";
  EXPECT_EQ(error_of([&] { read_json_file(missing); }), missing + ": cannot open (No such file or directory)");

  // Missing comma after line 2's value: the parser stops at the end of the unexpected "epochs" (columns 3-10).
  const auto bad = write_file("lowmem_cfg_bad.json", "{\n  \"batch\": 4\n  \"epochs\": 2\n}\n");
  EXPECT_EQ(error_of([&] { read_json_file(bad); }),
            bad + ": line 3, column 10: invalid JSON: syntax error while parsing object - unexpected string literal; "
                  "expected '}'");

  const auto truncated = write_file("lowmem_cfg_trunc.json", "{\"a\": [1,\n 2");
  EXPECT_EQ(error_of([&] { read_json_file(truncated); }),
            truncated + ": line 2, column 3: invalid JSON: syntax error while parsing array - unexpected end of input; "
                        "expected ']'");

  const auto dup = write_file("lowmem_cfg_dup.json", R"({"train": {"opt": [{}, {"lr": 1, "lr": 2}]}})");
  EXPECT_EQ(error_of([&] { read_json_file(dup); }), dup + ": /train/opt/1/lr: duplicate key");

  const auto dir = std::filesystem::temp_directory_path().string();
  EXPECT_EQ(error_of([&] { read_json_file(dir); }), dir + ": is a directory, expected a JSON file");
}

// ---------------------------------------------------------------- expand_sweep

TEST(Sweep, NoSweepGivesTheConfig) {
  const json c = {{"a", 1}};
  EXPECT_EQ(expand_sweep(c, "cfg.json"), std::vector<json>{c});
}

TEST(Sweep, CartesianProductSortedKeysLastFastest) {
  const json c = json::parse(R"({"seed": 0, "train": {"lr": 1.0, "batch": 8},
                                 "sweep": {"train.lr": [0.1, 0.01], "seed": [1, 2, 3]}})");
  const auto runs = expand_sweep(c, "cfg.json");
  ASSERT_EQ(runs.size(), 6u);
  // Sorted keys: "seed" < "train.lr", so seed is the slow axis and train.lr the fast one.
  const std::vector<std::pair<int, double>> expected = {{1, 0.1}, {1, 0.01}, {2, 0.1}, {2, 0.01}, {3, 0.1}, {3, 0.01}};
  for (std::size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(runs[i]["seed"], expected[i].first) << i;
    EXPECT_EQ(runs[i]["train"]["lr"], expected[i].second) << i;
    EXPECT_EQ(runs[i]["train"]["batch"], 8);
    EXPECT_FALSE(runs[i].contains("sweep"));
  }
}

TEST(Sweep, ArrayIndicesAndNewKeys) {
  const json c = json::parse(R"({"model": {"layers": [{"out": 8}, {"out": 4}]},
                                 "sweep": {"model.layers.1.out": [2, 16], "model.dropout": [0.5]}})");
  const auto runs = expand_sweep(c, "cfg.json");
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0]["model"]["layers"][1]["out"], 2);
  EXPECT_EQ(runs[1]["model"]["layers"][1]["out"], 16);
  EXPECT_EQ(runs[1]["model"]["layers"][0]["out"], 8);
  EXPECT_EQ(runs[1]["model"]["dropout"], 0.5);  // created: the schema check decides whether it is valid
}

TEST(Sweep, ListOfObjectsIsTheUnion) {
  const json c = json::parse(R"({"a": 0, "b": "base",
                                 "sweep": [{"a": [1, 2], "b": ["x", "y"]}, {"a": [9]}, {}]})");
  const auto runs = expand_sweep(c, "cfg.json");
  ASSERT_EQ(runs.size(), 6u);
  const std::vector<std::pair<int, std::string>> expected = {{1, "x"}, {1, "y"}, {2, "x"}, {2, "y"}, {9, "base"}, {0, "base"}};
  for (std::size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(runs[i]["a"], expected[i].first) << i;
    EXPECT_EQ(runs[i]["b"], expected[i].second) << i;
  }
}

TEST(Sweep, ZipVariesTogetherAsTheOutermostAxis) {
  const json c = json::parse(R"({"lr": 0, "batch": 0, "seed": 0,
                                 "zip": {"lr": [0.1, 0.2, 0.4], "batch": [32, 64, 128]},
                                 "sweep": {"seed": [1, 2]}})");
  const auto runs = expand_sweep(c, "cfg.json");
  ASSERT_EQ(runs.size(), 6u);
  const double lrs[] = {0.1, 0.1, 0.2, 0.2, 0.4, 0.4};
  const int batches[] = {32, 32, 64, 64, 128, 128}, seeds[] = {1, 2, 1, 2, 1, 2};
  for (std::size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(runs[i]["lr"], lrs[i]) << i;
    EXPECT_EQ(runs[i]["batch"], batches[i]) << i;
    EXPECT_EQ(runs[i]["seed"], seeds[i]) << i;
    EXPECT_FALSE(runs[i].contains("zip"));
  }
  const json zip_only = json::parse(R"({"a": 0, "b": 0, "zip": {"a": [1, 2], "b": [3, 4]}})");
  const auto zipped = expand_sweep(zip_only, "");
  ASSERT_EQ(zipped.size(), 2u);
  EXPECT_EQ(zipped[1], json::parse(R"({"a": 2, "b": 4})"));
}

TEST(Sweep, Errors) {
  auto sweep_error = [](const char* text) { return error_of([&] { expand_sweep(json::parse(text), "cfg.json"); }); };
  EXPECT_EQ(sweep_error(R"({"a": 1, "sweep": {"a": []}})"), "cfg.json: /sweep/a: expected a non-empty list of values, got []");
  EXPECT_EQ(sweep_error(R"({"a": 1, "sweep": {"a": 2}})"), "cfg.json: /sweep/a: expected a non-empty list of values, got 2");
  EXPECT_EQ(sweep_error(R"({"sweep": 3})"), "cfg.json: /sweep: expected an object mapping paths to lists of values, got 3");
  EXPECT_EQ(sweep_error(R"({"sweep": []})"), "cfg.json: /sweep: expected a non-empty list of sweep objects, got []");
  EXPECT_EQ(sweep_error(R"({"sweep": [{}, [1]]})"), "cfg.json: /sweep/1: expected an object mapping paths to lists of values, got [1]");
  EXPECT_EQ(sweep_error(R"({"train": {"optimizer": {}}, "sweep": {"train.optimiser.lr": [1]}})"),
            "cfg.json: /sweep/train.optimiser.lr: \"train.optimiser\" does not exist (did you mean \"train.optimizer\"?)");
  EXPECT_EQ(sweep_error(R"({"train": {}, "sweep": {"model.width": [1]}})"),
            "cfg.json: /sweep/model.width: \"model\" does not exist");
  EXPECT_EQ(sweep_error(R"({"train": {"batch": 3}, "sweep": {"train.batch.x": [1]}})"),
            "cfg.json: /sweep/train.batch.x: cannot set \"train.batch.x\": \"train.batch\" is a number (3), not an object or list");
  EXPECT_EQ(sweep_error(R"({"layers": [{"out": 1}], "sweep": {"layers.1.out": [1]}})"),
            "cfg.json: /sweep/layers.1.out: index 1 is out of range for \"layers\" (1 elements)");
  EXPECT_EQ(sweep_error(R"({"layers": [{"out": 1}], "sweep": {"layers.first.out": [1]}})"),
            "cfg.json: /sweep/layers.first.out: \"layers\" is a list, and \"first\" is not an index");
  EXPECT_EQ(sweep_error(R"({"sweep": {"a..b": [1]}})"),
            "cfg.json: /sweep/a..b: invalid path \"a..b\" (expected dotted keys, e.g. train.optimizer.lr)");
  EXPECT_EQ(sweep_error(R"({"a": 0, "b": 0, "zip": {"a": [1, 2], "b": [1, 2, 3]}})"),
            "cfg.json: /zip/b: has 3 values but /zip/a has 2 (zip lists vary together)");
  EXPECT_EQ(sweep_error(R"({"zip": [1]})"), "cfg.json: /zip: expected an object mapping paths to lists of values, got [1]");
  EXPECT_EQ(sweep_error(R"({"zip": {"a": []}})"), "cfg.json: /zip/a: expected a non-empty list of values, got []");
  EXPECT_EQ(sweep_error(R"({"a": 0, "zip": {"a": [1]}, "sweep": [{"a": [2]}]})"), "cfg.json: /sweep/0/a: also set by /zip/a");
}

// ---------------------------------------------------------------- apply_override

TEST(Override, ParsesValuesAsJsonElseString) {
  json c = json::parse(R"({"train": {"lr": 0.1, "batch": 8, "name": "x", "shuffle": true,
                                     "layers": [{"out": 1}, {"out": 2}]}})");
  apply_override(c, "train.lr=0.01");
  apply_override(c, "train.batch=64");
  apply_override(c, "train.name=adam");
  apply_override(c, "train.shuffle=false");
  apply_override(c, "train.layers.1.out=5");
  apply_override(c, "train.tag=\"1\"");
  apply_override(c, "train.sizes=[1, 2]");
  apply_override(c, "train.empty=");
  EXPECT_EQ(c["train"]["lr"], 0.01);
  EXPECT_TRUE(c["train"]["batch"].is_number_integer());
  EXPECT_EQ(c["train"]["batch"], 64);
  EXPECT_EQ(c["train"]["name"], "adam");
  EXPECT_EQ(c["train"]["shuffle"], false);
  EXPECT_EQ(c["train"]["layers"][1]["out"], 5);
  EXPECT_EQ(c["train"]["tag"], "1");
  EXPECT_EQ(c["train"]["sizes"], json({1, 2}));
  EXPECT_EQ(c["train"]["empty"], "");
}

TEST(Override, ErrorsNameTheOption) {
  json c = json::parse(R"({"train": {"lr": 0.1, "layers": [1]}})");
  EXPECT_EQ(error_of([&] { apply_override(c, "trian.lr=1"); }), "--set trian.lr=1: \"trian\" does not exist (did you mean \"train\"?)");
  EXPECT_EQ(error_of([&] { apply_override(c, "train.layers.3=1"); }),
            "--set train.layers.3=1: index 3 is out of range for \"train.layers\" (1 elements)");
  EXPECT_EQ(error_of([&] { apply_override(c, "train.lr"); }), "--set train.lr: expected PATH=VALUE, e.g. --set train.optimizer.lr=0.01");
  EXPECT_EQ(error_of([&] { apply_override(c, "=3"); }), "--set =3: expected PATH=VALUE, e.g. --set train.optimizer.lr=0.01");
  EXPECT_EQ(error_of([&] { apply_override(c, "train.=3"); }),
            "--set train.=3: invalid path \"train.\" (expected dotted keys, e.g. train.optimizer.lr)");
  EXPECT_EQ(c, json::parse(R"({"train": {"lr": 0.1, "layers": [1]}})"));  // failed overrides change nothing
}

// A --set on a swept key replaces the axis with its one value (never silently lost to the sweep).
TEST(Override, ReplacesASweptAxis) {
  json c = json::parse(R"({"precision": "f32", "train": {"lr": 0.1},
                           "sweep": {"precision": ["f32", "f16"], "train.lr": [0.1, 0.2]}})");
  apply_override(c, "precision=bf16");
  EXPECT_EQ(c["precision"], "bf16");
  EXPECT_EQ(c["sweep"], json::parse(R"({"train.lr": [0.1, 0.2]})"));
  EXPECT_EQ(expand_sweep(c, "cfg.json").size(), 2u);
  apply_override(c, "train.lr=0.5");  // the last axis: no sweep left, one run
  EXPECT_FALSE(c.contains("sweep"));
  EXPECT_EQ(expand_sweep(c, "cfg.json"), std::vector<json>{c});

  // In a list of sweep objects every object loses the key; of those left empty, one stays (the base run once).
  json list = json::parse(R"({"seed": 0, "sweep": [{"seed": [1, 2]}, {"seed": [3], "lr": [1, 2]}, {"seed": [4]}],
                              "zip": {"seed": [5, 6], "batch": [8, 16]}})");
  apply_override(list, "seed=9");
  EXPECT_EQ(list["sweep"], json::parse(R"([{}, {"lr": [1, 2]}])"));
  EXPECT_EQ(list["zip"], json::parse(R"({"batch": [8, 16]})"));
  EXPECT_EQ(expand_sweep(list, "cfg.json").size(), 6u);  // 2 zip steps x (1 + 2)

  // Inside a swept value the sweep would overwrite it: refused, naming the axis.
  json whole = json::parse(R"({"train": {"optimizer": {"lr": 1}}, "sweep": {"train.optimizer": [{"lr": 1}, {"lr": 2}]}})");
  EXPECT_EQ(error_of([&] { apply_override(whole, "train.optimizer.lr=3"); }),
            "--set train.optimizer.lr=3: \"train.optimizer\" is swept (/sweep/train.optimizer), so a value set inside it "
            "would be overwritten; set the whole axis instead (--set train.optimizer=...)");
}

TEST(Sweep, SweptPathsAndTheirValues) {
  const json c = json::parse(R"({"model": {"layers": [{"out": 4}]}, "sweep": [{"train.lr": [1, 2]}, {"model.layers.0.out": [8]}],
                                 "zip": {"seed": [1, 2]}})");
  EXPECT_EQ(swept_paths(c), (std::vector<std::string>{"model.layers.0.out", "seed", "train.lr"}));
  EXPECT_EQ(*find_path(c, "model.layers.0.out"), 4);
  EXPECT_EQ(find_path(c, "model.layers.1.out"), nullptr);
  EXPECT_EQ(find_path(c, "train.lr"), nullptr);
  EXPECT_TRUE(swept_paths(json::parse(R"({"seed": 1})")).empty());
}

}  // namespace
}  // namespace lowmem
