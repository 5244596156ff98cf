#include "numerics/scalar.hpp"

#include "numerics/error.hpp"

namespace lowmem {

std::string to_string(Precision p) {
  switch (p) {
    case Precision::f32: return "f32";
    case Precision::f64: return "f64";
    case Precision::f16: return "f16";
    case Precision::bf16: return "bf16";
    case Precision::mp: return "mp";
    case Precision::dd: return "dd";
  }
  return "?";
}

Precision parse_precision(const std::string& name) {
  for (Precision p : {Precision::f32, Precision::f64, Precision::f16, Precision::bf16, Precision::dd, Precision::mp})
    if (to_string(p) == name) return p;
  throw Error("unknown precision \"" + name + "\" (expected one of " + precision_names + ")");
}

}  // namespace lowmem
