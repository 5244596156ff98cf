#pragma once
// The state of a run in flight as named blocks of bytes: what it saves every train.checkpoint_every steps and
// loads to continue bit for bit (weights, optimizer and loss-scaler state, technique counters, the data position
// and random streams). One walk serves both directions: each owner of state calls tensor() / value() on its
// pieces, which copy them into the archive when saving and back out of it when loading, so what is saved and
// what is loaded cannot drift apart.
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "numerics/error.hpp"
#include "numerics/scalar.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

class StateArchive {
 public:
  enum class Mode { save, load };
  explicit StateArchive(Mode mode) : mode_(mode) {}
  bool loading() const { return mode_ == Mode::load; }

  // The blocks, by name ("model/3/conv1/weight"); filled by saving, given before loading.
  std::map<std::string, std::vector<unsigned char>> blocks;

  // Saves n bytes from `data` as block `name`, or loads them back; loading, the block must exist with n bytes
  // (a state from another config or binary is refused, naming the block).
  void bytes(const std::string& name, void* data, std::size_t n) {
    if (!loading()) {
      const auto* p = static_cast<const unsigned char*>(data);
      blocks[name].assign(p, p + n);
      return;
    }
    const std::vector<unsigned char>& block = saved(name);
    if (block.size() != n)
      throw Error("saved state block '" + name + "' has " + std::to_string(block.size()) + " bytes, this run needs " +
                  std::to_string(n));
    if (n) std::memcpy(data, block.data(), n);
  }

  // A trivially copyable value (a counter, a loss scale, a random stream's state).
  template <class U> void value(const std::string& name, U& v) {
    static_assert(std::is_trivially_copyable_v<U>);
    bytes(name, &v, sizeof v);
  }

  // A vector of trivially copyable values whose length the saved state decides (curves so far).
  template <class U> void values(const std::string& name, std::vector<U>& v) {
    static_assert(std::is_trivially_copyable_v<U>);
    if (loading()) v.resize(saved(name).size() / sizeof(U));
    bytes(name, v.data(), v.size() * sizeof(U));
  }

  // A tensor's values, in its present shape. Raw bytes for the fixed-size types; mp, whose object is not
  // trivially copyable, as text with enough digits to read back the same value.
  template <class U> void tensor(const std::string& name, Tensor<U>& t) {
    if (t.is_dry()) return;
    if constexpr (std::is_trivially_copyable_v<U>) {
      bytes(name, t.data(), t.bytes());
    } else {
      std::vector<unsigned char> text;
      if (!loading()) {
        std::ostringstream out;
        out.precision(std::numeric_limits<U>::max_digits10);
        for (index_t i = 0; i < t.numel(); ++i) out << t[i] << '\n';
        const std::string s = out.str();
        blocks[name].assign(s.begin(), s.end());
        return;
      }
      const std::vector<unsigned char>& block = saved(name);
      std::istringstream in(std::string(block.begin(), block.end()));
      for (index_t i = 0; i < t.numel(); ++i)
        if (!(in >> t[i])) throw Error("saved state block '" + name + "' holds fewer values than this run needs");
    }
  }

 private:
  const std::vector<unsigned char>& saved(const std::string& name) const {
    const auto it = blocks.find(name);
    if (it == blocks.end()) throw Error("saved state has no block '" + name + "'");
    return it->second;
  }
  Mode mode_;
};

}  // namespace lowmem
