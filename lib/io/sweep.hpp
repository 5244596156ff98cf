#pragma once
// Sweeps and command-line overrides: both address a config by a dotted path ("train.optimizer.lr",
// "model.layers.0.out" where a numeric part indexes a list). A path may create a new key in an existing object
// (schema validation runs later and rejects unknown keys) but never creates parents or list elements.
//
// "sweep" is an object mapping paths to non-empty lists of values, or a list of such objects. One object gives
// the cartesian product of its lists; ORDER: nlohmann::json keeps keys sorted, so the axes are in sorted key
// order and the LAST key varies fastest. A list of objects gives the concatenation of their products, in list
// order ({} contributes the base config once). "zip" (top level, optional) maps paths to lists of one common
// length that vary together as a single axis; it is the OUTERMOST axis: every zip step runs the whole sweep.
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace lowmem {

// The resolved configs, each without "sweep"/"zip". A config without either gives {config}. Errors are
// lowmem::Error naming the file and the JSON pointer of the offending entry ("/sweep/train.lr", "/zip/batch").
std::vector<nlohmann::json> expand_sweep(const nlohmann::json& config, const std::string& file);

// "--set a.b.c=VALUE": VALUE is parsed as JSON if it is valid JSON, otherwise taken as a string (so lr=0.1 is a
// number, name=adam a string, name=\"1\" the string "1"). A PATH the config sweeps (a key of "sweep", of one of its
// objects, or of "zip") has its axis replaced by the one value; a PATH inside a swept value is refused (the sweep
// would overwrite it). Errors start with "--set <assignment>: ".
void apply_override(nlohmann::json& config, const std::string& assignment);

// The dotted paths a config sweeps: the keys of "sweep" (of each of its objects) and of "zip", sorted, each once.
std::vector<std::string> swept_paths(const nlohmann::json& config);
// The value at a dotted path (a numeric part indexes a list), or null where the path does not exist.
const nlohmann::json* find_path(const nlohmann::json& config, const std::string& dotted);
// A swept value as text (a summary label, a plan line): a string as it is, anything else as its JSON.
std::string value_text(const nlohmann::json& value);

// Sets a dotted path; throws lowmem::Error(context + ": " + problem) on a bad path.
void set_path(nlohmann::json& config, const std::string& dotted, const nlohmann::json& value, const std::string& context);

}  // namespace lowmem
