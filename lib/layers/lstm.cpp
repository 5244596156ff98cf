#include "layers/lstm.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "layers/weight_products.hpp"
#include "numerics/threads.hpp"

namespace lowmem {

namespace {

// h = o tanh(c), one rounding.
template <class T> T cell_output(const T& o, const T& c) {
  using W = wide_t<T>;
  return round_to<T>(W(round_to<W>(o) * tanh_of(round_to<W>(c))));
}

// One time step of one layer on (N, .) matrices. A step reads only stored values (in T: its state [h_{t-1},
// c_{t-1}], the gates), so re-running it from a kept state gives the same bits, and its backward recomputes c_t
// from the gates and c_{t-1} exactly as the forward formed it.
template <class T> struct Cell {
  using W = wide_t<T>;
  index_t n, hidden;
  const T *bias_ih, *bias_hh;  // (4H)

  // z (N, 4H): x_t W_ih^T + h_{t-1} W_hh^T in the compute type G; state (N, 2H) = [h_{t-1}, c_{t-1}]. Writes
  // [h_t, c_t] to next (N, 2H), the gate activations to gates (N, 4H; null: not kept) and h_t to row s of h (row
  // stride h_stride; null: not wanted). Each gate is rounded into T once; c and h are formed from the rounded gates.
  template <class G> void forward(const G* z, const T* state, T* gates, T* next, T* h, index_t h_stride) const {
    const index_t h4 = 4 * hidden;
#pragma omp parallel for schedule(static) if (worth_threads(n * h4))
    for (index_t s = 0; s < n; ++s) {
      const G* zs = z + s * h4;
      const T* prev = state + s * 2 * hidden;
      T* out = next + s * 2 * hidden;
      auto pre = [&](index_t r) { return W(round_to<W>(zs[r]) + round_to<W>(bias_ih[r]) + round_to<W>(bias_hh[r])); };
      for (index_t j = 0; j < hidden; ++j) {
        const T i = round_to<T>(sigmoid_of(pre(j))), f = round_to<T>(sigmoid_of(pre(hidden + j)));
        const T g = round_to<T>(tanh_of(pre(2 * hidden + j))), o = round_to<T>(sigmoid_of(pre(3 * hidden + j)));
        const T c = new_cell(i, f, g, prev[hidden + j]);
        out[hidden + j] = c;
        out[j] = cell_output(o, c);
        if (h) h[s * h_stride + j] = out[j];
        if (gates) {
          T* gs = gates + s * h4;
          gs[j] = i, gs[hidden + j] = f, gs[2 * hidden + j] = g, gs[3 * hidden + j] = o;
        }
      }
    }
  }
  static T new_cell(const T& i, const T& f, const T& g, const T& c_prev) {
    return round_to<T>(W(round_to<W>(f) * round_to<W>(c_prev) + round_to<W>(i) * round_to<W>(g)));
  }

  // Backward of one step, with dh_t = dy_t + dh (dh = dL/dh_t through step t + 1's products, 0 at the last step;
  // dy row s at dy + s dy_stride), c_{t-1} row s at c_prev + s c_stride, and dc = dL/dc_t in, dL/dc_{t-1} out
  // ((N, H) in W). Writes dz = dL/d(pre-activations) of the step, rounded into T (may be `gates`: each unit's values
  // are read before they are written).
  //   dc_t += dh_t o (1 - tanh^2 c_t);  dL/d[i f g o] = [dc_t g, dc_t c_{t-1}, dc_t i, dh_t tanh c_t];
  //   dz = those times sigmoid' = s (1 - s) (i, f, o), tanh' = 1 - g^2 (g);  dc_{t-1} = dc_t f.
  template <class G>
  void backward(const T* dy, index_t dy_stride, const G* dh, W* dc, const T* gates, const T* c_prev, index_t c_stride,
                T* dz) const {
    const index_t h4 = 4 * hidden;
#pragma omp parallel for schedule(static) if (worth_threads(n * h4))
    for (index_t s = 0; s < n; ++s) {
      const T* gs = gates + s * h4;
      const T* prev = c_prev + s * c_stride;
      T* ds = dz + s * h4;
      for (index_t j = 0; j < hidden; ++j) {
        const T c = new_cell(gs[j], gs[hidden + j], gs[2 * hidden + j], prev[j]);
        const W i = round_to<W>(gs[j]), f = round_to<W>(gs[hidden + j]), g = round_to<W>(gs[2 * hidden + j]),
                o = round_to<W>(gs[3 * hidden + j]);
        const W tanh_c = tanh_of(round_to<W>(c));
        const W c_last = round_to<W>(prev[j]);
        const W dh_t = W(round_to<W>(dy[s * dy_stride + j]) + round_to<W>(dh[s * hidden + j]));
        const W dc_t = W(dc[s * hidden + j] + dh_t * o * (W(1) - tanh_c * tanh_c));
        ds[j] = round_to<T>(W(dc_t * g * i * (W(1) - i)));
        ds[hidden + j] = round_to<T>(W(dc_t * c_last * f * (W(1) - f)));
        ds[2 * hidden + j] = round_to<T>(W(dc_t * i * (W(1) - g * g)));
        ds[3 * hidden + j] = round_to<T>(W(dh_t * tanh_c * o * (W(1) - o)));
        dc[s * hidden + j] = W(dc_t * f);
      }
    }
  }
};

template <class T> MatrixView<T> weight_view(const Param<T>& p) {
  return MatrixView<T>::row_major(p.value.data(), p.value.dim(0), p.value.dim(1));
}

}  // namespace

// Layer k's steps. Sequences are (N, T, width) row-major: step t of sample s at row s T + t, so step t of a
// sequence is an (N, width) matrix of row stride T width. Forward: z_t = x_t W_ih^T, z_t += h_{t-1} W_hh^T (t > 0),
// then the cell. Backward of step t (Cell::backward): dz_t; dh_{t-1} = dz_t W_hh; dW_hh += dz_t^T h_{t-1};
// dW_ih += dz_t^T x_t; the biases' gradient += the column sums of dz_t; dx_t = dz_t W_ih. Weight gradients are
// summed over the steps in G (the biases' in W) and rounded into the parameters once, after step 0.
template <class T>
template <class G>
class Lstm<T>::Steps : public StepChain<T> {
 public:
  using W = wide_t<T>;
  // x: the layer's input (N, T, in); h: where the forward writes its output (N, T, H), null in backward; kept_h:
  // that output as kept, where backward reads h_{t-1} (null where the records keep it).
  Steps(Lstm& lstm, std::size_t k, const Tensor<T>& x, T* h, const T* kept_h = nullptr)
      : lstm_(lstm), k_(k), p_(lstm.layers_[k]), x_(x), h_(h), kept_h_(kept_h), n_(x.dim(0)), steps_(x.dim(1)),
        in_(lstm.in_width(static_cast<index_t>(k))), hidden_(lstm.hidden_),
        cell_{n_, hidden_, p_.bias_ih.value.data(), p_.bias_hh.value.data()},
        z_(Shape{n_, 4 * hidden_}, MemoryCategory::workspace, Init::none) {
    // One workspace for the step's products (m, n, k): as many rows as the widest split, as long as the longest.
    const index_t h4 = 4 * hidden_;
    index_t rows = 1, floats = 0;
    for (const auto [m, n, k] : {std::array<index_t, 3>{n_, h4, in_}, {n_, h4, hidden_}, {n_, hidden_, h4},
                                 {h4, hidden_, n_}, {h4, in_, n_}, {n_, in_, h4}}) {
      rows = std::max(rows, product_parts(m, n, k, omp_get_max_threads()));
      floats = std::max(floats, packing_floats<G>(m, n, k));
    }
    packing_ = packing_workspace(p_.weight_ih, rows, floats);
  }

  std::size_t steps() const override { return static_cast<std::size_t>(steps_); }
  const std::string& step_name(std::size_t) const override { return lstm_.label(); }

  Tensor<T> step_forward(std::size_t i, Tensor<T> state, const RunContext& ctx) override {
    const auto t = static_cast<index_t>(i);
    const index_t h4 = 4 * hidden_;
    const bool keep = ctx.keeps(), dry = state.is_dry();
    Tensor<T> next(Shape{n_, 2 * hidden_}, MemoryCategory::workspace, Init::none);  // written whole
    Tensor<T> gates;
    if (keep) gates = Tensor<T>(Shape{n_, h4}, MemoryCategory::workspace, Init::none);
    if (!dry) {
      dense_product<G>(at_step(x_.data(), t, in_), weight_view(p_.weight_ih).t(), z_.data(), h4, false, pack());
      if (t > 0)
        dense_product<G>(previous_h(state), weight_view(p_.weight_hh).t(), z_.data(), h4, true, pack());
      cell_.forward(z_.data(), state.data(), keep ? gates.data() : nullptr, next.data(),
                    h_ ? h_ + t * hidden_ : nullptr, steps_ * hidden_);
    }
    if (keep) {
      if (lstm_.h_from_output_[k_]) {  // c_{t-1} only
        Tensor<T> c(Shape{n_, hidden_}, MemoryCategory::workspace, Init::none);  // written whole
        for (index_t s = 0; s < (dry ? 0 : n_); ++s)
          std::copy_n(state.data() + s * 2 * hidden_ + hidden_, hidden_, c.data() + s * hidden_);
        lstm_.states_[k_][i].keep(c);
      } else {
        lstm_.states_[k_][i].keep(state);
      }
      lstm_.gates_[k_][i].keep(gates);
    }
    return next;
  }

  // The gradient of the state flows in this object (dh in G, dc in W, as a plain loop keeps them), not through
  // the executor: dy is empty.
  Tensor<T> step_backward(std::size_t i, Tensor<T>, const RunContext& ctx, bool) override {
    const auto t = static_cast<index_t>(i);
    const index_t h4 = 4 * hidden_;
    const Tensor<T> state = lstm_.states_[k_][i].take();
    const Tensor<T> gates = lstm_.gates_[k_][i].take();
    Tensor<T> dz = gates.overwritable(MemoryCategory::workspace);  // over the gates where nothing else holds them
    if (dy_->is_dry() || state.is_dry()) return {};
    const bool whole = kept_h_ == nullptr;  // the record holds [h_{t-1}, c_{t-1}], else c_{t-1}
    cell_.backward(dy_->data() + t * hidden_, steps_ * hidden_, dh_.data(), dc_.data(), gates.data(),
                   state.data() + (whole ? hidden_ : 0), whole ? 2 * hidden_ : hidden_, dz.data());
    const auto dz_t = MatrixView<T>::row_major(dz.data(), n_, h4);
    if (t > 0) {
      const MatrixView<T> h_prev = whole ? previous_h(state) : at_step(kept_h_, t - 1, hidden_);
      if (lstm_.truncate_ > 0 && t % lstm_.truncate_ == 0) {  // truncated: nothing flows back to step t - 1
        dh_.fill(G(0));
        dc_.fill(W(0));
      } else {
        dense_product<G>(dz_t, weight_view(p_.weight_hh), dh_.data(), hidden_, false, pack());
      }
      dense_product<G>(dz_t.t(), h_prev, dweight_hh_.data(), hidden_, true, pack());
    }
    dense_product<G>(dz_t.t(), at_step(x_.data(), t, in_), dweight_ih_.data(), in_, true, pack());
#pragma omp parallel for schedule(static) if (worth_threads(n_ * h4))
    for (index_t r = 0; r < h4; ++r) {
      LaneSum<T> sum;
      sum.add(n_, ctx.accumulate, [&](index_t s) { return round_to<W>(dz_t(s, r)); });
      dbias_[r] = accumulate_round<T>(W(dbias_[r] + sum.total(ctx.accumulate)), ctx.accumulate);
    }
    if (!dx_.empty())
      dense_product<G>(dz_t, weight_view(p_.weight_ih), dx_.data() + t * in_, steps_ * in_, false, pack());
    return {};
  }

  // Backward's buffers: the state's gradient, the weight gradients' sums, and dx (N, T, in) if asked.
  void begin_backward(const Tensor<T>& dy, bool want_input_grad, Tensor<T>& dx) {
    dy_ = &dy;
    dh_ = Tensor<G>(Shape{n_, hidden_}, MemoryCategory::workspace);  // 0: nothing flows in after the last step
    dc_ = Tensor<W>(Shape{n_, hidden_}, MemoryCategory::workspace);
    dweight_hh_ = Tensor<G>(p_.weight_hh.value.shape(), MemoryCategory::workspace);
    dweight_ih_ = Tensor<G>(p_.weight_ih.value.shape(), MemoryCategory::workspace);
    dbias_ = Tensor<W>(Shape{4 * hidden_}, MemoryCategory::workspace);
    if (want_input_grad) {
      dx = Tensor<T>(x_.shape(), MemoryCategory::workspace, Init::none);  // written whole
      dx_ = result_buffer<G>(dx);
    }
  }
  // After step 0: the sums rounded into the parameters' gradients, dx into T.
  void finish_backward(Tensor<T>& dx) {
    if (dy_->is_dry() || x_.is_dry()) return;
    store_rounded(dweight_hh_.data(), p_.weight_hh.grad.data(), dweight_hh_.numel(), true);
    store_rounded(dweight_ih_.data(), p_.weight_ih.grad.data(), dweight_ih_.numel(), true);
    for (index_t r = 0; r < 4 * hidden_; ++r)
      for (Param<T>* b : {&p_.bias_ih, &p_.bias_hh}) b->grad[r] = round_to<T>(W(round_to<W>(b->grad[r]) + dbias_[r]));
    if (!dx_.empty()) round_into(dx_, dx);
  }

 private:
  // Step t of a sequence of `width` values per step: an (N, width) matrix.
  MatrixView<T> at_step(const T* sequence, index_t t, index_t width) const {
    return {sequence + t * width, n_, width, steps_ * width, 1};
  }
  MatrixView<T> previous_h(const Tensor<T>& state) const { return {state.data(), n_, hidden_, 2 * hidden_, 1}; }
  Packing pack() { return all_rows(packing_); }

  Lstm& lstm_;
  std::size_t k_;
  LayerParams& p_;
  const Tensor<T>& x_;
  T* h_;
  const T* kept_h_;
  index_t n_, steps_, in_, hidden_;
  Cell<T> cell_;
  Tensor<G> z_;
  Tensor<float> packing_;
  const Tensor<T>* dy_ = nullptr;
  Tensor<G> dh_, dweight_hh_, dweight_ih_, dx_;
  Tensor<W> dc_, dbias_;
};

template <class T>
Lstm<T>::Lstm(std::string label, index_t input_size, index_t hidden, index_t layers, index_t truncate)
    : Layer<T>(std::move(label)), input_size_(input_size), hidden_(hidden), truncate_(truncate) {
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
  outputs_.resize(layers_.size());
  h_from_output_.assign(layers_.size(), 0);
  states_.resize(layers_.size());
  gates_.resize(layers_.size());
  executors_.resize(layers_.size());
}

template <class T> Shape Lstm<T>::output_shape(const Shape& in) const {
  expect_sequence(this->label(), in, input_size_);
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

// Layer by layer, x (N, T, in_k) -> h (N, T, H), h the next layer's input. A training forward runs the steps by the
// time schedule (stored activations by default); any other keeps nothing and holds one state at a time.
template <class T> Tensor<T> Lstm<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), steps = x.dim(1);
  for (std::size_t k = 0; k < layers_.size(); ++k) {
    Tensor<T> h(Shape{n, steps, hidden_}, MemoryCategory::workspace, Init::none);  // written whole
    with_compute_type<T>(ctx.accumulate, [&]<class G>() {
      Steps<G> chain(*this, k, x, h.data());
      Tensor<T> state(Shape{n, 2 * hidden_}, MemoryCategory::workspace);  // h_{-1} = c_{-1} = 0
      if (!ctx.keeps()) {
        for (index_t t = 0; t < steps; ++t) state = chain.step_forward(static_cast<std::size_t>(t), std::move(state), ctx);
        return;
      }
      inputs_[k].keep(x);
      // The last layer's output is kept by the next layer only if that layer keeps its input: under a time schedule
      // (few records, each 1H smaller) keeping it whole could cost more than it saves, so there the records keep h.
      const bool last = k + 1 == layers_.size();
      h_from_output_[k] = active_save_hook<T>() == nullptr && !(last && ctx.time_schedule);
      outputs_[k].release();
      states_[k].assign(static_cast<std::size_t>(steps), Saved<T>());
      gates_[k].assign(static_cast<std::size_t>(steps), Saved<T>());
      const auto length = static_cast<std::size_t>(steps);
      executors_[k] = CheckpointExecutor<T>(ctx.time_schedule ? ctx.time_schedule->schedule(length)
                                                              : store_all_schedule(length));
      executors_[k].forward(chain, state, ctx);
      if (h_from_output_[k]) outputs_[k].keep(h);
    });
    x = std::move(h);  // the last use of this layer's input here (backward holds it if kept)
  }
  return x;
}

// Backpropagation through time, layer by layer from the last, with dy = dL/dh (N, T, H) of the layer (the output
// gradient, then the input gradient of the layer above): the executor reverses the steps, last first, recomputing
// any the schedule did not record.
template <class T> Tensor<T> Lstm<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  for (std::size_t k = layers_.size(); k-- > 0;) {
    const Tensor<T> x = inputs_[k].take();
    const Tensor<T> h = h_from_output_[k] ? outputs_[k].take() : Tensor<T>();  // none: the records hold h_{t-1}
    Tensor<T> dx;
    with_compute_type<T>(ctx.accumulate, [&]<class G>() {
      Steps<G> chain(*this, k, x, nullptr, h.empty() ? nullptr : h.data());
      chain.begin_backward(dy, k > 0 || want_input_grad, dx);
      executors_[k].backward(chain, Tensor<T>(), ctx);
      chain.finish_backward(dx);
    });
    dy = std::move(dx);
  }
  return dy;
}

template <class T> std::int64_t Lstm<T>::recomputed_steps() const {
  std::int64_t n = 0;
  for (const CheckpointExecutor<T>& e : executors_) n += e.recomputed();
  return n;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Lstm)

}  // namespace lowmem
