#pragma once
#include <vector>

#include "layers/layer.hpp"
#include "layers/step_chain.hpp"

namespace lowmem {

// Stacked LSTM over batch-first sequences: x (N, T, input_size) -> y (N, T, hidden), the last layer's h at every
// step; the maths, gate order and parameters of torch.nn.LSTM(input_size, hidden, num_layers=layers,
// batch_first=True). Per layer k (input width in_k: input_size, then hidden), with gates in the row order i, f, g, o:
//   [i f g o] = [sigmoid tanh sigmoid applied to the rows of] x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,
//   c_t = f c_{t-1} + i g,  h_t = o tanh(c_t),  h_{-1} = c_{-1} = 0,
// parameters weight_ih_l{k} (4H, in_k), weight_hh_l{k} (4H, H), bias_ih_l{k} (4H), bias_hh_l{k} (4H) (PyTorch's
// state_dict keys and order).
// Each layer's T time steps are a chain (layers/step_chain.hpp) whose state is [h_{t-1}, c_{t-1}] (N, 2H): step t
// reads x_t and the state and writes h_t to the output. A training forward runs the chain by the context's
// time_schedule (technique checkpoint over time: snapshots of the state, steps recomputed in backward), by default
// recording every step. The layer's input sequence is kept whole (every step's x_t is needed again in backward), and
// so is its output, which holds every h_{t-1} (and is the next layer's input, kept there anyway: one buffer); a
// step's record keeps c_{t-1} and its gate activations (N, 5H per step). A record keeps the whole state [h_{t-1},
// c_{t-1}] (N, 6H) instead under a save hook (approx_activations), which would store the output a second time, and
// in the last layer under a time schedule, whose output the next layer may not keep (the records are few there).
// Products and sums are the same whatever the schedule, so every schedule gives the gradients of stored activations
// bit for bit.
// truncate > 0: truncated backpropagation through time; no gradient flows from step t back to step t - 1 where t
// is a multiple of truncate (the state is carried forward as usual).
template <class T> class Lstm : public Layer<T> {
 public:
  Lstm(std::string label, index_t input_size, index_t hidden, index_t layers, index_t truncate = 0);
  const char* kind() const override { return "lstm"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  double forward_flops(const Shape& input) const override;
  std::int64_t recomputed_steps() const override;

 private:
  template <class G> class Steps;  // one layer's time steps as a StepChain (lstm.cpp)
  struct LayerParams {
    Param<T> weight_ih, weight_hh, bias_ih, bias_hh;
  };
  index_t in_width(index_t k) const { return k == 0 ? input_size_ : hidden_; }
  index_t input_size_, hidden_, truncate_;
  std::vector<LayerParams> layers_;
  std::vector<Saved<T>> inputs_, outputs_;                   // per layer: (N, T, in_k), (N, T, H) (see above)
  std::vector<std::vector<Saved<T>>> states_, gates_;        // per layer and step: (N, H) c or (N, 2H), (N, 4H)
  std::vector<char> h_from_output_;                          // per layer: its records take h_{t-1} from outputs_
  std::vector<CheckpointExecutor<T>> executors_;             // per layer: its steps' schedule, snapshots
};

}  // namespace lowmem
