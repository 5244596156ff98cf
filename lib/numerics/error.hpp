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

// A size past what lowmem can represent: a shape too large, or memory beyond 2^64 bytes. The model factory adds
// the layer's config path.
class SizeError : public Error {
 public:
  using Error::Error;
};

}  // namespace lowmem
