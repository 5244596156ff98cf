#include "techniques/approx_activations.hpp"

#include "techniques/checkpoint.hpp"

#include <algorithm>
#include <cmath>

#include "numerics/random.hpp"
#include "tensor/state_archive.hpp"
#include "numerics/scalar.hpp"
#include "numerics/threads.hpp"

namespace lowmem {

namespace {

constexpr index_t group_size = 256;  // actnn and naive: values per group

// Codes of `bits` bits packed little-endian into bytes (zeroed before).
void put(std::uint8_t* codes, index_t i, int bits, unsigned code) {
  const index_t bit = i * bits;
  codes[bit / 8] |= static_cast<std::uint8_t>(code << (bit % 8));
}
unsigned get(const std::uint8_t* codes, index_t i, int bits) {
  const index_t bit = i * bits;
  return (codes[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
}

// The quantisation groups as runs of consecutive values, in memory order: a blpa group is a channel, made of its
// (sample, channel) planes of H x W values; an actnn or naive group is a run of 256 values. Run r is
// values [r length, (r + 1) length) (the last one cut at n) of group r mod `groups` (blpa) or r.
struct Runs {
  index_t n, length, channels;  // channels: 0 unless blpa
  Runs(const Shape& s, CompressionPolicy::Method method)
      : n(s.numel()),
        length(method == CompressionPolicy::blpa && n > 0 ? n / (s[0] * s[1]) : group_size),
        channels(method == CompressionPolicy::blpa ? s[1] : 0) {}
  index_t count() const { return n == 0 ? 0 : (n + length - 1) / length; }
  index_t groups() const { return channels ? channels : count(); }
  index_t group(index_t r) const { return channels ? r % channels : r; }
  index_t first(index_t r) const { return r * length; }
  index_t end(index_t r) const { return std::min(n, (r + 1) * length); }
};

// Calls f(group, first, end) for each run. In order (first ascending, so that a pass meets the values in memory
// order), or, with `parallel`, spread over the threads: only for passes whose runs are independent (each writes
// its own values or whole bytes of codes), which then give the same results at any thread count.
template <class F> void for_each_run(const Runs& runs, F&& f, bool parallel = false) {
  const index_t count = runs.count();
#pragma omp parallel for schedule(static) if (parallel && worth_threads(runs.n))
  for (index_t r = 0; r < count; ++r) f(runs.group(r), runs.first(r), runs.end(r));
}

// The uniform draw a SplitMix64 stream gives k calls from now, as a sum of two exact halves so that a loop of
// them vectorises (AVX2 converts 32-bit integers to double, not 64-bit ones); equal to Rng::uniform() bit for bit.
inline double uniform_at(const Rng& rng, std::uint64_t k) {
  const std::uint64_t v = rng.peek_u64(k) >> 11;  // 53 bits
  const double high = static_cast<std::int32_t>(v >> 26), low = static_cast<std::int32_t>(v & 0x3ffffff);
  return (high * 0x1.0p26 + low) * 0x1.0p-53;  // exact: high 2^26 + low < 2^53
}

// One code per byte into whole bytes of BITS-bit codes; returns the codes done, a multiple of 8 / BITS.
template <int BITS> index_t pack_bytes(const std::uint8_t* chunk, index_t count, std::uint8_t* out) {
  constexpr int per_byte = 8 / BITS;
  const index_t bytes = count / per_byte;
  for (index_t b = 0; b < bytes; ++b) {
    unsigned byte = 0;
    for (int k = 0; k < per_byte; ++k) byte |= unsigned{chunk[b * per_byte + k]} << (k * BITS);
    out[b] = static_cast<std::uint8_t>(byte);
  }
  return bytes * per_byte;
}

// The codes of one run, values[first, end), into codes (zeroed), up to 256 at a time: quantise(value, its index
// in the run) in a loop that stores nothing across values, so that it vectorises, then the packing.
template <class T, class Quantise>
void encode_run(const T* values, index_t first, index_t end, int bits, std::uint8_t* codes, Quantise&& quantise) {
  alignas(64) std::uint8_t chunk[256];
  for (index_t c = first; c < end; c += 256) {
    const index_t count = std::min<index_t>(256, end - c);
    for (index_t j = 0; j < count; ++j)
      chunk[j] = static_cast<std::uint8_t>(quantise(to_double(values[c + j]), c + j - first));
    // Whole bytes at once where the chunk starts on a byte (and the width is 2, 4 or 8); otherwise, and for a
    // ragged end, code by code.
    index_t j = 0;
    if (c * bits % 8 == 0 && (bits == 2 || bits == 4 || bits == 8)) {
      std::uint8_t* out = codes + c * bits / 8;
      j = bits == 2 ? pack_bytes<2>(chunk, count, out) : bits == 4 ? pack_bytes<4>(chunk, count, out)
                                                                   : pack_bytes<8>(chunk, count, out);
    }
    for (; j < count; ++j) put(codes, c + j, bits, chunk[j]);
  }
}

// Whole bytes of BITS-bit codes into one code per byte (BITS a constant, so the loop vectorises); returns the
// codes done, a multiple of 8 / BITS.
template <int BITS> index_t unpack_bytes(const std::uint8_t* in, index_t count, std::uint8_t* chunk) {
  constexpr int per_byte = 8 / BITS;
  const index_t bytes = count / per_byte;
  for (index_t b = 0; b < bytes; ++b)
    for (int k = 0; k < per_byte; ++k)
      chunk[b * per_byte + k] = static_cast<std::uint8_t>((in[b] >> (k * BITS)) & ((1u << BITS) - 1));
  return bytes * per_byte;
}

// The codes of values [c, c + count) into chunk, the inverse of encode_run's packing.
void decode_chunk(const std::uint8_t* codes, index_t c, index_t count, int bits, std::uint8_t* chunk) {
  index_t j = 0;
  if (c * bits % 8 == 0 && (bits == 2 || bits == 4 || bits == 8)) {
    const std::uint8_t* in = codes + c * bits / 8;
    j = bits == 2 ? unpack_bytes<2>(in, count, chunk) : bits == 4 ? unpack_bytes<4>(in, count, chunk)
                                                                   : unpack_bytes<8>(in, count, chunk);
  }
  for (; j < count; ++j) chunk[j] = static_cast<std::uint8_t>(get(codes, c + j, bits));
}

}  // namespace

template <class T> CompressedTensor compress(const Tensor<T>& t, const CompressionPolicy& policy) {
  CompressedTensor c;
  c.shape = t.shape();
  c.bits = policy.bits;
  c.method = policy.method;
  const Runs runs(t.shape(), policy.method);
  const index_t n = t.numel(), groups = runs.groups();
  c.codes = Tensor<std::uint8_t>(Shape{(n * policy.bits + 7) / 8}, MemoryCategory::saved_activations);
  c.offset = Tensor<float>(Shape{groups}, MemoryCategory::saved_activations);
  c.step = Tensor<float>(Shape{groups}, MemoryCategory::saved_activations);
  if (t.is_dry() || c.codes.is_dry()) return c;
  const T* x = t.data();
  const unsigned levels = 1u << policy.bits;
  const double top = levels - 1.0;
  std::vector<double> a(static_cast<std::size_t>(groups), 0), b(static_cast<std::size_t>(groups), 0);
  if (policy.method == CompressionPolicy::blpa) {  // per channel: mean (a) and mean square (b)
    // Channels apart (over the threads), each summing its planes in memory order.
#pragma omp parallel for schedule(static) if (worth_threads(n))
    for (index_t g = 0; g < groups; ++g) {
      double sum = 0, squares = 0;
      for (index_t r = g; r < runs.count(); r += groups)
        for (index_t i = runs.first(r); i < runs.end(r); ++i) {
          const double v = to_double(x[i]);
          sum += v, squares += v * v;
        }
      a[g] = sum, b[g] = squares;
    }
    const double count = static_cast<double>(n / groups);  // values per channel
    for (index_t g = 0; g < groups; ++g) {
      const double mean = a[g] / count, sigma = std::sqrt(std::max(b[g] / count - mean * mean, 1e-30));
      const double width = 6 * sigma / levels;  // levels span +-3 sigma ...
      // ... with 0 a level (code `shift`): shifted so that the range covers the mean.
      const double shift = std::clamp(std::floor(levels / 2.0 - std::floor(mean / width)), 1.0, levels - 1.0);
      c.offset[g] = static_cast<float>(shift), c.step[g] = static_cast<float>(width);
    }
  } else {  // per group: min (a) and max (b)
    for_each_run(
        runs, [&](index_t g, index_t first, index_t end) {
          double lo = INFINITY, hi = -INFINITY;
          for (index_t i = first; i < end; ++i) lo = std::min(lo, to_double(x[i])), hi = std::max(hi, to_double(x[i]));
          a[g] = lo, b[g] = hi;
        },
        true);
    for (index_t g = 0; g < groups; ++g)
      c.offset[g] = static_cast<float>(a[g]), c.step[g] = static_cast<float>(std::max((b[g] - a[g]) / (levels - 1), 1e-30));
  }
  const Rng rng(policy.seed, 0x51a7 + policy.calls++);  // actnn: one draw per value, value i the stream's i-th
  std::uint8_t* codes = c.codes.data();
  std::fill(codes, codes + c.codes.numel(), std::uint8_t{0});
  // Runs that start on a byte boundary write bytes of their own, so they are encoded over the threads (actnn and
  // naive always: 256 codes fill whole bytes); blpa planes whose codes share a byte, in order.
  const bool whole_bytes = runs.length * policy.bits % 8 == 0;
  for_each_run(
      runs, [&](index_t g, index_t first, index_t end) {
        const double offset = c.offset[g], step = c.step[g];
        auto code = [top](double q) { return static_cast<unsigned>(std::clamp(q, 0.0, top)); };
        switch (policy.method) {
          case CompressionPolicy::blpa:
            encode_run(x, first, end, policy.bits, codes,
                       [&](double v, index_t) { return code(std::round(v / step) + offset); });
            break;
          case CompressionPolicy::actnn: {
            Rng draws = rng;  // the stream from value `first` on
            draws.skip(static_cast<std::uint64_t>(first));
            encode_run(x, first, end, policy.bits, codes, [&](double v, index_t j) {
              return code(std::floor((v - offset) / step + uniform_at(draws, j)));
            });
            break;
          }
          case CompressionPolicy::naive:
            encode_run(x, first, end, policy.bits, codes,
                       [&](double v, index_t) { return code(std::floor((v - offset) / step + 0.5)); });
            break;
        }
      },
      whole_bytes);
  return c;
}

template <class T> Tensor<T> decompress(const CompressedTensor& c) {
  Tensor<T> t(c.shape, MemoryCategory::workspace);
  if (t.is_dry() || c.codes.is_dry()) return t;
  const std::uint8_t* codes = c.codes.data();
  T* out = t.data();
  for_each_run(  // each run writes its own values: over the threads
      Runs(c.shape, c.method),
      [&](index_t g, index_t first, index_t end) {
        const double offset = c.offset[g], step = c.step[g];
        alignas(64) std::uint8_t chunk[256];
        for (index_t at = first; at < end; at += 256) {
          const index_t count = std::min<index_t>(256, end - at);
          decode_chunk(codes, at, count, c.bits, chunk);
          T* o = out + at;
          if (c.method == CompressionPolicy::blpa) {
            for (index_t j = 0; j < count; ++j) o[j] = round_to<T>((chunk[j] - offset) * step);
          } else {
            for (index_t j = 0; j < count; ++j) o[j] = round_to<T>(offset + chunk[j] * step);
          }
        }
      },
      true);
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
  void archive(StateArchive& a, const std::string& prefix) override { a.value(prefix + "/calls", hook_.calls()); }

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
