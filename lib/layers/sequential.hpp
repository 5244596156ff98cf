#pragma once
#include <memory>

#include "layers/layer.hpp"

namespace lowmem {

// A chain of layers: x0 -> layer 0 -> x1 -> ... -> logits. Shapes are checked when a layer is added, so a model
// that does not fit fails before any work with the name of the offending layer.
template <class T> class Sequential {
 public:
  explicit Sequential(Shape input) : input_(input), output_(std::move(input)) {}

  void add(std::unique_ptr<Layer<T>> layer) {
    output_ = layer->output_shape(output_);
    layers_.push_back(std::move(layer));
  }
  const Shape& input_shape() const { return input_; }   // per sample
  const Shape& output_shape() const { return output_; } // per sample
  std::size_t size() const { return layers_.size(); }
  Layer<T>& layer(std::size_t i) { return *layers_[i]; }

  void initialize(std::uint64_t seed) {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      Rng rng(seed, /*stream=*/i);  // one stream per layer: adding a layer leaves the others' weights unchanged
      layers_[i]->initialize(rng);
    }
  }

  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) {
    for (auto& l : layers_) x = l->forward(x, ctx);
    return x;
  }
  // Returns dL/dx0 only if asked (the data needs no gradient; the layer checker does).
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad = false) {
    for (std::size_t i = layers_.size(); i-- > 0;) dy = layers_[i]->backward(dy, ctx, i > 0 || want_input_grad);
    return dy;
  }

  std::vector<Param<T>*> params() {
    std::vector<Param<T>*> all;
    for (auto& l : layers_)
      for (Param<T>* p : l->params()) all.push_back(p);
    return all;
  }
  void zero_grad() {
    for (Param<T>* p : params()) p->grad.fill(T(0));
  }
  index_t parameter_count() {
    index_t n = 0;
    for (Param<T>* p : params()) n += p->value.numel();
    return n;
  }

 private:
  Shape input_, output_;
  std::vector<std::unique_ptr<Layer<T>>> layers_;
};

}  // namespace lowmem
