#include "layers/pooling.hpp"

#include <immintrin.h>

#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {

template <class T> Shape Pool2d<T>::output_shape(const Shape& in) const {
  expect_rank(this->label(), in, 3);
  if (in[1] < kernel_ || in[2] < kernel_)
    shape_error(this->label(), "window " + std::to_string(kernel_) + " is larger than the input " + in.str());
  return Shape{in[0], (in[1] - kernel_) / stride_ + 1, (in[2] - kernel_) / stride_ + 1};
}

namespace {

// Where in in[] the largest value of the kernel x kernel window at `corner` (row length w) is, with top = its
// value on return (in[corner] on entry). The first largest wins, and NaN wins, as in PyTorch. K: the kernel
// known at compile time (the loops unroll), or 0 to use `kernel`.
// f16 and bf16 compare on their bits (a comparison of the values would convert both to float): the sign and
// magnitude map to an integer in the values' order, -0 and +0 to the same one; magnitudes above +inf's are NaN.
template <class T> struct Bits16 {
  int key;
  bool nan;
  explicit Bits16(const T& v) {
    const int b = Eigen::numext::bit_cast<std::uint16_t>(v), magnitude = b & 0x7FFF;
    key = b & 0x8000 ? 0x8000 - magnitude : 0x8000 + magnitude;
    nan = magnitude > infinity_bits<T>;
  }
};

template <class T, index_t K>
index_t window_max(const T* in, index_t corner, index_t w, index_t kernel, T& top) {
  const index_t k = K ? K : kernel;
  index_t best = corner;
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < k; ++j) {
      const index_t at = corner + i * w + j;
      const T v = in[at];
      bool take;  // & and |: selects, not branches on data
      if constexpr (is_16bit<T>) {
        const Bits16<T> a(v), b(top);
        take = ((a.key > b.key) & !a.nan & !b.nan) | (a.nan & !b.nan);
      } else {
        const bool v_nan = is_nan(v), top_nan = is_nan(top);
        take = (v > top) | (v_nan & !top_nan);
      }
      best = take ? at : best;
      top = take ? v : top;
    }
  return best;
}

// 2 x 2 windows at stride 2 over one output row of f32, eight at a time: window_max<float, 2>'s comparisons in its
// order, lane by lane (the even and odd columns of each input row split apart in registers; the row's last
// windows with masked loads and stores, so nothing past the row is touched). r0, r1: the window rows, first: r0's
// offset in the plane, w: the row length. Returns the outputs done: all of them (wo or more: whole blocks) where
// AVX2 is compiled in, else none.
index_t max_row_2x2(const float* r0, const float* r1, index_t wo, std::int32_t first, std::int32_t w, float* y,
                    std::int32_t* argmax) {
  index_t ox = 0;
#ifdef __AVX2__
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; ox < wo; ox += 8) {
    const int count = static_cast<int>(std::min<index_t>(8, wo - ox));  // windows in this block
    // The first `values` lanes set (none for values <= 0); the block reads 2 count input values per row.
    const auto mask = [&](int values) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(values), lanes); };
    const __m256i lo_mask = mask(std::min(2 * count, 8)), hi_mask = mask(2 * count - 8);
    const auto split = [&](const float* r, __m256& even, __m256& odd) {  // r[0, 2, .., 14] and r[1, 3, .., 15]
      const __m256 lo = count == 8 ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, lo_mask);
      const __m256 hi = count == 8 ? _mm256_loadu_ps(r + 8) : _mm256_maskload_ps(r + 8, hi_mask);
      even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
      odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
    };
    __m256 v00, v01, v10, v11;
    split(r0 + 2 * ox, v00, v01);
    split(r1 + 2 * ox, v10, v11);
    const __m256i at = _mm256_add_epi32(_mm256_set1_epi32(first + 2 * static_cast<std::int32_t>(ox)),
                                        _mm256_add_epi32(lanes, lanes));
    __m256 top = v00;
    __m256 best = _mm256_castsi256_ps(at);
    const auto step = [&](__m256 v, __m256i where) {  // take = v > top, or v NaN and top not
      const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, top, _CMP_GT_OQ),
                                       _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), _mm256_cmp_ps(top, top, _CMP_ORD_Q)));
      top = _mm256_blendv_ps(top, v, take);
      best = _mm256_blendv_ps(best, _mm256_castsi256_ps(where), take);
    };
    step(v01, _mm256_add_epi32(at, _mm256_set1_epi32(1)));
    step(v10, _mm256_add_epi32(at, _mm256_set1_epi32(w)));
    step(v11, _mm256_add_epi32(at, _mm256_set1_epi32(w + 1)));
    const __m256i out_mask = mask(count);
    _mm256_maskstore_ps(y + ox, out_mask, top);
    if (argmax) _mm256_maskstore_epi32(argmax + ox, out_mask, _mm256_castps_si256(best));
  }
#else
  (void)r0, (void)r1, (void)wo, (void)first, (void)w, (void)y, (void)argmax;
#endif
  return ox;
}

// One output row of 2 x 2 windows at stride 2 (output row oy of `plane`, row length w) through max_row_2x2: f32
// directly; f16 and bf16 in blocks of up to 32 windows widened (exactly) into floats, each output then taken from
// the input at its argmax, so it has the input's own bits (a NaN's payload included). The float comparisons order
// the values as window_max's bit keys do (-0 and +0 equal, NaN first). Returns the outputs done.
template <class T>
index_t max_row_2x2(const T* plane, index_t oy, index_t wo, index_t w, T* y, std::int32_t* argmax) {
  const T* r0 = plane + 2 * oy * w;
  const auto first = static_cast<std::int32_t>(2 * oy * w);
  if constexpr (std::is_same_v<T, float>) {
    return max_row_2x2(r0, r0 + w, wo, first, static_cast<std::int32_t>(w), y, argmax);
  } else {
    constexpr index_t block = 32;
    float rows[2][2 * block], top[block];
    std::int32_t at[block];
    for (index_t ox = 0; ox < wo; ox += block) {
      const index_t count = std::min(block, wo - ox);
      convert(r0 + 2 * ox, rows[0], 2 * count);
      convert(r0 + w + 2 * ox, rows[1], 2 * count);
      const index_t done = std::min(count, max_row_2x2(rows[0], rows[1], count, first + static_cast<std::int32_t>(2 * ox),
                                                        static_cast<std::int32_t>(w), top, at));
      for (index_t o = 0; o < done; ++o) {
        y[ox + o] = plane[at[o]];
        if (argmax) argmax[ox + o] = at[o];
      }
      if (done < count) return ox + done;
    }
    return wo;
  }
}

}  // namespace

template <class T> Tensor<T> MaxPool<T>::forward(Tensor<T> x, const RunContext& ctx) {
  input_shape_ = x.shape();
  const index_t planes = x.dim(0) * x.dim(1), h = x.dim(2), w = x.dim(3);
  const Shape out = this->output_shape(Shape{x.dim(1), h, w});
  const index_t ho = out[1], wo = out[2];
  Tensor<T> y(Shape{x.dim(0), x.dim(1), ho, wo}, MemoryCategory::workspace, Init::none);  // both written whole
  Tensor<std::int32_t> argmax;
  if (ctx.keeps()) argmax = Tensor<std::int32_t>(y.shape(), MemoryCategory::workspace, Init::none);
  // Planes are independent (each output from its own window): spread over the threads, same results at any count.
  const bool keeps = ctx.keeps();
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
  for (index_t p = 0; p < (x.is_dry() ? 0 : planes); ++p) {
    const T* in = x.data() + p * h * w;
    for (index_t oy = 0; oy < ho; ++oy) {
      index_t ox = 0;
      if constexpr (std::is_same_v<T, float> || is_16bit<T>)
        if (kernel_ == 2 && stride_ == 2)
          ox = max_row_2x2(in, oy, wo, w, y.data() + (p * ho + oy) * wo,
                           keeps ? argmax.data() + (p * ho + oy) * wo : nullptr);
      for (; ox < wo; ++ox) {
        const index_t corner = (oy * stride_) * w + ox * stride_;
        T top = in[corner];
        const index_t best = kernel_ == 2 ? window_max<T, 2>(in, corner, w, 2, top)  // unrolled: 3x faster
                                          : window_max<T, 0>(in, corner, w, kernel_, top);
        const index_t o = (p * ho + oy) * wo + ox;
        y[o] = top;
        if (keeps) argmax[o] = static_cast<std::int32_t>(best);
      }
    }
  }
  if (ctx.keeps()) argmax_.keep(argmax);
  return y;
}

namespace {

// Input gradients of pooling: overlapping windows (stride < kernel) add several contributions into one input.
// They are summed in the wide type and rounded once into T (16-bit storage: float sums, rounded after every
// addition only with 16-bit accumulation).
// A 16-bit type sums in the wide type, one plane at a time: a window never leaves its plane, so a plane's sums
// are complete when the adds move on to the next plane, and are converted into dx then. The wide buffer is one
// plane, not the whole input, and each value is summed in the same order as over a whole-tensor buffer.
// Adds must come plane by plane, in increasing order.
template <class T> class InputGradientSums {
 public:
  using W = wide_t<T>;
  InputGradientSums(const Shape& shape, Accumulate mode)
      : dx_(shape, MemoryCategory::workspace), plane_(shape[2] * shape[3]), mode_(mode) {
    if constexpr (!std::is_same_v<W, T>) wide_ = Tensor<W>(Shape{plane_}, MemoryCategory::workspace);
  }
  void add(index_t at, const W& value) {
    if constexpr (std::is_same_v<W, T>) {
      dx_[at] = dx_[at] + value;
    } else {
      if (at / plane_ != current_) flush(at / plane_);
      wide_[at - current_ * plane_] = accumulate_round<T>(wide_[at - current_ * plane_] + value, mode_);
    }
  }
  Tensor<T> result() {
    if constexpr (!std::is_same_v<W, T>) flush(current_ + 1);
    return dx_;
  }

 private:
  void flush(index_t next) {  // plane current_ is complete: into dx, and start `next` from zeros
    if (!wide_.is_dry() && !dx_.is_dry()) {
      convert(wide_.data(), dx_.data() + current_ * plane_, plane_);
      wide_.fill(W(0));
    }
    current_ = next;
  }
  Tensor<T> dx_;
  index_t plane_;
  Tensor<W> wide_;
  index_t current_ = 0;
  Accumulate mode_;
};

}  // namespace

template <class T> Tensor<T> MaxPool<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<std::int32_t>& argmax = argmax_.get();
  Tensor<T> dx;
  if (want_input_grad && stride_ >= kernel_) {
    // Windows apart: each input takes at most one gradient, which is added to zero as the sums below would add it
    // (the same bits: +0 for -0, a NaN quieted), plane by plane over the threads, with no wide buffer.
    using W = wide_t<T>;
    dx = Tensor<T>(input_shape_, MemoryCategory::workspace);
    const index_t plane_in = input_shape_[2] * input_shape_[3], plane_out = dy.dim(2) * dy.dim(3);
    const index_t planes = dy.is_dry() ? 0 : dy.dim(0) * dy.dim(1);
#pragma omp parallel for schedule(static) if (worth_threads(dy.numel()))
    for (index_t p = 0; p < planes; ++p)
      for (index_t o = p * plane_out; o < (p + 1) * plane_out; ++o)
        dx[p * plane_in + argmax[o]] = round_to<T>(accumulate_round<T>(W(W(0) + round_to<W>(dy[o])), ctx.accumulate));
  } else if (want_input_grad) {
    InputGradientSums<T> sums(input_shape_, ctx.accumulate);
    const index_t plane_in = input_shape_[2] * input_shape_[3], plane_out = dy.dim(2) * dy.dim(3);
    for (index_t o = 0; o < (dy.is_dry() ? 0 : dy.numel()); ++o)
      sums.add((o / plane_out) * plane_in + argmax[o], round_to<wide_t<T>>(dy[o]));
    dx = sums.result();
  }
  argmax_.release();
  return dx;
}

template <class T> Tensor<T> AvgPool<T>::forward(Tensor<T> x, const RunContext& ctx) {
  input_shape_ = x.shape();
  const index_t planes = x.dim(0) * x.dim(1), h = x.dim(2), w = x.dim(3);
  const Shape out = this->output_shape(Shape{x.dim(1), h, w});
  const index_t ho = out[1], wo = out[2];
  Tensor<T> y(Shape{x.dim(0), x.dim(1), ho, wo}, MemoryCategory::workspace);
  using W = wide_t<T>;
  const W count = round_to<W>(static_cast<double>(kernel_ * kernel_));
  for (index_t p = 0; p < (x.is_dry() ? 0 : planes); ++p)
    for (index_t oy = 0; oy < ho; ++oy)
      for (index_t ox = 0; ox < wo; ++ox) {
        W sum(0);
        for (index_t i = 0; i < kernel_; ++i)
          for (index_t j = 0; j < kernel_; ++j)
            sum = accumulate_round<T>(sum + round_to<W>(x[(p * h + oy * stride_ + i) * w + ox * stride_ + j]),
                                      ctx.accumulate);
        y[(p * ho + oy) * wo + ox] = round_to<T>(W(sum / count));
      }
  return y;
}

template <class T> Tensor<T> AvgPool<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  if (!want_input_grad) return {};
  InputGradientSums<T> sums(input_shape_, ctx.accumulate);
  const index_t planes = input_shape_[0] * input_shape_[1], h = input_shape_[2], w = input_shape_[3];
  const index_t ho = dy.dim(2), wo = dy.dim(3);
  using W = wide_t<T>;
  const W count = round_to<W>(static_cast<double>(kernel_ * kernel_));
  for (index_t p = 0; p < (dy.is_dry() ? 0 : planes); ++p)
    for (index_t oy = 0; oy < ho; ++oy)
      for (index_t ox = 0; ox < wo; ++ox) {
        const W share = round_to<W>(dy[(p * ho + oy) * wo + ox]) / count;
        for (index_t i = 0; i < kernel_; ++i)
          for (index_t j = 0; j < kernel_; ++j) sums.add((p * h + oy * stride_ + i) * w + ox * stride_ + j, share);
      }
  return sums.result();
}

template <class T> Shape GlobalAvgPool<T>::output_shape(const Shape& in) const {
  expect_rank(this->label(), in, 3);
  return Shape{in[0]};
}

template <class T> Tensor<T> GlobalAvgPool<T>::forward(Tensor<T> x, const RunContext& ctx) {
  input_shape_ = x.shape();
  const index_t planes = x.dim(0) * x.dim(1), area = x.dim(2) * x.dim(3);
  Tensor<T> y(Shape{x.dim(0), x.dim(1)}, MemoryCategory::workspace);
  using W = wide_t<T>;
  const W count = round_to<W>(static_cast<double>(area));
  for (index_t p = 0; p < (x.is_dry() ? 0 : planes); ++p) {
    W sum(0);
    for (index_t i = 0; i < area; ++i) sum = accumulate_round<T>(sum + round_to<W>(x[p * area + i]), ctx.accumulate);
    y[p] = round_to<T>(W(sum / count));
  }
  return y;
}

template <class T> Tensor<T> GlobalAvgPool<T>::backward(Tensor<T> dy, const RunContext&, bool want_input_grad) {
  if (!want_input_grad) return {};
  Tensor<T> dx(input_shape_, MemoryCategory::workspace);
  const index_t planes = input_shape_[0] * input_shape_[1], area = input_shape_[2] * input_shape_[3];
  using W = wide_t<T>;
  const W count = round_to<W>(static_cast<double>(area));
  for (index_t p = 0; p < (dy.is_dry() ? 0 : planes); ++p) {
    const T share = round_to<T>(W(round_to<W>(dy[p]) / count));
    for (index_t i = 0; i < area; ++i) dx[p * area + i] = share;
  }
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Pool2d)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(MaxPool)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(AvgPool)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(GlobalAvgPool)

}  // namespace lowmem
