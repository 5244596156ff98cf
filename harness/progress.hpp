// The sweep's lines on stderr: the one line a finished run gets, and the durations of the live line's ETA.
#pragma once
#include <string>

#include "io/results_file.hpp"

namespace lowmem {

// The one line a finished run gets.
std::string run_line(const std::string& prefix, const RunRecord& record);

// A duration as "12m05s", or from an hour on "1h02m" (the ETA of the live progress line).
std::string duration_text(double seconds);

}  // namespace lowmem
