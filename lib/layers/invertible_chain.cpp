#include "layers/invertible_chain.hpp"

#include "numerics/error.hpp"

namespace lowmem {

template <class T>
InvertibleChain<T>::InvertibleChain(std::string label, Sequential<T> chain)
    : Layer<T>(std::move(label)), chain_(std::move(chain)) {
  for (std::size_t i = 0; i < chain_.size(); ++i) {
    if (chain_.invertible(i)) continue;
    Layer<T>& layer = chain_.layer(i);
    const auto* inv = dynamic_cast<const Invertible<T>*>(&layer);
    throw Error("layer " + layer.label() + ": cannot stand inside " + this->label() +
                ", which is declared invertible: " +
                (inv ? inv->why_not_invertible() : std::string(layer.kind()) + " has no inverse"));
  }
}

template <class T> Shape InvertibleChain<T>::output_shape(const Shape& in) const {
  if (in != chain_.input_shape())
    shape_error(this->label(), "was built for input " + chain_.input_shape().str() + ", got " + in.str());
  return chain_.output_shape();
}

template <class T> void InvertibleChain<T>::initialize(Rng& rng) {
  for (std::size_t i = 0; i < chain_.size(); ++i) chain_.layer(i).initialize(rng);
}

template <class T> std::vector<std::pair<std::string, Layer<T>*>> InvertibleChain<T>::children() {
  std::vector<std::pair<std::string, Layer<T>*>> c;
  for (std::size_t i = 0; i < chain_.size(); ++i) c.emplace_back(std::to_string(i), &chain_.layer(i));
  return c;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(InvertibleChain)

}  // namespace lowmem
