#pragma once
#include <map>
#include <string>

namespace lowmem {

// How a result was made: git commit and dirty flag ("true", "false" or "unknown") of the source tree, build type,
// compiler, library versions, host, CPU model and the instruction sets compiled for and chosen at run time.
// Stored as string attributes on every run (the thread count beside them, as an int64 attribute).
std::map<std::string, std::string> provenance();

// Local time as ISO 8601 ("2026-11-22T03:04:05+0000").
std::string iso_time_now();

}  // namespace lowmem
