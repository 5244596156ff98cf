#include "layers/conv2d.hpp"

#include <cmath>

#include "tensor/compute.hpp"

namespace lowmem {

namespace {

struct Geometry {
  index_t channels, height, width, kernel, stride, pad, out_height, out_width;
  index_t rows() const { return channels * kernel * kernel; }  // K of the column matrix
  index_t cols() const { return out_height * out_width; }      // P of the column matrix
};

Geometry geometry(const Conv2dSpec& s, index_t h, index_t w) {
  return {s.in_channels, h, w, s.kernel, s.stride, s.pad, (h + 2 * s.pad - s.kernel) / s.stride + 1,
          (w + 2 * s.pad - s.kernel) / s.stride + 1};
}

// cols (K, P): cols[(c k + i) k + j][oy Wo + ox] = x[c][oy s - pad + i][ox s - pad + j], zero outside.
template <class T, class G> void im2col(const T* x, const Geometry& g, G* cols) {
  for (index_t c = 0; c < g.channels; ++c)
    for (index_t i = 0; i < g.kernel; ++i)
      for (index_t j = 0; j < g.kernel; ++j) {
        G* row = cols + ((c * g.kernel + i) * g.kernel + j) * g.cols();
        for (index_t oy = 0; oy < g.out_height; ++oy) {
          const index_t y = oy * g.stride - g.pad + i;
          G* out = row + oy * g.out_width;
          if (y < 0 || y >= g.height) {
            std::fill(out, out + g.out_width, G(0));
            continue;
          }
          const T* in = x + (c * g.height + y) * g.width;
          for (index_t ox = 0; ox < g.out_width; ++ox) {
            const index_t xx = ox * g.stride - g.pad + j;
            out[ox] = (xx >= 0 && xx < g.width) ? round_to<G>(in[xx]) : G(0);
          }
        }
      }
}

// The adjoint of im2col: dx[c][y][x] += dcols at every position that read it.
template <class G> void col2im_add(const G* cols, const Geometry& g, G* dx) {
  for (index_t c = 0; c < g.channels; ++c)
    for (index_t i = 0; i < g.kernel; ++i)
      for (index_t j = 0; j < g.kernel; ++j) {
        const G* row = cols + ((c * g.kernel + i) * g.kernel + j) * g.cols();
        for (index_t oy = 0; oy < g.out_height; ++oy) {
          const index_t y = oy * g.stride - g.pad + i;
          if (y < 0 || y >= g.height) continue;
          G* out = dx + (c * g.height + y) * g.width;
          for (index_t ox = 0; ox < g.out_width; ++ox) {
            const index_t xx = ox * g.stride - g.pad + j;
            if (xx >= 0 && xx < g.width) out[xx] += row[oy * g.out_width + ox];
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
      bias_(spec.bias ? make_param<T>("bias", Shape{spec.out_channels}) : Param<T>{}) {}

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

template <class T> Tensor<T> Conv2d<T>::forward(const Tensor<T>& x, const RunContext& ctx) {
  const index_t n = x.dim(0);
  const Geometry g = geometry(spec_, x.dim(2), x.dim(3));
  const index_t cout = spec_.out_channels, K = g.rows(), P = g.cols();
  Tensor<T> y(Shape{n, cout, g.out_height, g.out_width}, MemoryCategory::workspace);
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const Tensor<G> w = in_compute_type<G>(weight_.value);
    Tensor<G> cols(Shape{K, P}, MemoryCategory::workspace);
    Tensor<G> out(Shape{cout, P}, MemoryCategory::workspace);
    const ConstMatrixMap<G> W(w.data(), cout, K);
    for (index_t s = 0; s < n; ++s) {
      im2col(x.data() + s * g.channels * g.height * g.width, g, cols.data());
      MatrixMap<G>(out.data(), cout, P).noalias() = W * ConstMatrixMap<G>(cols.data(), K, P);
      if (spec_.bias)
        for (index_t c = 0; c < cout; ++c) {
          const G b = round_to<G>(bias_.value[c]);
          for (index_t p = 0; p < P; ++p) out[c * P + p] += b;
        }
      store_rounded(out.data(), y.data() + s * cout * P, cout * P, false);
    }
  });
  if (ctx.training) input_.keep(x);
  return y;
}

template <class T> Tensor<T> Conv2d<T>::backward(const Tensor<T>& dy, const RunContext& ctx, bool want_input_grad) {
  const Tensor<T>& x = input_.get();
  const index_t n = x.dim(0);
  const Geometry g = geometry(spec_, x.dim(2), x.dim(3));
  const index_t cout = spec_.out_channels, K = g.rows(), P = g.cols(), image = g.channels * g.height * g.width;
  Tensor<T> dx;
  if (want_input_grad) dx = Tensor<T>(x.shape(), MemoryCategory::workspace);
  with_compute_type<T>(ctx.accumulate, [&]<class G>() {
    const Tensor<G> w = in_compute_type<G>(weight_.value);
    const ConstMatrixMap<G> W(w.data(), cout, K);
    Tensor<G> cols(Shape{K, P}, MemoryCategory::workspace);
    Tensor<G> dout(Shape{cout, P}, MemoryCategory::workspace);
    Tensor<G> dweight(weight_.value.shape(), MemoryCategory::workspace);
    Tensor<G> dbias(Shape{cout}, MemoryCategory::workspace);
    Tensor<G> dimage(Shape{image}, MemoryCategory::workspace);
    MatrixMap<G> dW(dweight.data(), cout, K);
    for (index_t s = 0; s < n; ++s) {
      for (index_t i = 0; i < cout * P; ++i) dout[i] = round_to<G>(dy[s * cout * P + i]);
      const ConstMatrixMap<G> dY(dout.data(), cout, P);
      im2col(x.data() + s * image, g, cols.data());
      dW.noalias() += dY * ConstMatrixMap<G>(cols.data(), K, P).transpose();
      for (index_t c = 0; c < cout; ++c)
        for (index_t p = 0; p < P; ++p) dbias[c] = round_to<G>(accumulate_round<T>(dbias[c] + dout[c * P + p], ctx.accumulate));
      if (want_input_grad) {
        MatrixMap<G>(cols.data(), K, P).noalias() = W.transpose() * dY;
        dimage.fill(G(0));
        col2im_add(cols.data(), g, dimage.data());
        store_rounded(dimage.data(), dx.data() + s * image, image, false);
      }
    }
    store_rounded(dweight.data(), weight_.grad.data(), dweight.numel(), true);
    if (spec_.bias) store_rounded(dbias.data(), bias_.grad.data(), cout, true);
  });
  input_.release();
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Conv2d)

}  // namespace lowmem
