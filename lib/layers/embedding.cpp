#include "layers/embedding.hpp"

#include <cmath>

#include "numerics/threads.hpp"
#include "tensor/compute.hpp"

namespace lowmem {

template <class T>
Embedding<T>::Embedding(std::string label, index_t vocab, index_t width)
    : Layer<T>(std::move(label)), vocab_(vocab), width_(width), weight_(make_param<T>("weight", Shape{vocab, width})) {}

template <class T> Shape Embedding<T>::output_shape(const Shape& in) const {
  if (in.rank() != 1) shape_error(this->label(), "expects token ids (T) per sample, got " + in.str());
  return Shape{in[0], width_};
}

template <class T> void Embedding<T>::initialize(Rng& rng) {
  for (index_t i = 0; i < weight_.value.numel(); ++i) weight_.value[i] = round_to<T>(rng.normal());
}

// x: (N, T) token ids as values of T; y: (N, T, width).
template <class T> Tensor<T> Embedding<T>::forward(Tensor<T> x, const RunContext& ctx) {
  const index_t n = x.dim(0), len = x.dim(1), positions = n * len;
  Tensor<std::int32_t> ids(Shape{positions}, MemoryCategory::workspace, Init::none);
  Tensor<T> y(Shape{n, len, width_}, MemoryCategory::workspace, Init::none);  // written whole
  if (!x.is_dry()) {
    for (index_t p = 0; p < positions; ++p) {
      const double id = to_double(x[p]);
      if (!(id >= 0 && id < static_cast<double>(vocab_) && id == std::floor(id)))
        throw Error("layer " + this->label() + ": token id " + std::to_string(id) + " is not in the vocabulary of " +
                    std::to_string(vocab_));
      ids[p] = static_cast<std::int32_t>(id);
    }
#pragma omp parallel for schedule(static) if (worth_threads(positions * width_))
    for (index_t p = 0; p < positions; ++p)
      std::copy_n(weight_.value.data() + ids[p] * width_, width_, y.data() + p * width_);
  }
  if (ctx.keeps()) ids_.keep(ids);
  return y;
}

// dweight[id] += dy at each position holding id, in position order (each thread owns a band of features, so the
// order of the sums does not depend on the thread count). The sums run in the compute rule's type.
template <class T> Tensor<T> Embedding<T>::backward(Tensor<T> dy, const RunContext& ctx, bool) {
  const Tensor<std::int32_t> ids = ids_.take();
  const index_t positions = ids.numel();
  using W = wide_t<T>;
  Tensor<W> sums(weight_.value.shape(), MemoryCategory::workspace);  // per (token, feature)
  if (!dy.is_dry()) {
#pragma omp parallel for schedule(static) if (worth_threads(positions * width_))
    for (index_t f = 0; f < width_; ++f) {
      for (index_t p = 0; p < positions; ++p) {
        W& s = sums[ids[p] * width_ + f];
        s = accumulate_round<T>(W(s + round_to<W>(dy[p * width_ + f])), ctx.accumulate);
      }
      for (index_t t = 0; t < vocab_; ++t) {
        T& g = weight_.grad[t * width_ + f];
        g = round_to<T>(W(round_to<W>(g) + sums[t * width_ + f]));
      }
    }
  }
  return Tensor<T>();  // token ids have no gradient
}

template <class T>
PositionalEmbedding<T>::PositionalEmbedding(std::string label, index_t positions, index_t width)
    : Layer<T>(std::move(label)),
      positions_(positions),
      width_(width),
      weight_(make_param<T>("weight", Shape{positions, width})) {}

template <class T> Shape PositionalEmbedding<T>::output_shape(const Shape& in) const {
  if (in.rank() != 2 || in[1] != width_ || in[0] > positions_)
    shape_error(this->label(), "expects a sequence (T, " + std::to_string(width_) + ") with T <= " +
                                   std::to_string(positions_) + ", got " + in.str());
  return in;
}

template <class T> void PositionalEmbedding<T>::initialize(Rng& rng) {
  for (index_t i = 0; i < weight_.value.numel(); ++i) weight_.value[i] = round_to<T>(rng.normal());
}

// x: (N, T, width); y = x + weight[t], over x where nothing else holds it.
template <class T> Tensor<T> PositionalEmbedding<T>::forward(Tensor<T> x, const RunContext&) {
  const index_t n = x.dim(0), row = x.numel() / n;  // T width values per sample
  using W = wide_t<T>;
  Tensor<T> y = x.overwritable(MemoryCategory::workspace);
  if (!x.is_dry()) {
#pragma omp parallel for schedule(static) if (worth_threads(x.numel()))
    for (index_t s = 0; s < n; ++s)
      for (index_t i = 0; i < row; ++i)
        y[s * row + i] = round_to<T>(W(round_to<W>(x[s * row + i]) + round_to<W>(weight_.value[i])));
  }
  return y;
}

template <class T> Tensor<T> PositionalEmbedding<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  const index_t n = dy.dim(0), row = dy.numel() / n;
  using W = wide_t<T>;
  if (!dy.is_dry()) {
#pragma omp parallel for schedule(static) if (worth_threads(dy.numel()))
    for (index_t i = 0; i < row; ++i) {
      W s(0);
      for (index_t k = 0; k < n; ++k) s = accumulate_round<T>(W(s + round_to<W>(dy[k * row + i])), ctx.accumulate);
      weight_.grad[i] = round_to<T>(W(round_to<W>(weight_.grad[i]) + s));
    }
  }
  return want_input_grad ? dy : Tensor<T>();  // dx = dy: the same buffer
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Embedding)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(PositionalEmbedding)

}  // namespace lowmem
