#pragma once
// The contract every layer obeys (the generic checker in tests/ tests exactly this):
//   output_shape(in)       checks a per-sample input shape and returns the output's: an image (C,H,W), features (F),
//                          a sequence (T,F) of T positions (tensors (N,T,F)), or token ids (T); throws
//                          lowmem::Error naming the layer if the shape does not fit.
//   initialize(rng)        draws initial parameters in double and rounds them once into T, so every precision
//                          starts from the same values.
//   forward(x, ctx)        x is (N, ...); returns (N, ...). In training mode keeps what backward needs.
//   backward(dy, ctx, dx?) adds (+=) parameter gradients, returns dL/dx if asked, releases what forward kept.
//   x and dy come by value: a caller that moves them in hands their buffers over, and a layer may then write its
//   result over them (Tensor::overwritable, make_own) where nothing else holds them: in place, with no effect on
//   the numbers. Callers pass one layer per statement (a by-value argument lives to the end of its full expression).
//   params()               trainable parameters with their gradients.
//   buffers()              state that is not trained but kept across steps (batch norm's running statistics),
//                          named as PyTorch names it.
// Invertible layers (below) add inverse(y) and backward_from_output(y, dy): backprop by reconstruction.
// In a dry run (tensors without values, see MemoryLedger::set_dry_run) forward and backward allocate and keep
// exactly what they do in a real step and skip the arithmetic: that is how memory is predicted.
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "numerics/random.hpp"
#include "numerics/scalar.hpp"
#include "layers/saved.hpp"
#include "tensor/csr.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

struct TimeSchedule;  // layers/step_chain.hpp

struct RunContext {
  bool training = true;
  Accumulate accumulate = Accumulate::f32;
  bool update_statistics = true;  // false when a forward is recomputed (batch norm's running statistics)
  // What a training forward keeps for backward: everything; only what an inverse cannot do without (invertible
  // batch norm's statistics), because backward will rebuild the activations by inversion; or nothing, because
  // the forward will be recomputed (F and G of a coupling block).
  enum class Keep { all, for_inverse, nothing };
  Keep keep = Keep::all;
  // Backprop by reconstruction (technique "reversible"): a chain keeps only the last output of each run of
  // invertible layers and rebuilds the inputs from it, layer by layer, in backward (Sequential).
  bool reconstruct = false;
  // With reconstruct (technique checkpoint composed with reversible): each run of non-invertible layers keeps only
  // its input in the forward pass and is recomputed from it in backward.
  bool recompute_between_runs = false;
  // A convolution's workspace holds the column matrix of a band of whole output rows of at most this many positions
  // (one row if a row is wider): smaller bands hold less and run slower, and sum a weight gradient in other order.
  index_t conv_band_columns = 256;
  // Technique checkpoint over time: the schedule of a recurrent layer's time steps; null: every step keeps what
  // its backward needs.
  std::shared_ptr<const TimeSchedule> time_schedule = nullptr;
  // Where random layers (dropout) draw: the training step, and the index in the whole batch of this slice's first
  // sample (technique microbatch), so a recomputed forward, a backward and a microbatched step draw alike.
  std::int64_t step = 0;
  index_t first_sample = 0;
  bool keeps() const { return training && keep == Keep::all; }
  bool keeps_for_inverse() const { return training && keep != Keep::nothing; }
};

template <class T> struct Param {
  std::string name;  // "weight", "bias" (batch norm: gamma is "weight", beta is "bias", as in PyTorch)
  Tensor<T> value;   // MemoryCategory::weights
  Tensor<T> grad;    // MemoryCategory::gradients
  // Technique sparsity: set on the weights of layers that compute with a CSR matrix (conv, linear). Once a
  // pattern is set, value and grad hold only its nonzeros, in CSR order.
  bool may_be_sparse = false;
  std::shared_ptr<const SparsePattern> pattern;
  Shape dense_shape;  // with a pattern: the weight's shape before it was made sparse (PyTorch's)
};

template <class T> class Layer {
 public:
  // label: where the layer came from, used in every message about it, e.g. "/model/layers/3 (conv)".
  explicit Layer(std::string label) : label_(std::move(label)) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const std::string& label() const { return label_; }
  virtual const char* kind() const = 0;  // "conv", "batchnorm", ... as in the config
  virtual Shape output_shape(const Shape& input) const = 0;
  // A composite layer (children() below) initialises its children in order; a leaf with parameters overrides it.
  virtual void initialize(Rng& rng) {
    for (auto& [name, child] : children()) child->initialize(rng);
  }
  virtual Tensor<T> forward(Tensor<T> x, const RunContext& ctx) = 0;
  virtual Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) = 0;
  // Default: the children's, in order (none for a leaf without parameters).
  virtual std::vector<Param<T>*> params() {
    std::vector<Param<T>*> all;
    for (auto& [name, child] : children())
      for (Param<T>* p : child->params()) all.push_back(p);
    return all;
  }
  virtual std::vector<std::pair<std::string, Tensor<T>*>> buffers() { return {}; }
  // Arithmetic of one forward evaluation per sample (multiply-adds count 2), for schedules that weigh layers by
  // cost (checkpoint "budget"). Default: one operation per output value.
  virtual double forward_flops(const Shape& input) const { return static_cast<double>(output_shape(input).numel()); }
  // A recurrent layer run by a schedule over time (RunContext::time_schedule): time-step evaluations of the last
  // training step beyond one per step.
  virtual std::int64_t recomputed_steps() const { return 0; }
  // Sub-layers of a composite layer (residual block), for reports that walk the whole network.
  virtual std::vector<std::pair<std::string, Layer<T>*>> children() { return {}; }

 private:
  std::string label_;
};

// Backprop by reconstruction returns the rebuilt input x and dL/dx (empty if not asked).
template <class T> struct Reconstructed {
  Tensor<T> input, input_grad;
};

// A layer whose input can be rebuilt from its output (reversible networks, Hascoet et al.): inverse(forward(x))
// is x up to rounding. Batch norm inverts with the statistics of its last forward pass.
template <class T> class Invertible {
 public:
  virtual ~Invertible() = default;
  // false where the class has an inverse that is not guaranteed (ReLU, ordinary batch norm whose gamma may be 0):
  // such a layer is never reconstructed and cannot stand where an invertible layer is required.
  virtual bool invertible() const { return true; }
  // Why invertible() is false, for error messages.
  virtual std::string why_not_invertible() const { return ""; }
  virtual Tensor<T> inverse(const Tensor<T>& y) = 0;
  // The backward pass of a layer whose forward kept only Keep::for_inverse: rebuilds the input from the output y
  // (kept, or itself rebuilt by the next layer) in the run's own precision and computes every gradient from the
  // rebuilt values, as backward does from kept ones: adds parameter gradients, returns {x, dL/dx if asked}.
  virtual Reconstructed<T> backward_from_output(Tensor<T> y, Tensor<T> dy, const RunContext& ctx,
                                                bool want_input_grad) = 0;
};

// The layer types that are invertible, for messages that ask for one.
inline constexpr const char* invertible_layer_types =
    "inv_batchnorm, leaky_relu with slope > 0, pixel_shuffle, coupling, affine_coupling, inv_conv, invertible";

// The layer as an invertible one if it is invertible(), else nullptr.
template <class T> Invertible<T>* as_invertible(Layer<T>& layer) {
  auto* inv = dynamic_cast<Invertible<T>*>(&layer);
  return inv && inv->invertible() ? inv : nullptr;
}

// A parameter tensor and its zeroed gradient, both charged to the ledger.
template <class T> Param<T> make_param(std::string name, Shape shape) {
  Param<T> p;
  p.name = std::move(name);
  p.value = Tensor<T>(shape, MemoryCategory::weights);
  p.grad = Tensor<T>(shape, MemoryCategory::gradients);
  return p;
}

// Shape checks shared by layers: throws Error("layer <name>: ...").
[[noreturn]] void shape_error(const std::string& layer, const std::string& what);
void expect_rank(const std::string& layer, const Shape& s, std::size_t rank);
// A sequence model layer's input: (T, features), T positions of `features` values each.
void expect_sequence(const std::string& layer, const Shape& s, index_t features);
// A normalisation layer's input: (C, H, W) or (C), with C = channels.
void expect_channels(const std::string& layer, const Shape& s, index_t channels);

}  // namespace lowmem
