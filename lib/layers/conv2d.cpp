#include "layers/conv2d.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "layers/weight_products.hpp"

namespace lowmem {

namespace {

struct Geometry {
  index_t channels, height, width, kernel, stride, pad, out_height, out_width;
  index_t rows() const { return channels * kernel * kernel; }  // K of the column matrix
  index_t cols() const { return out_height * out_width; }      // P of the column matrix
  // Output columns ox in [lo, hi) read input column ox * stride - pad + j inside the row (0 <= . < width); the
  // others read the zero padding. lo = ceil((pad - j) / stride), hi = ceil((width + pad - j) / stride), clamped.
  std::pair<index_t, index_t> inside_columns(index_t j) const {
    const index_t lo = std::min(out_width, std::max<index_t>(0, (pad - j + stride - 1) / stride));
    const index_t hi = std::max(lo, std::min(out_width, (width + pad - j + stride - 1) / stride));
    return {lo, hi};
  }
};

Geometry geometry(const Conv2dSpec& s, index_t h, index_t w) {
  return {s.in_channels, h, w, s.kernel, s.stride, s.pad, (h + 2 * s.pad - s.kernel) / s.stride + 1,
          (w + 2 * s.pad - s.kernel) / s.stride + 1};
}

// Output rows are processed in bands of whole rows, as many as fit in RunContext::conv_band_columns columns
// (positions; one row if a row is wider), so that a thread holds the column matrix of a band, not of a whole
// image: for the reference CNN's second layer (32 channels, 28 x 28) at the default 256, K x 252 values instead of
// K x 784, 290 KB instead of 903 KB in f32. Bands of 256 cost no measurable speed (lowmem_bench: BM_Conv2dForward
// 17.8 ms before and after, BM_TrainStep 160 / 156 ms); bands of 128 cost 10 %.

// The bands of output rows [first, end).
struct Band {
  index_t first, end;
};
std::vector<Band> bands(const Geometry& g, index_t band_columns) {
  const index_t rows = std::max<index_t>(1, band_columns / g.out_width);
  std::vector<Band> out;
  for (index_t oy = 0; oy < g.out_height; oy += rows) out.push_back({oy, std::min(g.out_height, oy + rows)});
  return out;
}

// cols (K, P') of output rows [b.first, b.end), P' = their positions:
// cols[(c k + i) k + j][(oy - first) Wo + ox] = x[c][oy s - pad + i][ox s - pad + j], zero outside.
template <class T, class G> void im2col(const T* x, const Geometry& g, const Band& b, G* cols) {
  const index_t width = (b.end - b.first) * g.out_width;
  for (index_t c = 0; c < g.channels; ++c)
    for (index_t i = 0; i < g.kernel; ++i)
      for (index_t j = 0; j < g.kernel; ++j) {
        G* row = cols + ((c * g.kernel + i) * g.kernel + j) * width;
        for (index_t oy = b.first; oy < b.end; ++oy) {
          const index_t y = oy * g.stride - g.pad + i;
          G* out = row + (oy - b.first) * g.out_width;
          if (y < 0 || y >= g.height) {
            std::fill(out, out + g.out_width, G(0));
            continue;
          }
          const T* in = x + (c * g.height + y) * g.width;
          const auto [lo, hi] = g.inside_columns(j);
          std::fill(out, out + lo, G(0));
          if (g.stride == 1 && std::is_same_v<T, G>)  // a plain copy: vectorised
            std::copy(in + lo - g.pad + j, in + hi - g.pad + j, out + lo);
          else
            for (index_t ox = lo; ox < hi; ++ox) out[ox] = round_to<G>(in[ox * g.stride - g.pad + j]);
          std::fill(out + hi, out + g.out_width, G(0));
        }
      }
}

// The adjoint of im2col for one band: dx[c][y][x] += dcols at every position that read it.
template <class G> void col2im_add(const G* cols, const Geometry& g, const Band& b, G* dx) {
  const index_t width = (b.end - b.first) * g.out_width;
  for (index_t c = 0; c < g.channels; ++c)
    for (index_t i = 0; i < g.kernel; ++i)
      for (index_t j = 0; j < g.kernel; ++j) {
        const G* row = cols + ((c * g.kernel + i) * g.kernel + j) * width;
        for (index_t oy = b.first; oy < b.end; ++oy) {
          const index_t y = oy * g.stride - g.pad + i;
          if (y < 0 || y >= g.height) continue;
          G* out = dx + (c * g.height + y) * g.width;
          const auto [lo, hi] = g.inside_columns(j);
          const G* in = row + (oy - b.first) * g.out_width;
          if (g.stride == 1) {  // contiguous on both sides: vectorised
            G* to = out - g.pad + j;
            for (index_t ox = lo; ox < hi; ++ox) to[ox] += in[ox];
          } else {
            for (index_t ox = lo; ox < hi; ++ox) out[ox * g.stride - g.pad + j] += in[ox];
          }
        }
      }
}

}  // namespace

template <class T>
Conv2d<T>::Conv2d(std::string label, Conv2dSpec spec)
    : Layer<T>(std::move(label)),
      spec_(spec),
      weight_(make_param<T>("weight", Shape{spec.out_channels, spec.in_channels, spec.kernel, spec.kernel})),
      bias_(spec.bias ? make_param<T>("bias", Shape{spec.out_channels}) : Param<T>{}) {
  weight_.may_be_sparse = true;
}

template <class T> Shape Conv2d<T>::output_shape(const Shape& in) const {
  expect_rank(this->label(), in, 3);
  if (in[0] != spec_.in_channels)
    shape_error(this->label(), "expects " + std::to_string(spec_.in_channels) + " input channels, got " + in.str());
  if (in[1] + 2 * spec_.pad < spec_.kernel || in[2] + 2 * spec_.pad < spec_.kernel)
    shape_error(this->label(), "kernel " + std::to_string(spec_.kernel) + " is larger than the padded input " + in.str());
  const Geometry g = geometry(spec_, in[1], in[2]);
  return Shape{spec_.out_channels, g.out_height, g.out_width};
}

template <class T> void Conv2d<T>::initialize(Rng& rng) {
  const double std = std::sqrt(2.0 / static_cast<double>(spec_.in_channels * spec_.kernel * spec_.kernel));
  for (index_t i = 0; i < weight_.value.numel(); ++i) weight_.value[i] = round_to<T>(std * rng.normal());
  if (spec_.bias) bias_.value.fill(T(0));
}

template <class T> std::vector<Param<T>*> Conv2d<T>::params() {
  if (spec_.bias) return {&weight_, &bias_};
  return {&weight_};
}

// Images are spread over the OpenMP threads in fixed contiguous blocks (schedule static), each thread with its own
// column and packing buffers; weight gradients are summed per thread and then over threads in thread order, so
// results are identical from run to run at a given thread count. Workspace grows with the thread count. The
// columns hold the input's values in its storage type (a copy, no rounding): the product converts them while
// packing (weight_products.hpp), so a 16-bit input is never widened whole.
template <class T> Tensor<T> Conv2d<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0);
  const Geometry g = geometry(spec_, x.dim(2), x.dim(3));
  const index_t cout = spec_.out_channels, K = g.rows(), P = g.cols(), image = g.channels * g.height * g.width;
  const int threads = static_cast<int>(std::min<index_t>(omp_get_max_threads(), n));
  Tensor<T> y(Shape{n, cout, g.out_height, g.out_width}, MemoryCategory::workspace);
  const std::vector<Band> row_bands = bands(g, ctx.conv_band_columns);
  const index_t band_width = (row_bands[0].end - row_bands[0].first) * g.out_width;  // the widest band
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    Tensor<T> cols(Shape{threads, K, band_width}, MemoryCategory::workspace);
    Tensor<G> out(Shape{threads, cout, band_width}, MemoryCategory::workspace);
    Tensor<float> packing = packing_workspace(weight_, threads, packing_floats<G>(cout, band_width, K));
    if (cols.is_dry() || x.is_dry()) return;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (index_t s = 0; s < n; ++s) {
      const int t = omp_get_thread_num();
      T* my_cols = cols.data() + t * K * band_width;
      G* my_out = out.data() + t * cout * band_width;
      float* my_packing = packing_row(packing, t);
      for (const Band& b : row_bands) {
        const index_t width = (b.end - b.first) * g.out_width;
        im2col(x.data() + s * image, g, b, my_cols);
        weight_product(weight_, cout, K, false, MatrixView<T>::row_major(my_cols, K, width),
                       OutputView<G>::row_major(my_out, cout, width), false, my_packing);
        for (index_t c = 0; c < cout; ++c) {
          if (spec_.bias) {
            const G bias = round_to<G>(bias_.value[c]);
            for (index_t p = 0; p < width; ++p) my_out[c * width + p] += bias;
          }
          store_rounded(my_out + c * width, y.data() + (s * cout + c) * P + b.first * g.out_width, width, false);
        }
      }
    }
  });
  if (ctx.keeps()) input_.keep(x);
  return y;
}

// Per image and band: db += row sums of dY, dW += dY cols^T, and (if wanted) dcols = W^T dY added into dx by col2im.
template <class T> Tensor<T> Conv2d<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<T> x = input_.take();
  const index_t n = x.dim(0);
  const Geometry g = geometry(spec_, x.dim(2), x.dim(3));
  const index_t cout = spec_.out_channels, K = g.rows(), P = g.cols(), image = g.channels * g.height * g.width;
  const int threads = static_cast<int>(std::min<index_t>(omp_get_max_threads(), n));
  // dL/dx over the kept input when nothing else holds it: image s is read whole (every band of its weight
  // gradient) before its input gradient is stored, and each image belongs to one thread.
  Tensor<T> dx;
  if (want_input_grad) dx = x.overwritable(MemoryCategory::workspace);
  const std::vector<Band> row_bands = bands(g, ctx.conv_band_columns);
  const index_t band_width = (row_bands[0].end - row_bands[0].first) * g.out_width;  // the widest band
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    Tensor<T> cols(Shape{threads, K, band_width}, MemoryCategory::workspace);
    // W^T dY of a band, in G, before col2im adds it into the image's input gradient: the columns' own buffer
    // when G is T (the columns are no longer needed by then), else one of its own.
    Tensor<G> dcols, dimage;
    if (want_input_grad) {
      if constexpr (!std::is_same_v<G, T>) dcols = Tensor<G>(Shape{threads, K, band_width}, MemoryCategory::workspace);
      dimage = Tensor<G>(Shape{threads, image}, MemoryCategory::workspace);
    }
    const index_t wn = weight_.value.numel();  // cout K, or the nonzeros of a sparse weight
    Tensor<G> dweight(Shape{threads, wn}, MemoryCategory::workspace);  // per-thread partial sums
    Tensor<G> dbias(Shape{threads, cout}, MemoryCategory::workspace);
    const index_t packing_need = std::max(packing_floats<G>(cout, K, band_width),
                                          want_input_grad ? packing_floats<G>(K, band_width, cout) : 0);
    Tensor<float> packing = packing_workspace(weight_, threads, packing_need);
    if (cols.is_dry() || x.is_dry()) return;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (index_t s = 0; s < n; ++s) {
      const int t = omp_get_thread_num();
      T* my_cols = cols.data() + t * K * band_width;
      G* my_dcols = nullptr;
      if constexpr (std::is_same_v<G, T>) my_dcols = my_cols;
      else if (want_input_grad) my_dcols = dcols.data() + t * K * band_width;
      G* my_dbias = dbias.data() + t * cout;
      G* my_dimage = dimage.empty() ? nullptr : dimage.data() + t * image;
      float* my_packing = packing_row(packing, t);
      // (my_dy is taken out here because clang 14 cannot capture dy and P into a lambda in an OpenMP loop in a
      // generic lambda.)
      const T* const my_dy = dy.data() + s * cout * P;
      auto output_gradient = [&](const Band& b, index_t width) {  // dY of this image and band, (cout, width)
        return MatrixView<T>{my_dy + b.first * g.out_width, cout, width, P, 1};
      };
      for (const Band& b : row_bands) {
        const index_t width = (b.end - b.first) * g.out_width;
        const MatrixView<T> dY = output_gradient(b, width);
        for (index_t c = 0; c < cout; ++c)
          for (index_t p = 0; p < width; ++p)
            my_dbias[c] += round_to<G>(dY(c, p));  // G is the accumulation rule: float, or 16-bit rounding each add
        im2col(x.data() + s * image, g, b, my_cols);
        add_weight_gradient(weight_, dY, MatrixView<T>::row_major(my_cols, K, width), dweight.data() + t * wn,
                            my_packing);
      }
      if (want_input_grad) {
        std::fill(my_dimage, my_dimage + image, G(0));
        for (const Band& b : row_bands) {
          const index_t width = (b.end - b.first) * g.out_width;
          weight_product(weight_, cout, K, true, output_gradient(b, width),
                         OutputView<G>::row_major(my_dcols, K, width), false, my_packing);
          col2im_add(my_dcols, g, b, my_dimage);
        }
        store_rounded(my_dimage, dx.data() + s * image, image, false);
      }
    }
    for (int t = 1; t < threads; ++t) {
      for (index_t i = 0; i < wn; ++i)
        dweight[i] += dweight[t * wn + i];
      for (index_t c = 0; c < cout; ++c)
        dbias[c] += dbias[t * cout + c];
    }
    store_rounded(dweight.data(), weight_.grad.data(), wn, true);
    if (spec_.bias) store_rounded(dbias.data(), bias_.grad.data(), cout, true);
  });
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Conv2d)

}  // namespace lowmem
