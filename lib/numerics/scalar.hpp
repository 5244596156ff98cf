#pragma once
// The six precisions, the one place where values change format, and how 16-bit formats accumulate.
#include <Eigen/Core>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/math/constants/constants.hpp>
#include <boost/multiprecision/eigen.hpp>

#include "numerics/double_double.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

namespace lowmem {

using f16 = Eigen::half;
using bf16 = Eigen::bfloat16;
// The reference: IEEE quad's 113 significand bits, without expression templates so that generic code
// (`auto s = a + b`) holds values, not unevaluated expressions.
using mp = boost::multiprecision::number<
    boost::multiprecision::cpp_bin_float<113, boost::multiprecision::digit_base_2>, boost::multiprecision::et_off>;
// The fast reference: double-double's 106 bits (numerics/double_double.hpp), products on lowmem's GEMM.

enum class Precision { f32, f64, f16, bf16, mp, dd };

template <class T> inline constexpr bool is_16bit = std::is_same_v<T, f16> || std::is_same_v<T, bf16>;

template <class T> constexpr Precision precision_of() {
  if constexpr (std::is_same_v<T, float>) return Precision::f32;
  else if constexpr (std::is_same_v<T, double>) return Precision::f64;
  else if constexpr (std::is_same_v<T, f16>) return Precision::f16;
  else if constexpr (std::is_same_v<T, bf16>) return Precision::bf16;
  else if constexpr (std::is_same_v<T, dd>) return Precision::dd;
  else { static_assert(std::is_same_v<T, mp>); return Precision::mp; }
}

std::string to_string(Precision p);
Precision parse_precision(const std::string& name);  // throws lowmem::Error on an unknown name
inline const char* precision_names = "f32, f64, f16, bf16, dd, mp";

// Calls f.template operator()<T>() with the scalar type named by p: the single switch from runtime to types.
template <class F> decltype(auto) dispatch_precision(Precision p, F&& f) {
  switch (p) {
    case Precision::f32: return f.template operator()<float>();
    case Precision::f64: return f.template operator()<double>();
    case Precision::f16: return f.template operator()<f16>();
    case Precision::bf16: return f.template operator()<bf16>();
    case Precision::dd: return f.template operator()<dd>();
    case Precision::mp: break;
  }
  return f.template operator()<mp>();
}

// ---- Conversion: every change of format goes through round_to, which rounds exactly once. ----
// Eigen converts double -> half through float, rounding twice (1 + 2^-11 + 2^-40 becomes 1, not 1 + 2^-10).
// Rounding to odd at each intermediate format keeps the information a final round-to-nearest needs
// (Boldo & Melquiond: correct when the intermediate has at least 2 more bits than the target).
namespace detail {

template <class Narrow, class Wide> Narrow round_to_odd(const Wide& x) {
  using Bits = std::conditional_t<sizeof(Narrow) == 4, std::uint32_t, std::uint64_t>;
  Narrow r;
  if constexpr (std::is_same_v<Wide, mp>) r = x.template convert_to<Narrow>();
  else if constexpr (std::is_same_v<Wide, dd>) r = static_cast<Narrow>(x.hi);
  else r = static_cast<Narrow>(x);
  if (!std::isfinite(static_cast<double>(r)) || Wide(r) == x) return r;
  if (abs(Wide(r)) > abs(x)) r = std::nextafter(r, Narrow(0));  // truncate toward zero ...
  return std::bit_cast<Narrow>(std::bit_cast<Bits>(r) | Bits{1});  // ... then make the last bit odd
}

// Boost's mp -> double is not guaranteed to round to nearest: fix it up by comparing neighbours exactly.
inline double round_nearest_double(const mp& x) {
  double r = x.convert_to<double>();
  if (!std::isfinite(r)) return r;
  for (double candidate : {std::nextafter(r, -INFINITY), std::nextafter(r, INFINITY)}) {
    const mp dc = abs(mp(candidate) - x), dr = abs(mp(r) - x);
    if (dc < dr || (dc == dr && (std::bit_cast<std::uint64_t>(candidate) & 1) == 0)) r = candidate;
  }
  return r;
}

}  // namespace detail

template <class To, class From> To round_to(const From& x) {
  if constexpr (std::is_same_v<To, From>) return x;
  else if constexpr (is_16bit<From>) return round_to<To>(static_cast<float>(x));  // exact widening
  else if constexpr (std::is_same_v<To, mp>) {
    if constexpr (std::is_same_v<From, dd>) return mp(x.hi) + mp(x.lo);  // exact unless lo is far below hi
    else return mp(static_cast<double>(x));                              // float/double: exact
  } else if constexpr (std::is_same_v<To, dd>) {
    if constexpr (std::is_same_v<From, mp>) {  // hi nearest, lo the nearest to the rest: a normalised pair
      const double hi = detail::round_nearest_double(x);
      if (!std::isfinite(hi)) return dd(hi);
      return dd::fast_two_sum(hi, detail::round_nearest_double(x - mp(hi)));  // lo may be a tie: renormalise
    } else {
      return dd(static_cast<double>(x));  // float/double: exact
    }
  } else if constexpr (std::is_same_v<To, double>) {
    if constexpr (std::is_same_v<From, mp>) return detail::round_nearest_double(x);
    else return static_cast<double>(x);  // from dd: hi, already the nearest
  } else if constexpr (std::is_same_v<To, float>) {
    if constexpr (std::is_same_v<From, mp>) return static_cast<float>(detail::round_to_odd<double>(x));
    else if constexpr (std::is_same_v<From, dd>) return static_cast<float>(detail::round_to_odd<double>(x));
    else return static_cast<float>(x);
  } else {
    static_assert(is_16bit<To>);
    if constexpr (std::is_same_v<From, float>) return To(x);  // Eigen rounds float -> 16-bit to nearest even
    else if constexpr (std::is_same_v<From, double>) return To(detail::round_to_odd<float>(x));
    else return To(detail::round_to_odd<float>(detail::round_to_odd<double>(x)));
  }
}

template <class T> double to_double(const T& x) { return round_to<double>(x); }

// ---- Accumulation ----
// Sums inside matrix products, convolutions and reductions. For f16/bf16 they run in float and, if the run asks
// for 16-bit accumulation, are rounded back to the storage format after every addition, as 16-bit hardware without
// wide accumulators would. Other formats accumulate in themselves.
enum class Accumulate { f32, storage };

template <class T> using wide_t = std::conditional_t<is_16bit<T>, float, T>;

template <class T> inline wide_t<T> accumulate_round(const wide_t<T>& sum, Accumulate mode) {
  if constexpr (is_16bit<T>) return mode == Accumulate::storage ? static_cast<float>(T(sum)) : sum;
  else return sum;
}

// Written once for all five formats (Boost 1.74's NumTraits<mp> lacks infinity() and has a wrong lowest()).
template <class T> bool is_nan(const T& x) { return !(x == x); }

template <class T> bool is_finite(const T& x) {
  if constexpr (std::is_same_v<T, mp>) return boost::multiprecision::isfinite(x);
  else if constexpr (std::is_same_v<T, dd>) return std::isfinite(x.hi);
  else return std::isfinite(static_cast<double>(static_cast<wide_t<T>>(x)));
}

// Elementary functions for every compute type (16-bit values are computed in float and rounded once).
template <class G> G sqrt_of(const G& x) {
  if constexpr (std::is_same_v<G, mp>) return boost::multiprecision::sqrt(x);
  else if constexpr (std::is_same_v<G, dd>) return sqrt(x);
  else if constexpr (is_16bit<G>) return G(std::sqrt(static_cast<float>(x)));
  else return std::sqrt(x);
}
template <class G> G exp_of(const G& x) {
  if constexpr (std::is_same_v<G, mp>) return boost::multiprecision::exp(x);
  else if constexpr (std::is_same_v<G, dd>) return exp(x);
  else if constexpr (is_16bit<G>) return G(std::exp(static_cast<float>(x)));
  else return std::exp(x);
}
template <class G> G erf_of(const G& x) {
  if constexpr (std::is_same_v<G, mp>) return boost::multiprecision::erf(x);
  else if constexpr (std::is_same_v<G, dd>) return erf(x);
  else if constexpr (is_16bit<G>) return G(std::erf(static_cast<float>(x)));
  else return std::erf(x);
}
template <class G> G pi_of() {
  if constexpr (std::is_same_v<G, mp>) return boost::math::constants::pi<mp>();
  else if constexpr (std::is_same_v<G, dd>) return dd_pi;
  else return G(3.14159265358979323846);
}
template <class G> G log_of(const G& x) {
  if constexpr (std::is_same_v<G, mp>) return boost::multiprecision::log(x);
  else if constexpr (std::is_same_v<G, dd>) return log(x);
  else if constexpr (is_16bit<G>) return G(std::log(static_cast<float>(x)));
  else return std::log(x);
}
template <class G> G sigmoid_of(const G& x) { return G(G(1) / G(G(1) + exp_of(G(-x)))); }
// dd has no tanh of its own: (1 - e) / (1 + e) with e = exp(-2 |x|) <= 1, which cannot overflow (its absolute error
// is exp's, a few u^2).
template <class G> G tanh_of(const G& x) {
  if constexpr (std::is_same_v<G, mp>) {
    return boost::multiprecision::tanh(x);
  } else if constexpr (std::is_same_v<G, dd>) {
    const G e = exp_of(G(G(-2) * abs(x)));
    const G t = (G(1) - e) / (G(1) + e);
    return x < G(0) ? G(-t) : t;
  } else if constexpr (is_16bit<G>) {
    return G(std::tanh(static_cast<float>(x)));
  } else {
    return std::tanh(x);
  }
}

}  // namespace lowmem

// Explicit instantiation for the six precisions: templates are compiled once, in their own .cpp.
// LOWMEM_FOR_EACH_PRECISION(M) expands M(T) for each scalar type; the class form is the common case.
#define LOWMEM_FOR_EACH_PRECISION(M) M(float) M(double) M(::lowmem::f16) M(::lowmem::bf16) M(::lowmem::mp) M(::lowmem::dd)
#define LOWMEM_INSTANTIATE_FOR_PRECISIONS(Template) \
  template class Template<float>;                   \
  template class Template<double>;                  \
  template class Template<::lowmem::f16>;           \
  template class Template<::lowmem::bf16>;          \
  template class Template<::lowmem::mp>;            \
  template class Template<::lowmem::dd>;
