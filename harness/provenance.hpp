#pragma once
#include <map>
#include <string>

namespace lowmem {

// How a result was made: git commit and dirty flag of the source tree, build type, compiler, library versions,
// host and thread count. Stored as string attributes on every run.
std::map<std::string, std::string> provenance(int threads);

// Local time as ISO 8601 ("2026-11-22T03:04:05+0000").
std::string iso_time_now();

}  // namespace lowmem
