#include "layers/dropout.hpp"

#include "numerics/threads.hpp"

namespace lowmem {

template <class T> Dropout<T>::Dropout(std::string label, double p) : Layer<T>(std::move(label)), p_(p) {
  if (!(p >= 0 && p < 1)) shape_error(this->label(), "drops with probability p in [0, 1), got " + std::to_string(p));
}

// Forward and backward are the same map: the gradient of x m / (1 - p) is dy m / (1 - p).
template <class T> Tensor<T> Dropout<T>::apply(Tensor<T> t, const RunContext& ctx) const {
  using W = wide_t<T>;
  Tensor<T> y = t.overwritable(MemoryCategory::workspace);
  if (t.is_dry() || t.empty()) return y;
  const index_t n = t.dim(0), per_sample = t.numel() / n;
  const std::uint64_t step_key = Rng(key_, static_cast<std::uint64_t>(ctx.step)).next_u64();
  const W scale = W(1) / W(1 - p_);
  for_blocks(n, [&](index_t first, index_t end) {
    for (index_t s = first; s < end; ++s) {
      const Rng sample(step_key, static_cast<std::uint64_t>(ctx.first_sample + s));
      for (index_t i = 0; i < per_sample; ++i) {
        const double u = static_cast<double>(sample.peek_u64(static_cast<std::uint64_t>(i)) >> 11) * 0x1.0p-53;
        const index_t k = s * per_sample + i;
        y[k] = u < p_ ? T(0) : round_to<T>(W(round_to<W>(t[k]) * scale));
      }
    }
  });
  return y;
}

template <class T> Tensor<T> Dropout<T>::forward(Tensor<T> x, const RunContext& ctx) {
  if (!ctx.training || p_ == 0) return x;
  return apply(std::move(x), ctx);
}

template <class T> Tensor<T> Dropout<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  if (!want_input_grad) return {};
  if (p_ == 0) return dy;
  return apply(std::move(dy), ctx);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Dropout)

}  // namespace lowmem
