#pragma once
#include "layers/layer.hpp"

namespace lowmem {

// Mean softmax cross-entropy over the batch (PyTorch's default reduction):
//   loss = (1/N) sum_s [ log sum_k exp(z_sk - max_s) + max_s - z_s,label ],  logits z (N, K), labels in [0, K).
// Computed in the wide type (float for 16-bit storage). Backward: dz = (softmax(z) - onehot) / N; keeps the
// softmax probabilities (N, K) in the wide type.
template <class T> class SoftmaxCrossEntropy {
 public:
  using W = wide_t<T>;
  // batch: the number the sum is divided by (0: the rows of logits). A microbatch passes the whole batch's size,
  // so that its losses and gradients add up to the whole batch's.
  W forward(const Tensor<T>& logits, const std::vector<std::int32_t>& labels, const RunContext& ctx, index_t batch = 0);
  Tensor<T> backward(double scale = 1);  // dz times `scale` (loss scaling of mixed precision), rounded once
  // Number of rows whose largest logit is the label (first maximum on ties).
  static index_t correct(const Tensor<T>& logits, const std::vector<std::int32_t>& labels);

 private:
  Saved<W> probabilities_;
  std::vector<std::int32_t> labels_;
  index_t count_ = 0;
};

}  // namespace lowmem
