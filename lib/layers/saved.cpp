#include "layers/saved.hpp"

#include "numerics/scalar.hpp"

namespace lowmem {

namespace {
template <class T> thread_local const SaveHook<T>* active = nullptr;
}  // namespace

template <class T> const SaveHook<T>* active_save_hook() { return active<T>; }
template <class T> SaveHookScope<T>::SaveHookScope(const SaveHook<T>* hook) : previous_(active<T>) { active<T> = hook; }
template <class T> SaveHookScope<T>::~SaveHookScope() { active<T> = previous_; }

#define LOWMEM_INSTANTIATE_SAVE_HOOK(T) template const SaveHook<T>* active_save_hook<T>();
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_SAVE_HOOK)
LOWMEM_INSTANTIATE_FOR_PRECISIONS(SaveHookScope)

}  // namespace lowmem
