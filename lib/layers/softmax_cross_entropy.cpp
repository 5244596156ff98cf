#include "layers/softmax_cross_entropy.hpp"

namespace lowmem {

template <class T>
typename SoftmaxCrossEntropy<T>::W SoftmaxCrossEntropy<T>::forward(const Tensor<T>& logits,
                                                                   const std::vector<std::int32_t>& labels,
                                                                   const RunContext& ctx, index_t batch) {
  const index_t n = logits.dim(0), k = logits.dim(1);
  const index_t count = batch > 0 ? batch : n;
  Tensor<W> probabilities(logits.shape(), MemoryCategory::workspace);
  W total(0);
  for (index_t s = 0; s < (logits.is_dry() ? 0 : n); ++s) {
    const T* z = logits.data() + s * k;
    W* p = probabilities.data() + s * k;
    W top = round_to<W>(z[0]);
    for (index_t j = 1; j < k; ++j) top = round_to<W>(z[j]) > top ? round_to<W>(z[j]) : top;
    W sum(0);
    for (index_t j = 0; j < k; ++j) {
      p[j] = exp_of(W(round_to<W>(z[j]) - top));
      sum = accumulate_round<T>(sum + p[j], ctx.accumulate);
    }
    for (index_t j = 0; j < k; ++j) p[j] = p[j] / sum;
    total = total + (log_of(sum) + top - round_to<W>(z[labels[s]]));
  }
  if (ctx.training) {
    probabilities_.keep(probabilities);
    labels_ = labels;
    count_ = count;
  }
  return total / round_to<W>(static_cast<double>(count));
}

template <class T> Tensor<T> SoftmaxCrossEntropy<T>::backward(double scale) {
  const Tensor<W>& p = probabilities_.get();
  const index_t n = p.dim(0), k = p.dim(1);
  const W count = round_to<W>(static_cast<double>(count_) / scale);
  Tensor<T> dz(p.shape(), MemoryCategory::workspace);
  for (index_t s = 0; s < (p.is_dry() ? 0 : n); ++s)
    for (index_t j = 0; j < k; ++j)
      dz[s * k + j] = round_to<T>(W((p[s * k + j] - (j == labels_[s] ? W(1) : W(0))) / count));
  probabilities_.release();
  return dz;
}

template <class T> index_t SoftmaxCrossEntropy<T>::correct(const Tensor<T>& logits, const std::vector<std::int32_t>& labels) {
  const index_t n = logits.dim(0), k = logits.dim(1);
  index_t hits = 0;
  for (index_t s = 0; s < (logits.is_dry() ? 0 : n); ++s) {
    index_t best = 0;
    for (index_t j = 1; j < k; ++j)
      if (logits[s * k + j] > logits[s * k + best]) best = j;
    hits += best == labels[s];
  }
  return hits;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(SoftmaxCrossEntropy)

}  // namespace lowmem
