#pragma once
// Bounds on what one command may ask for, checked before anything is allocated (in `plan` as in `run`), so that
// a config that would take hours, exhaust memory or run off the end of an integer is one clear error instead.
// The defaults suit any real experiment on this class of machine; `--limit NAME=VALUE` raises one.
#include <cstdint>
#include <string>

namespace lowmem {

struct Limits {
  std::int64_t runs = 100000;     // runs one config expands to (its sweep)
  std::int64_t layers = 100000;   // layers of one model, those nested in blocks included
  std::int64_t memory_bytes = 0;  // a run's weights + one input batch; 0: this machine's physical memory
};

const Limits& limits();
// NAME=VALUE with NAME runs, layers or memory (bytes), VALUE a whole number >= 1. Throws Error naming the option.
void set_limit(const std::string& assignment);
// The memory limit in bytes (the machine's physical memory unless set).
std::int64_t memory_limit_bytes();
// "--limit runs=N" etc., for messages that tell the user how to raise a limit.
std::string raise_hint(const std::string& name);

// The deepest nesting a JSON text may have (objects and lists; a config needs about 10, plus 2 per nested
// coupling). Deeper text is refused while it is parsed, so nothing recursive ever sees it.
constexpr int max_json_depth = 64;

}  // namespace lowmem
