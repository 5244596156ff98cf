#pragma once
#include <functional>
#include <memory>
#include <string>

#include "layers/layer.hpp"
#include "layers/step_chain.hpp"

namespace lowmem {

// A chain of layers: x0 -> layer 0 -> x1 -> ... -> logits. Shapes are checked when a layer is added, so a model
// that does not fit fails before any work with the name of the offending layer.
// Backprop by reconstruction (RunContext::reconstruct): each maximal run of invertible layers keeps nothing but
// its last output; backward rebuilds every input of the run from it, layer by layer, with backward_from_output.
// Saved-activation memory then no longer grows with the number of invertible layers.
// As a StepChain its steps are its layers (technique checkpoint over layers).
template <class T> class Sequential : public StepChain<T> {
 public:
  explicit Sequential(Shape input) : input_(input), output_(std::move(input)) {}

  void add(std::unique_ptr<Layer<T>> layer) {
    output_ = layer->output_shape(output_);
    invertible_.push_back(as_invertible(*layer));
    layers_.push_back(std::move(layer));
    run_outputs_.emplace_back();
    segment_inputs_.emplace_back();
  }
  const Shape& input_shape() const { return input_; }   // per sample
  const Shape& output_shape() const { return output_; } // per sample
  std::size_t size() const { return layers_.size(); }
  Layer<T>& layer(std::size_t i) { return *layers_[i]; }
  const Layer<T>& layer(std::size_t i) const { return *layers_[i]; }

  std::size_t steps() const override { return size(); }
  const std::string& step_name(std::size_t i) const override { return layers_[i]->label(); }
  Tensor<T> step_forward(std::size_t i, Tensor<T> x, const RunContext& ctx) override {
    return layers_[i]->forward(std::move(x), ctx);
  }
  Tensor<T> step_backward(std::size_t i, Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override {
    return layers_[i]->backward(std::move(dy), ctx, want_input_grad);
  }

  void initialize(std::uint64_t seed) {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      Rng rng(seed, /*stream=*/i);  // one stream per layer: adding a layer leaves the others' weights unchanged
      layers_[i]->initialize(rng);
    }
  }

  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) {
    reconstructing_ = ctx.reconstruct && ctx.keeps();
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const MemoryOwner owner(layers_[i]->label());  // the memory timeline's owner of what this layer allocates
      if (reconstructing_ && ctx.recompute_between_runs && !invertible_[i]) {
        if (starts_segment(i)) {
          const SaveHookScope<T> exact(nullptr);  // recomputation starts from the exact input
          segment_inputs_[i].keep(x);
        }
        RunContext recomputed_later = ctx;
        recomputed_later.keep = RunContext::Keep::nothing;
        x = layers_[i]->forward(std::move(x), recomputed_later);
        continue;
      }
      if (!reconstructing_ || !invertible_[i]) {
        x = layers_[i]->forward(std::move(x), ctx);
        if (const SaveHook<T>* hook = active_save_hook<T>(); hook && ctx.keeps() && i + 1 < layers_.size())
          x = hook->forward_output(std::move(x));  // e.g. naive approximation: the next layer sees the K-bit x
        continue;
      }
      RunContext rebuilt_later = ctx;
      rebuilt_later.keep = RunContext::Keep::for_inverse;
      x = layers_[i]->forward(std::move(x), rebuilt_later);
      if (ends_run(i)) {
        const SaveHookScope<T> exact(nullptr);  // the run is rebuilt from this exact output
        run_outputs_[i].keep(x);
      }
    }
    return x;
  }
  // Returns dL/dx0 only if asked (the data needs no gradient; the layer checker does).
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad = false) {
    Tensor<T> output;  // of layer i, rebuilt by layer i + 1 (inside a run of invertible layers)
    recomputed_ = 0;
    for (std::size_t i = layers_.size(); i-- > 0;) {
      const MemoryOwner owner(layers_[i]->label());
      const bool want = i > 0 || want_input_grad;
      if (reconstructing_ && ctx.recompute_between_runs && !invertible_[i] && ends_segment(i)) {
        std::size_t first = i;
        while (!starts_segment(first)) --first;
        recompute(first, i, ctx);
      }
      if (!reconstructing_ || !invertible_[i]) {
        dy = layers_[i]->backward(std::move(dy), ctx, want);
        segment_inputs_[i].release();
        continue;
      }
      if (ends_run(i)) {
        output = run_outputs_[i].get();
        run_outputs_[i].release();
      }
      Reconstructed<T> r = invertible_[i]->backward_from_output(std::move(output), std::move(dy), ctx, want);
      output = (i > 0 && invertible_[i - 1]) ? std::move(r.input) : Tensor<T>();
      dy = std::move(r.input_grad);
    }
    return dy;
  }

  // The layer as an invertible one if it is invertible() (see Invertible), else nullptr.
  Invertible<T>* invertible(std::size_t i) { return invertible_[i]; }
  // For a chain of invertible layers only: the inverse, and backprop by reconstruction, layer by layer from the end.
  Tensor<T> inverse(Tensor<T> y) {
    for (std::size_t i = layers_.size(); i-- > 0;) y = invertible_[i]->inverse(y);
    return y;
  }
  Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
    for (std::size_t i = layers_.size(); i-- > 0;) {
      Reconstructed<T> r =
          invertible_[i]->backward_from_output(std::move(y), std::move(dy), ctx, i > 0 || want_input_grad);
      y = std::move(r.input);
      dy = std::move(r.input_grad);
    }
    return {y, dy};
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
  double forward_flops(Shape in) const {
    double flops = 0;
    for (const auto& l : layers_) {
      flops += l->forward_flops(in);
      in = l->output_shape(in);
    }
    return flops;
  }
  // Layer evaluations the last backward recomputed (RunContext::recompute_between_runs).
  std::int64_t recomputed() const { return recomputed_; }
  index_t parameter_count() {
    index_t n = 0;
    for (Param<T>* p : params()) n += p->value.numel();
    return n;
  }

 private:
  bool ends_run(std::size_t i) const { return invertible_[i] && (i + 1 == layers_.size() || !invertible_[i + 1]); }
  // Runs of non-invertible layers ("segments"), for RunContext::recompute_between_runs.
  bool starts_segment(std::size_t i) const { return !invertible_[i] && (i == 0 || invertible_[i - 1]); }
  bool ends_segment(std::size_t i) const { return !invertible_[i] && (i + 1 == layers_.size() || invertible_[i + 1]); }
  // Layers first..last again from the segment's kept input, keeping what their backward needs; running statistics
  // were updated by the forward pass and are left alone.
  void recompute(std::size_t first, std::size_t last, const RunContext& ctx) {
    RunContext record = ctx;
    record.keep = RunContext::Keep::all;
    record.update_statistics = false;
    const MemoryPhaseScope phase(MemoryPhase::recompute);
    Tensor<T> x = segment_inputs_[first].get();
    for (std::size_t j = first; j <= last; ++j) {
      const MemoryOwner owner(layers_[j]->label());
      x = layers_[j]->forward(std::move(x), record);
      ++recomputed_;
    }
  }
  Shape input_, output_;
  std::vector<std::unique_ptr<Layer<T>>> layers_;
  std::vector<Invertible<T>*> invertible_;  // per layer: itself if invertible, else nullptr
  std::vector<Saved<T>> run_outputs_;       // reconstruct: the last output of each run of invertible layers
  std::vector<Saved<T>> segment_inputs_;    // recompute_between_runs: the input of each run of the others
  std::int64_t recomputed_ = 0;
  bool reconstructing_ = false;             // the last forward was a reconstructing one
};

// The layers of `model` that hold tensors, as f(name, layer) with names "<root>/<i>[/<child>...]" in model order:
// composite layers (residual blocks, couplings) by their children. The results file's names; after "<root>/",
// with '.' for '/', PyTorch's.
template <class T, class F> void for_each_leaf(Sequential<T>& model, const std::string& root, F&& f) {
  std::function<void(const std::string&, Layer<T>&)> visit = [&](const std::string& name, Layer<T>& layer) {
    auto children = layer.children();
    for (auto& [child, sub] : children) visit(name + "/" + child, *sub);
    if (children.empty()) f(name, layer);
  };
  for (std::size_t i = 0; i < model.size(); ++i) visit(root + "/" + std::to_string(i), model.layer(i));
}

}  // namespace lowmem
