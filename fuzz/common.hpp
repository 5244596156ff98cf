#pragma once
// What every fuzz target shares: a private scratch directory for the files it feeds lowmem, and the rule that
// separates an expected answer to bad input from a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "numerics/error.hpp"

namespace fuzz {

// Writes `size` bytes to `name` inside this process's scratch directory (made on first use under $TMPDIR,
// removed at a normal exit) and returns its path. Targets write nowhere else.
std::string write_file(const std::string& name, const std::uint8_t* data, std::size_t size);
std::string scratch_path(const std::string& name);

// Prints the exception in flight and aborts, so that libFuzzer records the input as a crash.
[[noreturn]] void unexpected_exception();

// Runs f. lowmem::Error is lowmem's documented answer to bad input; any other exception escaping is a finding
// (the CLI would print a raw library message, or in a worker thread, terminate).
template <class F>
void expect_errors(F&& f) {
  try {
    f();
  } catch (const lowmem::Error&) {
  } catch (...) {
    unexpected_exception();
  }
}

}  // namespace fuzz
