#pragma once
#include <vector>

#include "layers/layer.hpp"

namespace lowmem {

// Stacked LSTM over batch-first sequences: x (N, T, input_size) -> y (N, T, hidden), the last layer's h at every
// step; the maths, gate order and parameters of torch.nn.LSTM(input_size, hidden, num_layers=layers,
// batch_first=True). Per layer k (input width in_k: input_size, then hidden), with gates in the row order i, f, g, o:
//   [i f g o] = [sigmoid tanh sigmoid applied to the rows of] x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,
//   c_t = f c_{t-1} + i g,  h_t = o tanh(c_t),  h_{-1} = c_{-1} = 0,
// parameters weight_ih_l{k} (4H, in_k), weight_hh_l{k} (4H, H), bias_ih_l{k} (4H), bias_hh_l{k} (4H) (PyTorch's
// state_dict keys and order). Each layer runs as a chain of time steps (one cell step forward, one backward), whose
// every input is a stored value (gates, c and h rounded into T), so a step re-run from kept state gives the same
// bits: the unit a later checkpointing over time (Gruslys et al. 2016) needs.
// Backward keeps, per layer, its input sequence, the gate activations (N, T, 4H) and the cell states (N, T, H); h
// is recomputed from o and c where backward needs it (the last layer's h is the output, which is not kept).
template <class T> class Lstm : public Layer<T> {
 public:
  Lstm(std::string label, index_t input_size, index_t hidden, index_t layers);
  const char* kind() const override { return "lstm"; }
  Shape output_shape(const Shape& input) const override;
  void initialize(Rng& rng) override;
  Tensor<T> forward(Tensor<T> x, const RunContext& ctx) override;
  Tensor<T> backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) override;
  std::vector<Param<T>*> params() override;
  double forward_flops(const Shape& input) const override;

 private:
  struct LayerParams {
    Param<T> weight_ih, weight_hh, bias_ih, bias_hh;
  };
  index_t in_width(index_t k) const { return k == 0 ? input_size_ : hidden_; }
  index_t input_size_, hidden_;
  std::vector<LayerParams> layers_;
  std::vector<Saved<T>> inputs_, gates_, cells_;  // per layer: (N, T, in_k), (N, T, 4H), (N, T, H)
};

}  // namespace lowmem
