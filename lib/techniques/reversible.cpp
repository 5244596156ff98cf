#include "techniques/reversible.hpp"

namespace lowmem {

void Reversible::check_model(const ModelFacts& model) const {
  if (!model.any_invertible)
    throw Error("/technique: \"reversible\" rebuilds invertible layers, and model (" + model.arch + ") has none " +
                "(invertible: " + invertible_layer_types + ")");
}

namespace {
template <class T> class ReversibleHooks : public TechniqueHooks<T> {
 public:
  void configure(RunContext& train) override { train.reconstruct = true; }
};
}  // namespace

template <class T> std::unique_ptr<TechniqueHooks<T>> Reversible::hooks_for(const TechniqueServices<T>&) const {
  return std::make_unique<ReversibleHooks<T>>();
}

LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(Reversible)

}  // namespace lowmem
