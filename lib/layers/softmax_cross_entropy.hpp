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
  W forward(const Tensor<T>& logits, const std::vector<std::int32_t>& labels, const RunContext& ctx);
  Tensor<T> backward();
  // Number of rows whose largest logit is the label (first maximum on ties).
  static index_t correct(const Tensor<T>& logits, const std::vector<std::int32_t>& labels);

 private:
  Saved<W> probabilities_;
  std::vector<std::int32_t> labels_;
};

}  // namespace lowmem
