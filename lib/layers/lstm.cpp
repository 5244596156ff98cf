#include "layers/lstm.hpp"

#include <algorithm>
#include <cmath>

#include "layers/weight_products.hpp"
#include "numerics/threads.hpp"

namespace lowmem {

namespace {

template <class W> W sigmoid_of(const W& z) { return W(1) / W(W(1) + exp_of(W(-z))); }

// tanh in every wide type; dd has none of its own: (1 - e) / (1 + e) with e = exp(-2 |z|) <= 1, which cannot
// overflow (its absolute error is exp's, a few u^2).
template <class W> W tanh_of(const W& z) {
  if constexpr (std::is_same_v<W, mp>) {
    return boost::multiprecision::tanh(z);
  } else if constexpr (std::is_same_v<W, dd>) {
    const W e = exp_of(W(W(-2) * abs(z)));
    const W t = (W(1) - e) / (W(1) + e);
    return z < W(0) ? W(-t) : t;
  } else {
    return std::tanh(z);
  }
}

// h = o tanh(c) from the stored o and c: forward and backward's recomputation of h give the same bits.
template <class T> T cell_output(const T& o, const T& c) {
  using W = wide_t<T>;
  return round_to<T>(W(round_to<W>(o) * tanh_of(round_to<W>(c))));
}

// One layer's time steps. Its sequences are (N, T, width) row-major: sample s, step t at row s T + t. A step reads
// and writes the rows of steps t and t - 1 only, and reads nothing but stored values (in T: x_t and h_{t-1}
// through their products, c_{t-1}, the gates), so a chain over time can re-run any step from kept state and get the
// same bits.
template <class T> struct Cell {
  using W = wide_t<T>;
  index_t n, steps, hidden;
  const T *bias_ih, *bias_hh;  // (4H)

  index_t row(index_t s, index_t t) const { return s * steps + t; }
  // Step t of a sequence of `width` values per step: an (N, width) matrix.
  template <class U> MatrixView<U> at_step(const U* sequence, index_t t, index_t width) const {
    return {sequence + t * width, n, width, steps * width, 1};
  }

  // Forward of step t. z: the products x_t W_ih^T + h_{t-1} W_hh^T of this step (N, T, 4H), in the compute type G.
  // Gate activations go to `gates` (null: not kept; may be z itself when G = T: each unit's four values are read
  // before they are written), c_t to c ((N, T, H), or with `one_slot` (N, 1, H), c_{t-1} overwritten by c_t), h_t to
  // h (N, T, H). Each gate is rounded into T once, and c and h are formed from the rounded gates.
  template <class G> void forward(index_t t, const G* z, T* gates, T* c, bool one_slot, T* h) const {
    const index_t h4 = 4 * hidden;
#pragma omp parallel for schedule(static) if (worth_threads(n * h4))
    for (index_t s = 0; s < n; ++s) {
      const index_t at = row(s, t);
      const index_t now = (one_slot ? s : at) * hidden, before = (one_slot ? s : at - 1) * hidden;
      const G* zs = z + at * h4;
      auto pre = [&](index_t r) { return W(round_to<W>(zs[r]) + round_to<W>(bias_ih[r]) + round_to<W>(bias_hh[r])); };
      for (index_t j = 0; j < hidden; ++j) {
        const T i = round_to<T>(sigmoid_of(pre(j))), f = round_to<T>(sigmoid_of(pre(hidden + j)));
        const T g = round_to<T>(tanh_of(pre(2 * hidden + j))), o = round_to<T>(sigmoid_of(pre(3 * hidden + j)));
        const W c_prev = t > 0 ? round_to<W>(c[before + j]) : W(0);
        c[now + j] = round_to<T>(W(round_to<W>(f) * c_prev + round_to<W>(i) * round_to<W>(g)));
        h[at * hidden + j] = cell_output(o, c[now + j]);
        if (gates) {
          T* gs = gates + at * h4;
          gs[j] = i, gs[hidden + j] = f, gs[2 * hidden + j] = g, gs[3 * hidden + j] = o;
        }
      }
    }
  }

  // Backward of step t, with dh_t = dy_t + dh (dh = dL/dh_t through step t + 1's products, 0 at the last step) and
  // dc = dL/dc_t from step t + 1 in, dL/dc_{t-1} out ((N, H) in W). Writes dz_t = dL/d(pre-activations) of step t,
  // rounded into T, to dz (may be `gates`: each unit's values are read before they are written), and for t > 0
  // h_{t-1} (recomputed from o_{t-1} and c_{t-1}) to h_prev (N, H), for the product with W_hh.
  //   dc_t += dh_t o (1 - tanh^2 c_t);  dL/d[i f g o] = [dc_t g, dc_t c_{t-1}, dc_t i, dh_t tanh c_t];
  //   dz = those times sigmoid' = s (1 - s) (i, f, o), tanh' = 1 - g^2 (g);  dc_{t-1} = dc_t f.
  template <class G>
  void backward(index_t t, const T* dy, const G* dh, W* dc, const T* gates, const T* c, T* dz, T* h_prev) const {
    const index_t h4 = 4 * hidden;
#pragma omp parallel for schedule(static) if (worth_threads(n * h4))
    for (index_t s = 0; s < n; ++s) {
      const index_t at = row(s, t);
      const T* gs = gates + at * h4;
      T* ds = dz + at * h4;
      for (index_t j = 0; j < hidden; ++j) {
        const W i = round_to<W>(gs[j]), f = round_to<W>(gs[hidden + j]), g = round_to<W>(gs[2 * hidden + j]),
                o = round_to<W>(gs[3 * hidden + j]);
        const W tanh_c = tanh_of(round_to<W>(c[at * hidden + j]));
        const W c_prev = t > 0 ? round_to<W>(c[(at - 1) * hidden + j]) : W(0);
        const W dh_t = W(round_to<W>(dy[at * hidden + j]) + round_to<W>(dh[s * hidden + j]));
        const W dc_t = W(dc[s * hidden + j] + dh_t * o * (W(1) - tanh_c * tanh_c));
        ds[j] = round_to<T>(W(dc_t * g * i * (W(1) - i)));
        ds[hidden + j] = round_to<T>(W(dc_t * c_prev * f * (W(1) - f)));
        ds[2 * hidden + j] = round_to<T>(W(dc_t * i * (W(1) - g * g)));
        ds[3 * hidden + j] = round_to<T>(W(dh_t * tanh_c * o * (W(1) - o)));
        dc[s * hidden + j] = W(dc_t * f);
        if (t > 0) h_prev[s * hidden + j] = cell_output(gates[(at - 1) * h4 + 3 * hidden + j], c[(at - 1) * hidden + j]);
      }
    }
  }
};

template <class T> MatrixView<T> weight_view(const Param<T>& p) {
  return MatrixView<T>::row_major(p.value.data(), p.value.dim(0), p.value.dim(1));
}

}  // namespace

template <class T>
Lstm<T>::Lstm(std::string label, index_t input_size, index_t hidden, index_t layers)
    : Layer<T>(std::move(label)), input_size_(input_size), hidden_(hidden) {
  if (input_size < 1 || hidden < 1 || layers < 1)
    shape_error(this->label(), "input size, hidden size and layers must be at least 1, got " +
                                   std::to_string(input_size) + ", " + std::to_string(hidden) + ", " +
                                   std::to_string(layers));
  for (index_t k = 0; k < layers; ++k) {
    const std::string l = "_l" + std::to_string(k);
    layers_.push_back({make_param<T>("weight_ih" + l, Shape{4 * hidden, in_width(k)}),
                       make_param<T>("weight_hh" + l, Shape{4 * hidden, hidden}),
                       make_param<T>("bias_ih" + l, Shape{4 * hidden}), make_param<T>("bias_hh" + l, Shape{4 * hidden})});
  }
  inputs_.resize(layers_.size());
  gates_.resize(layers_.size());
  cells_.resize(layers_.size());
}

template <class T> Shape Lstm<T>::output_shape(const Shape& in) const {
  if (in.rank() != 2) shape_error(this->label(), "expects a (time, features) sequence, got " + in.str());
  if (in[1] != input_size_)
    shape_error(this->label(), "expects " + std::to_string(input_size_) + " input features, got " + in.str());
  return Shape{in[0], hidden_};
}

template <class T> std::vector<Param<T>*> Lstm<T>::params() {
  std::vector<Param<T>*> all;
  for (LayerParams& p : layers_) all.insert(all.end(), {&p.weight_ih, &p.weight_hh, &p.bias_ih, &p.bias_hh});
  return all;
}

// PyTorch's default: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), drawn in params() order.
template <class T> void Lstm<T>::initialize(Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden_));
  for (Param<T>* p : params())
    for (index_t i = 0; i < p->value.numel(); ++i) p->value[i] = round_to<T>(rng.uniform(-bound, bound));
}

// Per sample: each layer's input products at every step, and its recurrent products at steps 1 .. T-1 (h_{-1} = 0).
template <class T> double Lstm<T>::forward_flops(const Shape& input) const {
  const double steps = static_cast<double>(output_shape(input)[0]), h4 = 4.0 * static_cast<double>(hidden_);
  double multiply_adds = 0;
  for (index_t k = 0; k < static_cast<index_t>(layers_.size()); ++k)
    multiply_adds += steps * h4 * static_cast<double>(in_width(k)) +
                     std::max(steps - 1, 0.0) * h4 * static_cast<double>(hidden_);
  return 2 * multiply_adds;
}

// Layer by layer, x (N, T, in_k) -> h (N, T, H), h the next layer's input. Products in the compute type G: the
// input products of all steps at once, Z = X W_ih^T ((N T) x 4H), then step by step Z_t += h_{t-1} W_hh^T and the
// cell. When G = T the gates are formed over Z in place; otherwise Z is a G buffer and the gates a T one, made
// only to be kept.
template <class T> Tensor<T> Lstm<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), steps = x.dim(1), h4 = 4 * hidden_;
  const bool keeps = ctx.keeps();
  for (std::size_t k = 0; k < layers_.size(); ++k) {
    const LayerParams& p = layers_[k];
    const index_t in = in_width(static_cast<index_t>(k));
    const Cell<T> cell{n, steps, hidden_, p.bias_ih.value.data(), p.bias_hh.value.data()};
    const bool dry = x.is_dry();
    Tensor<T> h(Shape{n, steps, hidden_}, MemoryCategory::workspace, Init::none);  // written whole
    with_compute_type<T>(ctx.accumulate, [&]<class G>() {
      Tensor<G> z(Shape{n, steps, h4}, MemoryCategory::workspace, Init::none);  // written whole by the product
      Tensor<T> gates;
      if constexpr (std::is_same_v<G, T>) gates = z;
      else if (keeps) gates = Tensor<T>(z.shape(), MemoryCategory::workspace, Init::none);
      Tensor<T> c(Shape{n, keeps ? steps : 1, hidden_}, MemoryCategory::workspace, Init::none);
      Tensor<float> packing = packing_workspace(
          p.weight_ih, 1, std::max(packing_floats<G>(n * steps, h4, in), packing_floats<G>(n, h4, hidden_)));
      float* pack = packing_row(packing, 0);
      if (!dry)
        dense_product<G>(MatrixView<T>::row_major(x.data(), n * steps, in), weight_view(p.weight_ih).t(), z.data(),
                         h4, false, pack);
      if (keeps) inputs_[k].keep(x);
      x = Tensor<T>();  // this layer's input: its last use
      for (index_t t = 0; t < (dry ? 0 : steps); ++t) {
        if (t > 0)
          dense_product<G>(cell.at_step(h.data(), t - 1, hidden_), weight_view(p.weight_hh).t(), z.data() + t * h4,
                           steps * h4, true, pack);
        cell.forward(t, z.data(), gates.empty() ? nullptr : gates.data(), c.data(), !keeps, h.data());
      }
      if (keeps) {
        gates_[k].keep(gates);
        cells_[k].keep(c);
      }
    });
    x = std::move(h);
  }
  return x;
}

// Backpropagation through time, layer by layer from the last, with dy = dL/dh (N, T, H) of the layer (the output
// gradient, then the input gradient of the layer above). Step by step from the last (Cell::backward): dZ_t, then
// dh_{t-1} = dZ_t W_hh and dW_hh += dZ_t^T h_{t-1}. Then over all steps at once: dW_ih += dZ^T X, db_ih = db_hh +=
// the column sums of dZ, dX = dZ W_ih. dZ is written over the kept gates.
template <class T> Tensor<T> Lstm<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  using W = wide_t<T>;
  const index_t h4 = 4 * hidden_;
  for (std::size_t k = layers_.size(); k-- > 0;) {
    LayerParams& p = layers_[k];
    const index_t in = in_width(static_cast<index_t>(k));
    Tensor<T> x = inputs_[k].take();
    Tensor<T> c = cells_[k].take();
    Tensor<T> gates = gates_[k].take();
    Tensor<T> dz = gates.overwritable(MemoryCategory::workspace);  // dZ over the gates where nothing else holds them
    const index_t n = x.dim(0), steps = x.dim(1);
    const Shape x_shape = x.shape();
    const Cell<T> cell{n, steps, hidden_, p.bias_ih.value.data(), p.bias_hh.value.data()};
    const bool dry = x.is_dry() || dy.is_dry();
    const auto dZ = MatrixView<T>::row_major(dz.data(), n * steps, h4);
    Tensor<T> dx;
    with_compute_type<T>(ctx.accumulate, [&]<class G>() {
      {  // the steps, from the last
        Tensor<W> dc(Shape{n, hidden_}, MemoryCategory::workspace);  // 0: nothing flows in after the last step
        Tensor<G> dh(Shape{n, hidden_}, MemoryCategory::workspace);
        Tensor<T> h_prev(Shape{n, hidden_}, MemoryCategory::workspace, Init::none);
        Tensor<G> dweight_hh(p.weight_hh.value.shape(), MemoryCategory::workspace);
        Tensor<float> packing = packing_workspace(
            p.weight_hh, 1, std::max(packing_floats<G>(n, hidden_, h4), packing_floats<G>(h4, hidden_, n)));
        float* pack = packing_row(packing, 0);
        for (index_t t = steps - 1; t >= 0 && !dry; --t) {
          cell.backward(t, dy.data(), dh.data(), dc.data(), gates.data(), c.data(), dz.data(), h_prev.data());
          if (t == 0) break;
          const MatrixView<T> dz_t = cell.at_step(dz.data(), t, h4);
          dense_product<G>(dz_t, weight_view(p.weight_hh), dh.data(), hidden_, false, pack);
          dense_product<G>(dz_t.t(), MatrixView<T>::row_major(h_prev.data(), n, hidden_), dweight_hh.data(), hidden_,
                           true, pack);
        }
        if (!dry) store_rounded(dweight_hh.data(), p.weight_hh.grad.data(), dweight_hh.numel(), true);
      }
      dy = Tensor<T>();
      c = Tensor<T>();
      gates = Tensor<T>();
      // Bias gradients: per gate row, the N T values of its column in row order (each thread owns its rows).
#pragma omp parallel for schedule(static) if (worth_threads(n * steps * h4))
      for (index_t r = 0; r < (dry ? 0 : h4); ++r) {
        LaneSum<T> sum;
        sum.add(n * steps, ctx.accumulate, [&](index_t m) { return round_to<W>(dZ(m, r)); });
        const W total = sum.total(ctx.accumulate);
        for (Param<T>* b : {&p.bias_ih, &p.bias_hh}) b->grad[r] = round_to<T>(W(round_to<W>(b->grad[r]) + total));
      }
      {  // dW_ih: the last use of the kept input, released before dx
        Tensor<G> dweight_ih(p.weight_ih.value.shape(), MemoryCategory::workspace);
        Tensor<float> packing = packing_workspace(p.weight_ih, 1, packing_floats<G>(h4, in, n * steps));
        if (!dry) {
          dense_product<G>(dZ.t(), MatrixView<T>::row_major(x.data(), n * steps, in), dweight_ih.data(), in, true,
                           packing_row(packing, 0));
          store_rounded(dweight_ih.data(), p.weight_ih.grad.data(), dweight_ih.numel(), true);
        }
      }
      x = Tensor<T>();
      if (k > 0 || want_input_grad) {
        dx = Tensor<T>(x_shape, MemoryCategory::workspace, Init::none);  // written whole
        Tensor<G> dxg = result_buffer<G>(dx);
        Tensor<float> packing = packing_workspace(p.weight_ih, 1, packing_floats<G>(n * steps, in, h4));
        if (!dry) {
          dense_product<G>(dZ, weight_view(p.weight_ih), dxg.data(), in, false, packing_row(packing, 0));
          round_into(dxg, dx);
        }
      }
    });
    dy = std::move(dx);
  }
  return dy;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Lstm)

}  // namespace lowmem
