#include "tensor/tensor.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "numerics/scalar.hpp"

namespace lowmem {

index_t Shape::product(const std::vector<index_t>& dims) {
  index_t n = 1;
  for (index_t d : dims) {
    if (d < 0) throw SizeError("a tensor of shape " + Shape::text(dims) + " has a negative size");
    if (d != 0 && n > max_numel / d)
      throw SizeError("a tensor of shape " + Shape::text(dims) + " would hold more than 2^57 values");
    n *= d;
  }
  return n;
}

std::string Shape::text(const std::vector<index_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string Shape::str() const { return text(dims_); }

namespace {
bool poison_unset() {
  static const bool on = [] {
    const char* v = std::getenv("LOWMEM_POISON_UNSET");
    return v && std::string(v) == "1";
  }();
  return on;
}
}  // namespace

template <class T>
Tensor<T>::Storage::Storage(std::size_t n, MemoryCategory c, Init init)
    : bytes(n * sizeof(T)), category(c), ledger(MemoryLedger::active()) {
  if (!ledger || !ledger->dry_run()) {
    T* p = static_cast<T*>(::operator new(std::max<std::size_t>(n, 1) * sizeof(T), std::align_val_t{64}));
    if (init == Init::zero) std::uninitialized_value_construct_n(p, n);
    else {
      std::uninitialized_default_construct_n(p, n);
      if constexpr (std::is_trivially_copyable_v<T>)
        if (poison_unset()) std::memset(static_cast<void*>(p), 0xFF, n * sizeof(T));
    }
    values = std::unique_ptr<T[], Release>(p, Release{n});
  }
  if (ledger) id = ledger->allocate(category, bytes);
}

template <class T> void Tensor<T>::Storage::Release::operator()(T* p) const {
  std::destroy_n(p, n);
  ::operator delete(p, std::align_val_t{64});
}

template <class T> Tensor<T>::Storage::~Storage() {
  if (ledger) ledger->release(category, bytes, id);
}

template <class T>
Tensor<T>::Tensor(Shape shape, MemoryCategory category, Init init)
    : storage_(std::make_shared<Storage>(static_cast<std::size_t>(shape.numel()), category, init)),
      shape_(std::move(shape)),
      data_(storage_->values.get()) {}

template <class T> void Tensor<T>::set_category(MemoryCategory c) {
  if (view_) throw std::logic_error("a view of " + shape_.str() + " cannot relabel the buffer it sees part of");
  if (storage_->ledger) storage_->ledger->move(storage_->category, c, storage_->bytes, storage_->id);
  storage_->category = c;
}

template <class T> Tensor<T> Tensor<T>::reshaped(Shape shape) const {
  if (shape.numel() != numel()) throw std::logic_error("reshape " + shape_.str() + " -> " + shape.str() + ": sizes differ");
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

template <class T> Tensor<T> Tensor<T>::rows(index_t first, index_t count) const {
  if (shape_.rank() == 0 || first < 0 || count < 0 || first + count > shape_[0])
    throw std::logic_error("rows " + std::to_string(first) + " + " + std::to_string(count) + " of " + shape_.str());
  std::vector<index_t> dims = shape_.dims();
  const index_t row = dims[0] ? numel() / dims[0] : 0;
  dims[0] = count;
  Tensor t = *this;
  t.shape_ = Shape(std::move(dims));
  t.view_ = true;
  if (!is_dry()) t.data_ = data_ + first * row;
  return t;
}

template <class T> Tensor<T> Tensor<T>::clone(MemoryCategory category) const {
  Tensor t(shape_, category, Init::none);
  if (!is_dry() && !t.is_dry()) std::copy(data(), data() + numel(), t.data());
  return t;
}

template <class T> Tensor<T>& Tensor<T>::make_own(MemoryCategory category) {
  if (shared()) *this = clone(category);
  else if (this->category() != category) set_category(category);
  return *this;
}

template <class T> Tensor<T> Tensor<T>::overwritable(MemoryCategory category) const {
  if (shared()) return Tensor(shape_, category, Init::none);
  Tensor t = *this;
  if (t.category() != category) t.set_category(category);
  return t;
}

template <class T> void Tensor<T>::fill(const T& value) {
  if (!is_dry()) std::fill(data(), data() + numel(), value);
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Tensor)
template class Tensor<std::int32_t>;  // max-pool argmax indices
template class Tensor<std::uint8_t>;  // packed codes and masks (approximate activations)

}  // namespace lowmem
