#include "techniques/registry.hpp"

#include <cctype>
#include <functional>

#include "io/config_reader.hpp"
#include "techniques/approx_activations.hpp"
#include "techniques/checkpoint.hpp"
#include "techniques/microbatch.hpp"
#include "techniques/mixed_precision.hpp"
#include "techniques/reversible.hpp"
#include "techniques/sparsity.hpp"
#include "techniques/store_all.hpp"

namespace lowmem {

namespace {

struct TechniqueType {
  std::string name;
  std::function<std::shared_ptr<const Technique>(ConfigReader&)> parse;
};

template <class C> TechniqueType registered() {
  return {C::name, [](ConfigReader& r) { return std::make_shared<const C>(r); }};
}

// Every technique, one line each.
const std::vector<TechniqueType>& registry() {
  static const std::vector<TechniqueType> types = {
      registered<StoreAll>(),  registered<Reversible>(),     registered<Checkpoint>(),       registered<Microbatch>(),
      registered<MixedPrecision>(), registered<ApproxActivations>(), registered<Sparsity>(),
  };
  return types;
}

std::shared_ptr<const Technique> parse_technique(ConfigReader r) {
  const std::string type = r.get_choice("type", StoreAll::name, technique_types());
  for (const TechniqueType& t : registry())
    if (t.name == type) {
      std::shared_ptr<const Technique> technique = t.parse(r);
      r.finish();
      return technique;
    }
  r.fail("type", "unknown technique");  // unreachable: get_choice checked it
}

}  // namespace

std::vector<std::string> technique_types() {
  std::vector<std::string> names;
  for (const TechniqueType& t : registry()) names.push_back(t.name);
  return names;
}

TechniqueList parse_techniques(ConfigReader& run) {
  TechniqueList list;
  if (run.has("technique") && run.raw("technique").is_array()) {
    for (ConfigReader& t : run.object_list("technique")) list.push_back(parse_technique(std::move(t)));
    if (list.empty()) run.fail("technique", "expected at least one technique");
  } else {
    list.push_back(parse_technique(run.object_or_empty("technique")));
  }
  for (const auto& t : in_registry_order(list)) t->check_composition(list, run);
  for (std::size_t i = 0; i < list.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (std::string(list[i]->type()) == list[j]->type())
        run.fail("technique", "\"" + std::string(list[i]->type()) + "\" is listed twice");
  return list;
}

TechniqueList in_registry_order(const TechniqueList& all) {
  TechniqueList sorted;
  for (const TechniqueType& type : registry())
    for (const auto& t : all)
      if (type.name == t->type()) sorted.push_back(t);
  return sorted;
}

TechniqueList store_all_only() { return {std::make_shared<const StoreAll>()}; }

std::string techniques_label(const TechniqueList& all) {
  std::string label;
  for (const auto& t : all) label += (label.empty() ? "" : "+") + t->label();
  return label;
}

std::string techniques_readable(const TechniqueList& all) {
  std::string text;
  for (const auto& t : all) {
    std::string label = t->label();  // "type-param-param": a type has no '-', its parameters follow one each
    const std::size_t dash = label.find('-');
    if (dash != std::string::npos) {
      std::string params = label.substr(dash + 1);
      for (std::size_t i = 0; i < params.size(); ++i) {  // not an exponent's sign ("1e-05")
        const bool exponent = i >= 2 && params[i - 1] == 'e' && std::isdigit(static_cast<unsigned char>(params[i - 2]));
        if (params[i] == '-' && !exponent) params[i] = ',';
      }
      label = label.substr(0, dash) + "(" + params + ")";
    }
    text += (text.empty() ? "" : " + ") + label;
  }
  return text;
}

}  // namespace lowmem
