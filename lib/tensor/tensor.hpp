#pragma once
// Tensor<T>: a shape and a reference-counted buffer charged to the memory ledger. Copies share the buffer (as
// in PyTorch): a layer that keeps its input for backward holds a reference, and the bytes are freed, and
// credited back to the ledger, when the last holder lets go. Layout is row-major: NCHW for images, (N, F) for
// features, PyTorch's layouts for weights.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "numerics/error.hpp"
#include "tensor/memory_ledger.hpp"

namespace lowmem {

using index_t = std::int64_t;

// No tensor holds more values than this (2^57): its bytes, for any scalar type lowmem has (at most 64 bytes
// each), then fit in 63 bits, and sums of a few such sizes cannot wrap around.
constexpr index_t max_numel = index_t{1} << 57;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<index_t> dims) : dims_(dims), numel_(product(dims_)) {}
  explicit Shape(std::vector<index_t> dims) : dims_(std::move(dims)), numel_(product(dims_)) {}
  std::size_t rank() const { return dims_.size(); }
  index_t operator[](std::size_t i) const { return dims_[i]; }
  // Cached: kernels call numel() in loop conditions, where a product over dims_ would be recomputed every time.
  index_t numel() const { return numel_; }
  const std::vector<index_t>& dims() const { return dims_; }
  bool operator==(const Shape& other) const { return dims_ == other.dims_; }
  std::string str() const;  // "[64, 32, 28, 28]"
  static std::string text(const std::vector<index_t>& dims);

 private:
  // Checked: throws SizeError past max_numel (or for a negative size), so bytes of any scalar type fit in 64 bits.
  static index_t product(const std::vector<index_t>& dims);
  std::vector<index_t> dims_;
  index_t numel_ = 1;
};

// How a new buffer's values start: zero, or not set at all (`none`: for a buffer its creator writes whole before
// anything reads it, such as a layer's output, where zero-filling first costs a pass over memory). With
// LOWMEM_POISON_UNSET=1 in the environment unset values start with every bit set (NaN for the floating types), so
// that a run which read one before writing it gives other numbers (tests/test_golden.py runs the sweep so).
enum class Init { zero, none };

template <class T> class Tensor {
 public:
  Tensor() = default;
  // Zero-filled (or, with Init::none, unset), charged to the active ledger (if any) under `category`.
  Tensor(Shape shape, MemoryCategory category, Init init = Init::zero);

  const Shape& shape() const { return shape_; }
  index_t numel() const { return shape_.numel(); }
  index_t dim(std::size_t i) const { return shape_[i]; }
  bool empty() const { return !storage_; }
  // A dry-run tensor (see MemoryLedger::set_dry_run): it has a shape and is counted, but holds no values.
  bool is_dry() const { return storage_ && !storage_->values; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](index_t i) { return data()[i]; }
  const T& operator[](index_t i) const { return data()[i]; }

  MemoryCategory category() const { return storage_->category; }
  // Re-labels the buffer (shared by every copy) in the ledger that was charged for it.
  void set_category(MemoryCategory c);
  // Same buffer seen with another shape of equal size (flatten).
  Tensor reshaped(Shape shape) const;
  // Rows [first, first + count) of the leading dimension, a view of this buffer (no copy, nothing charged). The
  // view counts as shared, so a layer that receives it copies before writing in place (`make_own`), and its bytes
  // stay under the category of the buffer it views (a view cannot relabel a buffer it only partly sees).
  Tensor rows(index_t first, index_t count) const;
  bool is_view() const { return view_; }
  // A new buffer with the same values.
  Tensor clone(MemoryCategory category) const;
  // In-place arithmetic: a layer that receives a tensor by value may overwrite it only if nothing else holds its
  // buffer (a caller that keeps its argument keeps a reference, and then gets a copy here, so a value someone
  // else sees never changes). Makes the buffer this tensor's own (a copy if shared) and labels it `category`.
  bool shared() const { return view_ || storage_.use_count() > 1; }
  Tensor& make_own(MemoryCategory category);
  // Where a layer that works element by element (each output value from input values at its own index, read
  // before it is written) puts its result: this buffer if nothing else holds it, relabelled `category` (the
  // result overwrites the input), else a new unset one of the same shape (the layer writes every value).
  Tensor overwritable(MemoryCategory category) const;
  void fill(const T& value);  // no-op on a dry-run tensor

 private:
  struct Storage {
    Storage(std::size_t n, MemoryCategory c, Init init);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;
    // Every buffer starts on a 64-byte boundary: Eigen's vectorised loops peel a different number of scalar
    // iterations at an unaligned start, so results would otherwise depend on where the allocator put a buffer,
    // and the same run would give other bits after other runs in the same process.
    struct Release {
      std::size_t n = 0;
      void operator()(T* p) const;
    };
    std::unique_ptr<T[], Release> values;
    std::size_t bytes;
    MemoryCategory category;
    MemoryLedger* ledger;
    std::uint64_t id = 0;  // the ledger's name for this buffer (memory timeline)
  };
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  T* data_ = nullptr;  // the first value this tensor sees in storage_ (a view starts inside it); null when dry
  bool view_ = false;  // sees part of storage_ (rows)
};

}  // namespace lowmem
