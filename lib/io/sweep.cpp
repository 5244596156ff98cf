#include "io/sweep.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "io/config_reader.hpp"
#include "io/limits.hpp"
#include "numerics/error.hpp"

namespace lowmem {
namespace {

using json = nlohmann::json;

std::string location(const std::string& file, const std::string& pointer) {
  return file.empty() ? pointer : file + ": " + pointer;
}

// One axis of the run grid: all its paths step together (one path for a sweep key, several for zip).
struct Axis {
  struct Entry {
    std::string path, where;
    const json* values;
  };
  std::vector<Entry> entries;
  std::size_t size = 1;
};

const json& checked_list(const json& values, const std::string& where) {
  if (!values.is_array() || values.empty())
    throw Error(where + ": expected a non-empty list of values, got " + json_excerpt(values));
  return values;
}

std::vector<Axis> sweep_axes(const json& sweep, const std::string& file, const std::string& pointer) {
  if (!sweep.is_object())
    throw Error(location(file, pointer) + ": expected an object mapping paths to lists of values, got " + json_excerpt(sweep));
  std::vector<Axis> axes;
  for (const auto& [path, values] : sweep.items()) {
    const std::string where = location(file, pointer + "/" + json_pointer_token(path));
    axes.push_back({{{path, where, &checked_list(values, where)}}, values.size()});
  }
  return axes;
}

Axis zip_axis(const json& zip, const std::string& file) {
  if (!zip.is_object())
    throw Error(location(file, "/zip") + ": expected an object mapping paths to lists of values, got " + json_excerpt(zip));
  Axis axis;
  for (const auto& [path, values] : zip.items()) {
    const std::string where = location(file, "/zip/" + json_pointer_token(path));
    checked_list(values, where);
    if (!axis.entries.empty() && values.size() != axis.size)
      throw Error(where + ": has " + std::to_string(values.size()) + " values but /zip/" +
                  json_pointer_token(axis.entries[0].path) + " has " + std::to_string(axis.size) +
                  " (zip lists vary together)");
    axis.entries.push_back({path, where, &values});
    axis.size = values.size();
  }
  return axis;
}

void set_step(json& config, const Axis& axis, std::size_t step) {
  for (const auto& e : axis.entries) set_path(config, e.path, (*e.values)[step], e.where);
}

// Appends the cartesian product of `axes` applied to `base`, the last axis varying fastest.
void append_product(const json& base, const std::vector<Axis>& axes, std::vector<json>& out) {
  std::size_t runs = 1;
  for (const auto& a : axes) runs *= a.size;
  std::vector<std::size_t> step(axes.size());
  for (std::size_t run = 0; run < runs; ++run) {
    for (std::size_t rest = run, k = axes.size(); k-- > 0; rest /= axes[k].size) step[k] = rest % axes[k].size;
    json config = base;
    for (std::size_t k = 0; k < axes.size(); ++k) set_step(config, axes[k], step[k]);  // in key order
    out.push_back(std::move(config));
  }
}

// a * b, or the runs limit + 1 if it is larger (the count only has to tell "too many").
std::int64_t capped_product(std::int64_t a, std::int64_t b) {
  const std::int64_t cap = limits().runs + 1;
  return a != 0 && b > cap / a ? cap : std::min(a * b, cap);
}

// Text fit for a one-line message: control bytes (and, for text that is not UTF-8, every byte >= 0x80) as
// \xHH, cut at 80 characters.
std::string printable(const std::string& text, bool escape_high) {
  std::string out;
  for (unsigned char c : text) {
    if (out.size() >= 80) return out + "...";
    if (c < 0x20 || c == 0x7f || (escape_high && c >= 0x80)) {
      static const char* hex = "0123456789abcdef";
      out += std::string("\\x") + hex[c >> 4] + hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

bool is_index(const std::string& part) {
  return !part.empty() && part.size() < 10 && part.find_first_not_of("0123456789") == std::string::npos;
}

// A --set of `path` to `value` on a config that sweeps it: the axis is replaced by the one value (the user's
// intent: every sweep object and zip lose that key; a sweep object left empty contributes the base config once,
// and only one such object is kept). What the sweep would overwrite is refused, naming the axis: a --set inside a
// swept value (path under a swept key), or a value that holds a swept path (an object set over a swept key inside
// it; one without that key is fine, the sweep fills it in).
void replace_swept_axis(json& config, const std::string& path, const json& value, const std::string& context) {
  auto check_inside = [&](const std::string& key, const std::string& pointer) {
    if (path.size() > key.size() && path.compare(0, key.size() + 1, key + ".") == 0)
      throw Error(context + ": \"" + key + "\" is swept (" + pointer + "), so a value set inside it would be " +
                  "overwritten; set the whole axis instead (--set " + key + "=...)");
    if (key.size() > path.size() && key.compare(0, path.size() + 1, path + ".") == 0 &&
        find_path(value, key.substr(path.size() + 1)))
      throw Error(context + ": the value sets \"" + key + "\", which is swept (" + pointer + ") and would be " +
                  "overwritten; leave it out of the value, or --set " + key + "=... to replace the axis");
  };
  auto prune = [&](json& object, const std::string& pointer) {
    for (const auto& item : object.items()) check_inside(item.key(), pointer + "/" + json_pointer_token(item.key()));
    object.erase(path);
  };
  if (config.contains("zip") && config["zip"].is_object()) {
    prune(config["zip"], "/zip");
    if (config["zip"].empty()) config.erase("zip");
  }
  if (!config.contains("sweep")) return;
  json& sweep = config["sweep"];
  if (sweep.is_object()) {
    prune(sweep, "/sweep");
    if (sweep.empty()) config.erase("sweep");
  } else if (sweep.is_array()) {
    json kept = json::array();
    bool has_empty = false;
    for (std::size_t i = 0; i < sweep.size(); ++i) {
      if (sweep[i].is_object()) prune(sweep[i], "/sweep/" + std::to_string(i));
      if (sweep[i].is_object() && sweep[i].empty()) {
        if (has_empty) continue;
        has_empty = true;
      }
      kept.push_back(sweep[i]);
    }
    if (kept.size() == 1 && kept[0].is_object() && kept[0].empty()) config.erase("sweep");
    else sweep = std::move(kept);
  }
}

}  // namespace

void set_path(json& config, const std::string& dotted, const json& value, const std::string& context) {
  auto fail = [&](const std::string& what) { throw Error(context + ": " + what); };
  std::vector<std::string> parts;
  for (std::size_t start = 0;;) {
    const std::size_t dot = dotted.find('.', start);
    parts.push_back(dotted.substr(start, dot - start));
    if (parts.back().empty()) fail("invalid path \"" + dotted + "\" (expected dotted keys, e.g. train.optimizer.lr)");
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  json* node = &config;
  std::string walked;  // the dotted prefix resolved so far, for messages
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const std::string& part = parts[k];
    const std::string here = walked.empty() ? part : walked + "." + part;
    const bool last = k + 1 == parts.size();
    if (node->is_object()) {
      if (last) return void((*node)[part] = value);  // may add a key; the schema check rejects unknown ones
      const auto it = node->find(part);
      if (it == node->end()) {
        std::vector<std::string> keys;
        for (const auto& item : node->items()) keys.push_back(item.key());
        const auto near = closest_match(part, keys);
        fail("\"" + here + "\" does not exist" +
             (near ? " (did you mean \"" + (walked.empty() ? *near : walked + "." + *near) + "\"?)" : ""));
      }
      node = &*it;
    } else if (node->is_array()) {
      if (!is_index(part)) fail("\"" + walked + "\" is a list, and \"" + part + "\" is not an index");
      const std::size_t index = std::stoul(part);
      if (index >= node->size())
        fail("index " + part + " is out of range for \"" + walked + "\" (" + std::to_string(node->size()) + " elements)");
      node = &(*node)[index];
      if (last) return void(*node = value);
    } else {
      fail("cannot set \"" + dotted + "\": " + (walked.empty() ? "the config" : "\"" + walked + "\"") + " is a " +
           node->type_name() + " (" + json_excerpt(*node) + "), not an object or list");
    }
    walked = here;
  }
}

std::vector<json> expand_sweep(const json& config, const std::string& file) {
  if (!config.is_object() || (!config.contains("sweep") && !config.contains("zip"))) return {config};
  json base = config;
  base.erase("sweep");
  base.erase("zip");

  const Axis zip = config.contains("zip") ? zip_axis(config.at("zip"), file) : Axis{};
  std::vector<std::vector<Axis>> groups;  // one cartesian product per sweep object
  if (!config.contains("sweep")) {
    groups.emplace_back();
  } else if (const json& sweep = config.at("sweep"); sweep.is_array()) {
    if (sweep.empty()) throw Error(location(file, "/sweep") + ": expected a non-empty list of sweep objects, got []");
    for (std::size_t i = 0; i < sweep.size(); ++i)
      groups.push_back(sweep_axes(sweep[i], file, "/sweep/" + std::to_string(i)));
  } else {
    groups.push_back(sweep_axes(sweep, file, "/sweep"));
  }
  // A path in both zip and sweep would be set twice, the sweep silently winning.
  for (const auto& group : groups)
    for (const auto& axis : group)
      for (const auto& z : zip.entries)
        if (axis.entries[0].path == z.path) throw Error(axis.entries[0].where + ": also set by /zip/" + json_pointer_token(z.path));

  // Counted before any run is built: a sweep can describe more runs than memory holds.
  std::int64_t count = 0;
  for (const auto& group : groups) {
    std::int64_t product = static_cast<std::int64_t>(zip.size);
    for (const auto& axis : group) product = capped_product(product, static_cast<std::int64_t>(axis.size));
    count = std::min(count + product, limits().runs + 1);
  }
  if (count > limits().runs)
    throw Error(location(file, "/sweep") + ": expands to more than " + std::to_string(limits().runs) + " runs (" +
                raise_hint("runs") + ")");
  std::vector<json> runs;
  for (std::size_t z = 0; z < zip.size; ++z) {
    json zipped = base;
    set_step(zipped, zip, z);
    for (const auto& group : groups) append_product(zipped, group, runs);
  }
  return runs;
}

std::vector<std::string> swept_paths(const json& config) {
  std::vector<std::string> paths;
  auto add_keys = [&](const json& object) {
    if (object.is_object())
      for (const auto& item : object.items()) paths.push_back(item.key());
  };
  if (config.is_object() && config.contains("zip")) add_keys(config.at("zip"));
  if (config.is_object() && config.contains("sweep")) {
    const json& sweep = config.at("sweep");
    if (sweep.is_array())
      for (const json& object : sweep) add_keys(object);
    else
      add_keys(sweep);
  }
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  return paths;
}

const json* find_path(const json& config, const std::string& dotted) {
  const json* node = &config;
  for (std::size_t start = 0;;) {
    const std::size_t dot = dotted.find('.', start);
    const std::string part = dotted.substr(start, dot - start);
    if (node->is_object()) {
      const auto it = node->find(part);
      if (it == node->end()) return nullptr;
      node = &*it;
    } else if (node->is_array() && is_index(part) && std::stoul(part) < node->size()) {
      node = &(*node)[std::stoul(part)];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) return node;
    start = dot + 1;
  }
}

std::string value_text(const json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); }

void apply_override(json& config, const std::string& assignment) {
  const std::string context = "--set " + printable(assignment, false);
  const std::size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) throw Error(context + ": expected PATH=VALUE, e.g. --set train.optimizer.lr=0.01");
  const std::string text = assignment.substr(eq + 1);
  json value = json::accept(text) ? parse_json_text(text, context) : json(text);
  try {
    (void)value.dump();  // a JSON string must be UTF-8; the shell hands over any bytes
  } catch (const json::type_error&) {
    throw Error("--set " + printable(assignment, true) + ": the value is not valid UTF-8 text");
  }
  const std::string path = assignment.substr(0, eq);
  if (config.is_object()) replace_swept_axis(config, path, value, context);
  set_path(config, path, value, context);
}

}  // namespace lowmem
