#include "techniques/approx_activations.hpp"

#include "techniques/checkpoint.hpp"

#include <algorithm>
#include <cmath>

#include "numerics/random.hpp"
#include "numerics/scalar.hpp"

namespace lowmem {

namespace {
constexpr index_t group_size = 256;  // actnn and naive: values per group
}  // namespace

namespace {

// Codes of `bits` bits packed little-endian into bytes.
void put(std::uint8_t* codes, index_t i, int bits, unsigned code) {
  const index_t bit = i * bits;
  codes[bit / 8] |= static_cast<std::uint8_t>(code << (bit % 8));
}
unsigned get(const std::uint8_t* codes, index_t i, int bits) {
  const index_t bit = i * bits;
  return (codes[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
}

// The quantisation groups of a tensor (N, C, ...) or (N, F): blpa, one per channel (dimension 1, strided);
// actnn and naive, runs of 256 consecutive values. Calls f(group, index of each value).
template <class F> void for_each_value(const Shape& s, CompressionPolicy::Method method, F&& f) {
  const index_t n = s.numel();
  if (method == CompressionPolicy::blpa) {
    const index_t channels = s[1], area = n / (s[0] * channels);
    for (index_t i = 0; i < n; ++i) f((i / area) % channels, i);
  } else {
    for (index_t i = 0; i < n; ++i) f(i / group_size, i);
  }
}

index_t group_count(const Shape& s, CompressionPolicy::Method method) {
  return method == CompressionPolicy::blpa ? s[1] : (s.numel() + group_size - 1) / group_size;
}

}  // namespace

template <class T> CompressedTensor compress(const Tensor<T>& t, const CompressionPolicy& policy) {
  CompressedTensor c;
  c.shape = t.shape();
  c.bits = policy.bits;
  c.method = policy.method;
  const index_t n = t.numel(), groups = group_count(t.shape(), policy.method);
  c.codes = Tensor<std::uint8_t>(Shape{(n * policy.bits + 7) / 8}, MemoryCategory::saved_activations);
  c.offset = Tensor<float>(Shape{groups}, MemoryCategory::saved_activations);
  c.step = Tensor<float>(Shape{groups}, MemoryCategory::saved_activations);
  if (t.is_dry() || c.codes.is_dry()) return c;
  const unsigned levels = 1u << policy.bits;
  std::vector<double> a(static_cast<std::size_t>(groups), 0), b(static_cast<std::size_t>(groups), 0);
  std::vector<index_t> count(static_cast<std::size_t>(groups), 0);
  if (policy.method == CompressionPolicy::blpa) {  // per channel: mean (a) and mean square (b)
    for_each_value(t.shape(), policy.method, [&](index_t g, index_t i) {
      const double x = to_double(t[i]);
      a[g] += x, b[g] += x * x, ++count[g];
    });
    for (index_t g = 0; g < groups; ++g) {
      const double mean = a[g] / count[g], sigma = std::sqrt(std::max(b[g] / count[g] - mean * mean, 1e-30));
      const double width = 6 * sigma / levels;  // levels span +-3 sigma ...
      // ... with 0 a level (code `shift`): shifted so that the range covers the mean.
      const double shift = std::clamp(std::floor(levels / 2.0 - std::floor(mean / width)), 1.0, levels - 1.0);
      c.offset[g] = static_cast<float>(shift), c.step[g] = static_cast<float>(width);
    }
  } else {  // per group: min (a) and max (b)
    for (index_t g = 0; g < groups; ++g) a[g] = INFINITY, b[g] = -INFINITY;
    for_each_value(t.shape(), policy.method, [&](index_t g, index_t i) {
      const double x = to_double(t[i]);
      a[g] = std::min(a[g], x), b[g] = std::max(b[g], x);
    });
    for (index_t g = 0; g < groups; ++g)
      c.offset[g] = static_cast<float>(a[g]), c.step[g] = static_cast<float>(std::max((b[g] - a[g]) / (levels - 1), 1e-30));
  }
  Rng rng(policy.seed, 0x51a7 + policy.calls++);
  std::uint8_t* codes = c.codes.data();
  std::fill(codes, codes + c.codes.numel(), std::uint8_t{0});
  for_each_value(t.shape(), policy.method, [&](index_t g, index_t i) {
    const double x = to_double(t[i]), offset = c.offset[g], step = c.step[g];
    double q;
    if (policy.method == CompressionPolicy::blpa) q = std::round(x / step) + offset;
    else if (policy.method == CompressionPolicy::actnn) q = std::floor((x - offset) / step + rng.uniform());
    else q = std::floor((x - offset) / step + 0.5);
    put(codes, i, policy.bits, static_cast<unsigned>(std::clamp(q, 0.0, levels - 1.0)));
  });
  return c;
}

template <class T> Tensor<T> decompress(const CompressedTensor& c) {
  Tensor<T> t(c.shape, MemoryCategory::workspace);
  if (t.is_dry() || c.codes.is_dry()) return t;
  const std::uint8_t* codes = c.codes.data();
  for_each_value(c.shape, c.method, [&](index_t g, index_t i) {
    const double code = get(codes, i, c.bits), offset = c.offset[g], step = c.step[g];
    t[i] = round_to<T>(c.method == CompressionPolicy::blpa ? (code - offset) * step : offset + code * step);
  });
  return t;
}

namespace {
template <class T> class Packed : public PackedTensor<T> {
 public:
  explicit Packed(CompressedTensor c) : c_(std::move(c)) {}
  Tensor<T> unpack() const override { return decompress<T>(c_); }

 private:
  CompressedTensor c_;
};
}  // namespace

template <class T> std::shared_ptr<const PackedTensor<T>> CompressionHook<T>::pack(const Tensor<T>& t) const {
  return std::make_shared<const Packed<T>>(compress(t, policy_));
}

template <class T> Tensor<T> CompressionHook<T>::forward_output(Tensor<T> y) const {
  if (policy_.method != CompressionPolicy::naive) return y;
  return decompress<T>(compress(y, policy_));  // naive: the next layer computes from the approximation
}

ApproxActivations::ApproxActivations(ConfigReader& r) {
  bits_ = r.get_in("bits", 8, 1, 64);
  if (bits_ != 2 && bits_ != 4 && bits_ != 8)
    r.fail("bits", "expected 2, 4 or 8 (the supported K-bit activations), got " + std::to_string(bits_));
  method_name_ = r.get_choice("method", "blpa", {"blpa", "naive", "actnn"});
  method_ = method_name_ == "actnn"   ? CompressionPolicy::actnn
            : method_name_ == "naive" ? CompressionPolicy::naive
                                      : CompressionPolicy::blpa;
}

std::string ApproxActivations::label() const {
  return std::string(name) + "-" + method_name_ + "-" + std::to_string(bits_);
}

void ApproxActivations::check_composition(const TechniqueList& all, const ConfigReader& run) const {
  if (method_ == CompressionPolicy::naive && find_technique<Checkpoint>(all))
    run.fail("technique", "approx_activations \"naive\" approximates each layer's output in the forward pass, and "
                          "checkpoint's recomputations would not repeat that: use method \"blpa\" or \"actnn\" with "
                          "checkpoint");
}

namespace {
template <class T> class ApproxHooks : public TechniqueHooks<T> {
 public:
  explicit ApproxHooks(const CompressionPolicy& policy) : hook_(policy) {}
  const SaveHook<T>* save_hook() const override { return &hook_; }

 private:
  CompressionHook<T> hook_;
};
}  // namespace

template <class T> std::unique_ptr<TechniqueHooks<T>> ApproxActivations::hooks_for(const TechniqueServices<T>& s) const {
  CompressionPolicy policy;
  policy.bits = bits_;
  policy.method = method_;
  policy.seed = s.seed;
  return std::make_unique<ApproxHooks<T>>(policy);
}

LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(ApproxActivations)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(CompressionHook)

#define LOWMEM_INSTANTIATE_COMPRESSION(T)                                                  \
  template CompressedTensor compress<T>(const Tensor<T>&, const CompressionPolicy&); \
  template Tensor<T> decompress<T>(const CompressedTensor&);
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_COMPRESSION)

}  // namespace lowmem
