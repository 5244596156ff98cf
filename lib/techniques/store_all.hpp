#pragma once
// Technique "store_all": the baseline. Every layer keeps what its backward needs; nothing is recomputed, rebuilt,
// approximated or sliced. It has no hooks, and composes with no other technique.
#include "io/config_reader.hpp"
#include "techniques/technique.hpp"

namespace lowmem {

class StoreAll : public Technique {
 public:
  static constexpr const char* name = "store_all";
  StoreAll() = default;
  explicit StoreAll(ConfigReader&) {}
  const char* type() const override { return name; }
  void check_composition(const TechniqueList& all, const ConfigReader& run) const override {
    if (all.size() > 1)
      run.fail("technique", "store_all (keep every activation) is the baseline and composes with no other technique");
  }
};

}  // namespace lowmem
