#include "layers/layer.hpp"

#include "numerics/error.hpp"

namespace lowmem {

void shape_error(const std::string& layer, const std::string& what) { throw Error("layer " + layer + ": " + what); }

void expect_rank(const std::string& layer, const Shape& s, std::size_t rank) {
  if (s.rank() != rank)
    shape_error(layer, "expects a " +
                           std::string(rank == 3   ? "(channels, height, width)"
                                       : rank == 2 ? "sequence (positions, features)"
                                                   : "flat (features)") +
                           " input, got " + s.str() + (rank == 1 ? " (add a flatten layer before it)" : ""));
}

void expect_sequence(const std::string& layer, const Shape& s, index_t features) {
  if (s.rank() != 2) shape_error(layer, "expects a (positions, features) sequence, got " + s.str());
  if (s[1] != features)
    shape_error(layer, "expects " + std::to_string(features) + " features a position, got " + s.str());
}

void expect_channels(const std::string& layer, const Shape& s, index_t channels) {
  if (s.rank() != 3 && s.rank() != 1) shape_error(layer, "expects (C, H, W) or (C), got " + s.str());
  if (s[0] != channels) shape_error(layer, "expects " + std::to_string(channels) + " channels, got " + s.str());
}

}  // namespace lowmem
