#pragma once
// The memory techniques lowmem knows, by their config "type": the one place a new technique is registered
// (registry.cpp, one line), and the parser of a run's "technique" entry.
#include <string>
#include <vector>

#include "techniques/technique.hpp"

namespace lowmem {

// The registered types, in registration order (as error messages list them).
std::vector<std::string> technique_types();

// A run's "technique": one object, or a list of objects that compose (absent: store_all). Each technique parses
// its own object and checks its composition with the others (in registry order, so that of several problems the
// same one is reported whatever the list's order); then a type listed twice is an error.
TechniqueList parse_techniques(ConfigReader& run);

// The list sorted by registration (the order checks run in).
TechniqueList in_registry_order(const TechniqueList& all);

// [store_all]: what references and baselines run with.
TechniqueList store_all_only();

// "store_all", "checkpoint-revolve-2+microbatch-4": every technique's label, joined by "+" when composed.
std::string techniques_label(const TechniqueList& all);
// The same for reading (summary column technique_label, plot legends): "store_all",
// "mixed_precision(f16) + microbatch(16) + checkpoint(revolve,2)": each label's parameters in parentheses.
std::string techniques_readable(const TechniqueList& all);

}  // namespace lowmem
