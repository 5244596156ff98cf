#pragma once
// The one error type users see. Every message names what was wrong (file, JSON path, layer, value) and what
// was expected; the CLI prints it on one line and exits non-zero.
#include <stdexcept>
#include <string>

namespace lowmem {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace lowmem
