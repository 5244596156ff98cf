#include "layers/conv2d.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <optional>

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
          for (index_t ox = lo; ox < hi; ++ox) out[ox * g.stride - g.pad + j] += row[(oy - b.first) * g.out_width + ox];
        }
      }
}

// Values of the zero-padded image (Cin, Hp, Wp) the in-place form holds.
index_t padded_size(const Geometry& g) { return g.channels * (g.height + 2 * g.pad) * (g.width + 2 * g.pad); }

// Whether the in-place form serves this geometry, storage type T, compute type G and band: it must need no more
// memory than the copied columns would (narrow bands, set to save memory, hold fewer values than the padded
// image). Sparse weights keep copied columns: with them one golden run's final test loss moved in its 8th digit,
// for a reason not yet found (every dense run gives the same bits in both forms).
template <class T, class G> bool in_place_serves(const Geometry& g, index_t band_rows, bool sparse) {
  return sums_on_gemm<G> && !sparse && g.stride == 1 && padded_size(g) < (index_t{1} << 31) &&
         padded_size(g) * index_t(sizeof(G)) <= g.rows() * band_rows * g.out_width * index_t(sizeof(T));
}

// Calls f.template operator()<S>() with S the type Columns holds: G in place, else T.
template <class T, class G, class F> void with_column_type(bool in_place, F&& f) {
  if constexpr (!std::is_same_v<T, G>)
    if (in_place) return f.template operator()<G>();
  f.template operator()<T>();
}

// The column matrix of a band, K x n (K = Cin k k rows (c, i, j), n positions), in one of two forms:
//  - in place (stride 1, products in lowmem's GEMM): a zero-padded copy of the image, (Cin, Hp, Wp) = (Cin, H + 2 pad,
//    W + 2 pad), read through K row offsets: row (c, i, j) of the band starting at output row `first` is the
//    padded image from c Hp Wp + (first + i) Wp + j on, so the K x n values are never copied. Positions then run
//    over the padded width: output row r of the band is positions [r Wp, r Wp + Wo), and the k - 1 positions
//    between two rows are computed and dropped (7 % more products on 28 x 28 images, 14 % on 14 x 14);
//    n = (rows - 1) Wp + Wo. The input gradient is gathered the same way, into a padded image gradient.
//  - copied (any stride; mp and 16-bit storage accumulation, whose products Eigen makes from plain matrices;
//    sparse weights; bands too narrow for the padded image to pay): im2col forms the band's columns, n = rows Wo,
//    and col2im adds their gradient back.
// S, the type the buffer holds: in place, the compute type G (a 16-bit image summed in float is widened, exactly,
// as it is copied in, so the products read it in place rather than converting each value again in every packed
// panel: one image per thread); copied, the storage type T (the columns are up to k^2 times the image, and are
// converted while packed).
// One per layer call; thread t uses row t of each buffer.
template <class S> class Columns {
 public:
  Columns(const Geometry& g, bool in_place, int threads, index_t band_rows)
      : g_(g),
        in_place_(in_place),
        per_thread_(in_place ? padded_size(g) : g.rows() * band_rows * g.out_width),
        buffer_(Shape{threads, per_thread_}, MemoryCategory::workspace) {
    if (!in_place_) return;
    offsets_ = Tensor<std::int32_t>(Shape{g.rows()}, MemoryCategory::workspace);
    if (offsets_.is_dry()) return;
    for (index_t c = 0; c < g.channels; ++c)
      for (index_t i = 0; i < g.kernel; ++i)
        for (index_t j = 0; j < g.kernel; ++j)
          offsets_[(c * g.kernel + i) * g.kernel + j] =
              static_cast<std::int32_t>((c * padded_height() + i) * pitch() + j);
  }
  bool in_place() const { return in_place_; }
  index_t padded_height() const { return g_.height + 2 * g_.pad; }
  // Positions per output row, and positions of a band.
  index_t pitch() const { return in_place_ ? g_.width + 2 * g_.pad : g_.out_width; }
  index_t positions(const Band& b) const {
    return in_place_ ? (b.end - b.first - 1) * pitch() + g_.out_width : (b.end - b.first) * g_.out_width;
  }
  // Thread t takes image x (C, H, W): in place, it is copied into the padded buffer's interior (the border, never
  // written, stays zero); copied, nothing is done until band() forms the columns.
  template <class T> void load(int t, const T* x) {
    if (!in_place_) return;
    S* padded = buffer_.data() + t * per_thread_;
    for (index_t c = 0; c < g_.channels; ++c)
      for (index_t y = 0; y < g_.height; ++y)
        convert(x + (c * g_.height + y) * g_.width, padded + (c * padded_height() + y + g_.pad) * pitch() + g_.pad,
                g_.width);
  }
  // The band's columns (K x positions(b)) of image x, which thread t has loaded.
  template <class T> MatrixView<S> band(int t, const Band& b, const T* x) {
    S* mine = buffer_.data() + t * per_thread_;
    if (in_place_) return MatrixView<S>::rows_at(mine + b.first * pitch(), offsets_.data(), g_.rows(), positions(b));
    im2col(x, g_, b, mine);
    return MatrixView<S>::row_major(mine, g_.rows(), positions(b));
  }
  // Values of an image gradient gathered by add_gradient: padded in place, else (C, H, W).
  index_t gradient_size() const { return in_place_ ? padded_size(g_) : g_.channels * g_.height * g_.width; }
  // dimage += the band's column gradient dcols (K x positions(b)), each value where its column read it.
  template <class G> void add_gradient(const G* dcols, const Band& b, G* dimage) const {
    if (!in_place_) return col2im_add(dcols, g_, b, dimage);
    const index_t n = positions(b);
    for (index_t r = 0; r < g_.rows(); ++r) {
      G* to = dimage + offsets_[r] + b.first * pitch();
      const G* from = dcols + r * n;
      for (index_t q = 0; q < n; ++q) to[q] += from[q];
    }
  }
  // dx (C, H, W) = dimage (its interior, in place), rounded once into T.
  template <class G, class T> void store_gradient(const G* dimage, T* dx) const {
    if (!in_place_) return store_rounded(dimage, dx, g_.channels * g_.height * g_.width, false);
    for (index_t c = 0; c < g_.channels; ++c)
      for (index_t y = 0; y < g_.height; ++y)
        store_rounded(dimage + (c * padded_height() + y + g_.pad) * pitch() + g_.pad,
                      dx + (c * g_.height + y) * g_.width, g_.width, false);
  }
  bool is_dry() const { return buffer_.is_dry(); }
  // Thread t's buffer: copied, a band's columns, free for other use once they have been read.
  S* buffer(int t) { return buffer_.data() + t * per_thread_; }

 private:
  Geometry g_;
  bool in_place_;
  index_t per_thread_;
  Tensor<S> buffer_;                // per thread: the padded image (in place) or a band's columns
  Tensor<std::int32_t> offsets_;    // in place: where row (c, i, j) starts in the padded image
};

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
// columns hold one image per thread in the compute type, or one band's columns in the storage type (Columns,
// above); the weights stay in their storage type and are converted while packed.
template <class T> Tensor<T> Conv2d<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0);
  const Geometry g = geometry(spec_, x.dim(2), x.dim(3));
  const index_t cout = spec_.out_channels, K = g.rows(), P = g.cols(), image = g.channels * g.height * g.width;
  const int threads = static_cast<int>(std::min<index_t>(omp_get_max_threads(), n));
  Tensor<T> y(Shape{n, cout, g.out_height, g.out_width}, MemoryCategory::workspace, Init::none);  // written whole
  const std::vector<Band> row_bands = bands(g, ctx.conv_band_columns);
  const index_t band_rows = row_bands[0].end - row_bands[0].first;  // the widest band
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const bool in_place = in_place_serves<T, G>(g, band_rows, weight_.pattern != nullptr);
    with_column_type<T, G>(in_place, [&]<class S>() {
      Columns<S> columns(g, in_place, threads, band_rows);
      const index_t most = columns.positions(row_bands[0]);
      Tensor<G> out(Shape{threads, cout, most}, MemoryCategory::workspace, Init::none);
      Tensor<float> packing = packing_workspace(weight_, threads, packing_floats<G>(cout, most, K));
      if (columns.is_dry() || x.is_dry()) return;
#pragma omp parallel for num_threads(threads) schedule(static)
      for (index_t s = 0; s < n; ++s) {
        const int t = omp_get_thread_num();
        G* my_out = out.data() + t * cout * most;
        const T* my_x = x.data() + s * image;
        columns.load(t, my_x);
        for (const Band& b : row_bands) {
          const index_t positions = columns.positions(b);
          weight_product(weight_, cout, K, false, columns.band(t, b, my_x),
                         OutputView<G>::row_major(my_out, cout, positions), false, packing_row(packing, t));
          for (index_t c = 0; c < cout; ++c)
            for (index_t oy = b.first; oy < b.end; ++oy) {
              G* row = my_out + c * positions + (oy - b.first) * columns.pitch();
              if (spec_.bias) {
                const G bias = round_to<G>(bias_.value[c]);
                for (index_t p = 0; p < g.out_width; ++p) row[p] += bias;
              }
              store_rounded(row, y.data() + (s * cout + c) * P + oy * g.out_width, g.out_width, false);
            }
        }
      }
    });
  });
  if (ctx.keeps()) input_.keep(x);
  return y;
}

// Per image: db += the row sums of dY; per band dW += dY cols^T; and, if wanted, the input gradient (transposed
// or scattered, below).
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
  const index_t band_rows = row_bands[0].end - row_bands[0].first;  // the widest band
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const bool in_place = in_place_serves<T, G>(g, band_rows, weight_.pattern != nullptr);
    with_column_type<T, G>(in_place, [&]<class S>() {
      Columns<S> columns(g, in_place, threads, band_rows);
      const index_t most = columns.positions(row_bands[0]);
      // In place, a band's dY is laid out over the padded width (zeros between rows); copied, dy is read as it is.
      Tensor<T> spread;
      if (columns.in_place()) spread = Tensor<T>(Shape{threads, cout, most}, MemoryCategory::workspace);
      // The input gradient, in one of two ways:
      //  - transposed (stride 1 with the in-place columns): dX is the convolution of dY, zero-padded by k - 1 - pad,
      //    with the weights flipped in space and transposed, Wt (Cin, Cout k k), Wt[ci][(co, k-1-i, k-1-j)] =
      //    W[co][ci][i][j]: one product per band with Cout k k terms per entry, run as the forward's (dY's columns in
      //    place in its padded copy, positions over the padded width), each value of dX one chain of sums;
      //  - scattered (otherwise): per band the column gradient dcols = W^T dY, added into the image gradient where
      //    each column value was read (col2im). Copied columns in G are no longer needed once the band's weight
      //    gradient is formed, so their buffer takes the column gradient (16-bit columns summed in float are too
      //    narrow for it).
      const Geometry gt{cout, g.out_height, g.out_width, g.kernel, 1, g.kernel - 1 - g.pad, g.height, g.width};
      const std::vector<Band> dx_bands = bands(gt, ctx.conv_band_columns);
      const index_t dx_band_rows = dx_bands[0].end - dx_bands[0].first;
      const bool reuse_columns = !columns.in_place() && std::is_same_v<S, G>;
      // Transposed when it serves and needs no more workspace than scattering would (it is faster: no col2im pass,
      // and products with Cout k k terms rather than Cout).
      const index_t packing_weight = packing_floats<G>(cout, K, most);  // the weight gradient's product
      auto transposed_pays = [&] {
        if (!want_input_grad || !columns.in_place() || g.pad >= g.kernel ||
            !in_place_serves<T, G>(gt, dx_band_rows, false))
          return false;
        const index_t Kt = cout * g.kernel * g.kernel, most_t = (dx_band_rows - 1) * (g.out_width + 2 * gt.pad) + g.width;
        const index_t bytes = threads * padded_size(gt) * index_t(sizeof(G)) + Kt * 4 +
                              g.channels * Kt * index_t(sizeof(T)) + threads * g.channels * most_t * index_t(sizeof(G)) +
                              threads * std::max(packing_weight, packing_floats<G>(g.channels, most_t, Kt)) * 4;
        const index_t scattered = (reuse_columns ? 0 : threads * K * most * index_t(sizeof(G))) +
                                  threads * columns.gradient_size() * index_t(sizeof(G)) +
                                  threads * std::max(packing_weight, packing_floats<G>(K, most, cout)) * 4;
        return bytes <= scattered;
      };
      const bool transposed = transposed_pays();
      std::optional<Columns<G>> dy_columns;  // transposed: dY in its padded copy, per thread
      Tensor<T> flipped;                     // transposed: Wt
      Tensor<G> dx_out;                      // transposed: a band of dX over dY's padded width, per thread
      Tensor<G> dcols, dimage;
      if (transposed) {
        dy_columns.emplace(gt, true, threads, dx_band_rows);
        flipped = Tensor<T>(Shape{g.channels, cout * g.kernel * g.kernel}, MemoryCategory::workspace);
        dx_out = Tensor<G>(Shape{threads, g.channels, dy_columns->positions(dx_bands[0])}, MemoryCategory::workspace);
      } else if (want_input_grad) {
        if (!reuse_columns) dcols = Tensor<G>(Shape{threads, K, most}, MemoryCategory::workspace);
        dimage = Tensor<G>(Shape{threads, columns.gradient_size()}, MemoryCategory::workspace);
      }
      const index_t wn = weight_.value.numel();  // cout K, or the nonzeros of a sparse weight
      Tensor<G> dweight(Shape{threads, wn}, MemoryCategory::workspace);  // per-thread partial sums
      Tensor<G> dbias(Shape{threads, cout}, MemoryCategory::workspace);
      index_t packing_need = packing_weight;
      if (transposed) packing_need = std::max(packing_need, packing_floats<G>(g.channels, dx_out.dim(2), cout * g.kernel * g.kernel));
      else if (want_input_grad) packing_need = std::max(packing_need, packing_floats<G>(K, most, cout));
      Tensor<float> packing = packing_workspace(weight_, threads, packing_need);
      if (columns.is_dry() || x.is_dry()) return;
      if (transposed)
        for (index_t co = 0; co < cout; ++co)
          for (index_t ci = 0; ci < g.channels; ++ci)
            for (index_t i = 0; i < g.kernel; ++i)
              for (index_t j = 0; j < g.kernel; ++j)
                flipped[ci * cout * g.kernel * g.kernel + (co * g.kernel + g.kernel - 1 - i) * g.kernel + g.kernel - 1 - j] =
                    weight_.value[((co * g.channels + ci) * g.kernel + i) * g.kernel + j];
#pragma omp parallel for num_threads(threads) schedule(static)
      for (index_t s = 0; s < n; ++s) {
        const int t = omp_get_thread_num();
        G* my_dbias = dbias.data() + t * cout;
        G* my_dcols = nullptr;
        if constexpr (std::is_same_v<S, G>)
          if (reuse_columns) my_dcols = columns.buffer(t);
        if (!dcols.empty()) my_dcols = dcols.data() + t * K * most;
        G* my_dimage = dimage.empty() ? nullptr : dimage.data() + t * columns.gradient_size();
        T* my_spread = spread.empty() ? nullptr : spread.data() + t * cout * most;
        float* my_packing = packing_row(packing, t);
        // (my_dy is taken out here because clang 14 cannot capture dy and P into a lambda in an OpenMP loop in a
        // generic lambda.)
        const T* const my_dy = dy.data() + s * cout * P;
        // dY of this image and band, (cout, positions(b)); in place it is spread again for the input gradient
        // rather than kept for the whole image, so the buffer stays one band.
        auto output_gradient = [&](const Band& b) {
          const index_t positions = columns.positions(b);
          if (!my_spread) return MatrixView<T>{my_dy + b.first * g.out_width, cout, positions, P, 1};
          for (index_t c = 0; c < cout; ++c)
            for (index_t oy = b.first; oy < b.end; ++oy) {
              T* to = my_spread + c * positions + (oy - b.first) * columns.pitch();
              std::copy(my_dy + c * P + oy * g.out_width, my_dy + c * P + (oy + 1) * g.out_width, to);
              if (oy + 1 < b.end) std::fill(to + g.out_width, to + columns.pitch(), T(0));  // between rows: zero
            }
          return MatrixView<T>::row_major(my_spread, cout, positions);
        };
        const T* my_x = x.data() + s * image;
        columns.load(t, my_x);
        for (const Band& b : row_bands) {
          add_weight_gradient(weight_, output_gradient(b), columns.band(t, b, my_x), dweight.data() + t * wn,
                              my_packing);
        }
        // db += this image's sum of dY per channel (LaneSum's order, its accumulation rule).
        for (index_t c = 0; c < cout; ++c) {
          LaneSum<T> sum;
          widened(my_dy + c * P, P, [&](index_t, const wide_t<T>* v, index_t len) {
            sum.add(len, ctx.accumulate, [&](index_t p) { return v[p]; });
          });
          my_dbias[c] += round_to<G>(sum.total(ctx.accumulate));
        }
        if (transposed) {
          G* my_out = dx_out.data() + t * dx_out.dim(1) * dx_out.dim(2);
          const MatrixView<T> wt = MatrixView<T>::row_major(flipped.data(), g.channels, flipped.dim(1));
          dy_columns->load(t, my_dy);
          for (const Band& b : dx_bands) {
            const index_t positions = dy_columns->positions(b);
            dense_product<G>(wt, dy_columns->band(t, b, my_dy), my_out, positions, false, my_packing);
            for (index_t c = 0; c < g.channels; ++c)
              for (index_t y = b.first; y < b.end; ++y)
                store_rounded(my_out + c * positions + (y - b.first) * dy_columns->pitch(),
                              dx.data() + s * image + (c * g.height + y) * g.width, g.width, false);
          }
        } else if (want_input_grad) {
          std::fill(my_dimage, my_dimage + columns.gradient_size(), G(0));
          for (const Band& b : row_bands) {
            const index_t positions = columns.positions(b);
            weight_product(weight_, cout, K, true, output_gradient(b),
                           OutputView<G>::row_major(my_dcols, K, positions), false, my_packing);
            columns.add_gradient(my_dcols, b, my_dimage);
          }
          columns.store_gradient(my_dimage, dx.data() + s * image);
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
  });
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Conv2d)

}  // namespace lowmem
