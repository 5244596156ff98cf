#pragma once
// What a layer keeps between forward and backward: Saved<U>. Keeping re-labels the buffer as saved activations in
// the ledger; release() drops this holder's reference.
// A technique that changes how kept activations are stored (approx_activations keeps them in K bits) implements
// SaveHook<T> and makes it active for a lexical scope (SaveHookScope), as the memory ledger is: while a hook is
// active, an activation of the model's type (a floating-point tensor of rank >= 2; not per-channel statistics, not
// indices) is packed by the hook and unpacked when backward asks. Layers know only Saved<U>, never the technique.
#include <memory>
#include <stdexcept>
#include <type_traits>

#include "tensor/tensor.hpp"

namespace lowmem {

// A kept tensor in the form a hook chose; unpack() gives it back as a new tensor (charged as workspace).
template <class T> class PackedTensor {
 public:
  virtual ~PackedTensor() = default;
  virtual Tensor<T> unpack() const = 0;
};

template <class T> class SaveHook {
 public:
  virtual ~SaveHook() = default;
  // The stored form of the activation t.
  virtual std::shared_ptr<const PackedTensor<T>> pack(const Tensor<T>& t) const = 0;
  // A layer's output as the next layer of the chain sees it during a training forward (naive approximation: the
  // unpacked K-bit version). Default: the output itself.
  virtual Tensor<T> forward_output(Tensor<T> y) const { return y; }
};

// The hook active on this thread for type T, or nullptr.
template <class T> const SaveHook<T>* active_save_hook();
template <class T> class SaveHookScope {
 public:
  explicit SaveHookScope(const SaveHook<T>* hook);  // nullptr: none (keep exactly)
  ~SaveHookScope();
  SaveHookScope(const SaveHookScope&) = delete;
  SaveHookScope& operator=(const SaveHookScope&) = delete;

 private:
  const SaveHook<T>* previous_;
};

template <class U> class Saved {
 public:
  void keep(const Tensor<U>& t) {
    release();
    if constexpr (!std::is_integral_v<U>) {
      if (const SaveHook<U>* hook = active_save_hook<U>(); hook && t.shape().rank() >= 2) {
        packed_ = hook->pack(t);
        return;
      }
    }
    t_ = t;
    if (!t_.is_view()) t_.set_category(MemoryCategory::saved_activations);  // a view's bytes are its buffer's
  }
  const Tensor<U>& get() const {
    if constexpr (!std::is_integral_v<U>) {
      if (packed_) {
        if (t_.empty()) t_ = packed_->unpack();  // workspace, until released
        return t_;
      }
    }
    if (t_.empty()) throw std::logic_error("backward called without a training-mode forward");
    return t_;
  }
  // The kept tensor (unpacked if packed), and this holder lets go of it: backward's last use, after which the
  // caller may write over it if nothing else holds it (Tensor::overwritable).
  Tensor<U> take() {
    Tensor<U> t = get();
    release();
    return t;
  }
  void release() {
    t_ = Tensor<U>();
    packed_.reset();
  }
  bool held() const { return packed_ || !t_.empty(); }

 private:
  using Packed = std::conditional_t<std::is_integral_v<U>, PackedTensor<float>, PackedTensor<U>>;
  mutable Tensor<U> t_;                   // the kept tensor, or the unpacked one
  std::shared_ptr<const Packed> packed_;  // shared by copies, as a Tensor's buffer is
};

}  // namespace lowmem
