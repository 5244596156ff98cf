#include "techniques/technique.hpp"

#include <stdexcept>

#include "tensor/csr.hpp"

namespace lowmem {

template <class T> std::vector<double> ParameterUpdate<T>::magnitudes(std::size_t) const {
  throw std::logic_error("this parameter update keeps no magnitudes for pruning");
}
template <class T> void ParameterUpdate<T>::remap(std::size_t, const std::vector<index_t>&) {
  throw std::logic_error("this parameter update cannot follow a new sparsity pattern");
}

template <class T> std::vector<double> PlainUpdate<T>::magnitudes(std::size_t k) const {
  return lowmem::magnitudes(params_[k]->value);
}

template <class T> void PlainUpdate<T>::remap(std::size_t k, const std::vector<index_t>& sources) {
  for (Tensor<T>* state : optimizer_->state(k)) remap_entries(*state, sources);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(ParameterUpdate)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(PlainUpdate)

}  // namespace lowmem
