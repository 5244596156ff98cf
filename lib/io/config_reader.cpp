#include "io/config_reader.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/limits.hpp"

namespace lowmem {
namespace {

using json = nlohmann::json;


std::string quoted_list(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& item : items) s += (s.empty() ? "" : ", ") + json(item).dump();
  return s;
}

template <class T> std::string kind(bool plural = false) {
  if constexpr (std::is_same_v<T, bool>) return plural ? "booleans" : "a boolean";
  else if constexpr (std::is_integral_v<T>) return plural ? "integers" : "an integer";
  else if constexpr (std::is_floating_point_v<T>) return plural ? "numbers" : "a number";
  else return plural ? "strings" : "a string";
}

// "an integer >= 1", "a number <= 1.0", "an integer between 1 and 8"; a side at the type's limit is open.
template <class T> std::string kind_in(T lo, T hi) {
  const bool open_lo = lo <= std::numeric_limits<T>::lowest(), open_hi = hi >= std::numeric_limits<T>::max();
  if (open_lo && open_hi) return kind<T>();
  if (open_hi) return kind<T>() + " >= " + json(lo).dump();
  if (open_lo) return kind<T>() + " <= " + json(hi).dump();
  return kind<T>() + " between " + json(lo).dump() + " and " + json(hi).dump();
}

// Converts without any leniency beyond "an integral float is an integer" and "an integer is a number".
template <class T> T convert(const json& v, const std::string& where) {
  auto fail = [&](const std::string& expected) -> T {
    throw Error(where + ": expected " + expected + ", got " + json_excerpt(v));
  };
  if constexpr (std::is_same_v<T, bool>) {
    return v.is_boolean() ? v.get<bool>() : fail(kind<T>());
  } else if constexpr (std::is_integral_v<T>) {
    constexpr T lo = std::numeric_limits<T>::lowest(), hi = std::numeric_limits<T>::max();
    const std::string in_range = kind<T>() + " between " + std::to_string(lo) + " and " + std::to_string(hi);
    if (v.is_number_unsigned()) {  // checked first: nlohmann also calls unsigned values "integer"
      const auto u = v.get<std::uint64_t>();
      return u <= static_cast<std::uint64_t>(hi) ? static_cast<T>(u) : fail(in_range);
    }
    if (v.is_number_integer()) {
      const auto i = v.get<std::int64_t>();
      return i >= lo && i <= hi ? static_cast<T>(i) : fail(in_range);
    }
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (d != std::trunc(d)) return fail(kind<T>());
      // -2^digits and 2^digits are exact doubles, unlike static_cast<double>(hi) for int64.
      const double limit = std::ldexp(1.0, std::numeric_limits<T>::digits);
      return d >= -limit && d < limit ? static_cast<T>(d) : fail(in_range);
    }
    return fail(kind<T>());
  } else if constexpr (std::is_floating_point_v<T>) {
    return v.is_number() ? v.get<T>() : fail(kind<T>());
  } else {
    return v.is_string() ? v.get<std::string>() : fail(kind<T>());
  }
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t next = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = row[j];
      row[j] = next;
    }
  }
  return row[b.size()];
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string suggestion(const std::string& word, const std::vector<std::string>& candidates) {
  const auto match = closest_match(word, candidates);
  return match ? " (did you mean " + json(*match).dump() + "?)" : "";
}

// A first pass over JSON text, building nothing: it tracks the JSON pointer of the current position, to name a
// repeated key (nlohmann would keep one of them silently), and refuses nesting deeper than max_json_depth before
// any value is built (printing or destroying a value recurses). A syntax error stops it; the parse that follows
// reports it. (nlohmann's callback parser does the same checks in one pass but takes quadratic time in long lists.)
class ConfigTextCheck : public nlohmann::json_sax<json> {
 public:
  explicit ConfigTextCheck(std::string source) : source_(std::move(source)) {}
  bool null() override { return value(); }
  bool boolean(bool) override { return value(); }
  bool number_integer(number_integer_t) override { return value(); }
  bool number_unsigned(number_unsigned_t) override { return value(); }
  bool number_float(number_float_t, const string_t&) override { return value(); }
  bool string(string_t&) override { return value(); }
  bool binary(binary_t&) override { return value(); }
  bool start_object(std::size_t) override { return open(false); }
  bool start_array(std::size_t) override { return open(true); }
  bool key(string_t& key) override {
    stack_.back().key = key;
    if (!stack_.back().seen.insert(key).second) throw Error(source_ + ": " + pointer() + ": duplicate key");
    return true;
  }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  struct Frame {
    explicit Frame(bool is_array) : array(is_array) {}
    bool array;
    std::size_t index = 0;
    std::string key;
    std::set<std::string> seen;
  };
  bool open(bool array) {
    if (stack_.size() >= static_cast<std::size_t>(max_json_depth))
      throw Error(source_ + ": " + pointer() + ": nested deeper than " + std::to_string(max_json_depth) +
                  " levels of objects and lists");
    stack_.emplace_back(array);
    return true;
  }
  bool close() {
    stack_.pop_back();
    return value();  // a finished container is one element of its parent
  }
  bool value() {
    if (!stack_.empty() && stack_.back().array) ++stack_.back().index;
    return true;
  }
  std::string pointer() const {
    std::string p;
    for (const auto& f : stack_) p += "/" + (f.array ? std::to_string(f.index) : json_pointer_token(f.key));
    return p;
  }
  std::string source_;
  std::vector<Frame> stack_;
};

}  // namespace

std::optional<std::string> closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  for (const auto& c : candidates)
    if (lower(c) == lower(word)) return c;
  std::optional<std::string> best;
  std::size_t best_distance = 3;  // accept distance <= 2
  bool tie = false;
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d >= std::max(word.size(), c.size())) continue;  // "x" -> "lr" rewrites everything: no hint
    if (d < best_distance) best = c, best_distance = d, tie = false;
    else if (d == best_distance) tie = true;
  }
  return tie ? std::nullopt : best;
}

std::string json_pointer_token(const std::string& key) {
  std::string out;
  for (char c : key) out += c == '~' ? "~0" : c == '/' ? "~1" : std::string(1, c);
  return out;
}

ConfigReader::ConfigReader(const json& object, std::string path, std::string file, json* effective)
    : object_(&object), effective_(effective), path_(std::move(path)), file_(std::move(file)) {
  if (!object.is_object()) fail("", "expected an object, got " + json_excerpt(object));
  if (effective_ && !effective_->is_object()) *effective_ = json::object();
}

template <class T> const T& ConfigReader::record(const std::string& key, const T& value) const {
  if (effective_) (*effective_)[key] = value;
  return value;
}

std::string ConfigReader::where(const std::string& key) const {
  std::string pointer = key.empty() ? path_ : path_ + "/" + json_pointer_token(key);
  if (pointer.empty()) pointer = "(top level)";
  return file_.empty() ? pointer : file_ + ": " + pointer;
}

void ConfigReader::fail(const std::string& key, const std::string& what) const { throw Error(where(key) + ": " + what); }

const json* ConfigReader::find(const std::string& key) const {
  declared_.insert(key);
  const auto it = object_->find(key);
  return it == object_->end() ? nullptr : &*it;
}

const json& ConfigReader::need(const std::string& key) const {
  if (const json* v = find(key)) return *v;
  fail(key, "missing required key");
}

bool ConfigReader::has(const std::string& key) const { return object_->contains(key); }
void ConfigReader::allow(const std::string& key) { declared_.insert(key); }
const json& ConfigReader::raw(const std::string& key) const { return record(key, need(key)); }

template <ConfigScalar T> T ConfigReader::required(const std::string& key) {
  return record(key, convert<T>(need(key), where(key)));
}

template <ConfigScalar T> T ConfigReader::get(const std::string& key, const T& fallback) {
  const json* v = find(key);
  return record(key, v ? convert<T>(*v, where(key)) : fallback);
}

template <ConfigNumber T> T ConfigReader::required_in(const std::string& key, T lo, T hi) {
  const json& v = need(key);
  const T x = convert<T>(v, where(key));
  if (x < lo || x > hi) fail(key, "expected " + kind_in(lo, hi) + ", got " + json_excerpt(v));
  return record(key, x);
}

template <ConfigNumber T> T ConfigReader::get_in(const std::string& key, const T& fallback, T lo, T hi) {
  declared_.insert(key);
  return has(key) ? required_in(key, lo, hi) : record(key, fallback);
}

template <ConfigScalar T> std::vector<T> ConfigReader::get_list(const std::string& key, const std::vector<T>& fallback) {
  const json* v = find(key);
  if (!v) return record(key, fallback);
  if (!v->is_array()) fail(key, "expected a list of " + kind<T>(true) + ", got " + json_excerpt(*v));
  std::vector<T> out;
  for (std::size_t i = 0; i < v->size(); ++i) out.push_back(convert<T>((*v)[i], where(key) + "/" + std::to_string(i)));
  return record(key, out);
}

std::string ConfigReader::choice(const std::string& key, const json& v, const std::vector<std::string>& choices) const {
  if (v.is_string() && std::find(choices.begin(), choices.end(), v.get<std::string>()) != choices.end())
    return v.get<std::string>();
  fail(key, "expected one of " + quoted_list(choices) + ", got " + json_excerpt(v) +
                (v.is_string() ? suggestion(v.get<std::string>(), choices) : ""));
}

std::string ConfigReader::get_choice(const std::string& key, const std::string& fallback,
                                     const std::vector<std::string>& choices) {
  const json* v = find(key);
  return record(key, v ? choice(key, *v, choices) : fallback);
}

std::string ConfigReader::required_choice(const std::string& key, const std::vector<std::string>& choices) {
  return record(key, choice(key, need(key), choices));
}

ConfigReader ConfigReader::object(const std::string& key) {
  const json& v = need(key);
  json* sub = effective_ ? &((*effective_)[key] = json::object()) : nullptr;
  return ConfigReader(v, path_ + "/" + json_pointer_token(key), file_, sub);
}

std::optional<ConfigReader> ConfigReader::optional_object(const std::string& key) {
  allow(key);
  if (!has(key)) return std::nullopt;
  return object(key);
}

ConfigReader ConfigReader::object_or_empty(const std::string& key) {
  static const json empty = json::object();
  allow(key);
  if (has(key)) return object(key);
  json* sub = effective_ ? &((*effective_)[key] = json::object()) : nullptr;
  return ConfigReader(empty, path_ + "/" + json_pointer_token(key), file_, sub);
}

std::vector<ConfigReader> ConfigReader::object_list(const std::string& key) {
  const json& v = need(key);
  if (!v.is_array()) fail(key, "expected a list of objects, got " + json_excerpt(v));
  json* list = effective_ ? &((*effective_)[key] = json::array()) : nullptr;
  if (list)
    for (std::size_t i = 0; i < v.size(); ++i) list->push_back(json::object());  // sized first: pointers stay valid
  std::vector<ConfigReader> out;
  for (std::size_t i = 0; i < v.size(); ++i)
    out.emplace_back(v[i], path_ + "/" + json_pointer_token(key) + "/" + std::to_string(i), file_,
                     list ? &(*list)[i] : nullptr);
  return out;
}

void ConfigReader::finish() const {
  const std::vector<std::string> known(declared_.begin(), declared_.end());
  for (const auto& [key, value] : object_->items()) {
    if (declared_.count(key)) continue;
    std::string hint = suggestion(key, known);
    if (hint.empty() && !known.empty()) hint = "; valid keys: " + quoted_list(known);
    fail(key, "unknown key" + hint);
  }
}

json read_json_file(const std::string& file) {
  if (std::filesystem::is_directory(file)) throw Error(file + ": is a directory, expected a JSON file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file + ": cannot open (" + std::strerror(errno) + ")");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_json_text(text, file);
}

json parse_json_text(const std::string& text, const std::string& source) {
  // "line L, column C" of text offset `at`.
  auto position = [&](std::size_t at) {
    at = std::min(at, text.size());
    const std::size_t line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
    const std::size_t line_start = at == 0 ? 0 : text.rfind('\n', at - 1) + 1;  // npos + 1 == 0
    return "line " + std::to_string(line) + ", column " + std::to_string(at - line_start + 1);
  };
  try {
    // Comments (// and /* */) are skipped, so a config can say why it is as it is.
    ConfigTextCheck check(source);
    json::sax_parse(text, &check, json::input_format_t::json, true, true);  // stops at a syntax error, reported below
    return json::parse(text, nullptr, true, true);
  } catch (const json::parse_error& e) {
    // e.byte counts characters read, so the parser stopped at e.byte - 1: the last character of the bad token.
    // nlohmann's message reads "[json.exception.parse_error.101] parse error at line 1, column 2: <reason>".
    const std::string what = e.what();
    const auto colon = what.find(": ");
    throw Error(source + ": " + position(e.byte == 0 ? 0 : e.byte - 1) +
                ": invalid JSON: " + (colon == std::string::npos ? what : what.substr(colon + 2)));
  } catch (const json::out_of_range& e) {
    // A number beyond a double (1e400): nlohmann names the token but not where it is.
    const std::string what = e.what();
    const std::size_t open = what.find('\''), close = what.rfind('\'');
    const std::string token = open < close ? what.substr(open + 1, close - open - 1) : "";
    const std::size_t at = token.empty() ? std::string::npos : text.find(token);
    throw Error(source + ": " + (at == std::string::npos ? "" : position(at) + ": ") + "the number " + token +
                " is beyond the range of a double (about 1.8e308)");
  }
}

std::string json_excerpt(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() <= 80 ? s : s.substr(0, 77) + "...";
}

#define LOWMEM_CONFIG_SCALAR(T)                                               \
  template T ConfigReader::required<T>(const std::string&);                   \
  template T ConfigReader::get<T>(const std::string&, const T&);              \
  template std::vector<T> ConfigReader::get_list<T>(const std::string&, const std::vector<T>&);
#define LOWMEM_CONFIG_NUMBER(T)                                               \
  template T ConfigReader::get_in<T>(const std::string&, const T&, T, T);     \
  template T ConfigReader::required_in<T>(const std::string&, T, T);
LOWMEM_CONFIG_SCALAR(bool)
LOWMEM_CONFIG_SCALAR(int)
LOWMEM_CONFIG_SCALAR(std::int64_t)
LOWMEM_CONFIG_SCALAR(double)
LOWMEM_CONFIG_SCALAR(std::string)
LOWMEM_CONFIG_NUMBER(int)
LOWMEM_CONFIG_NUMBER(std::int64_t)
LOWMEM_CONFIG_NUMBER(double)
#undef LOWMEM_CONFIG_SCALAR
#undef LOWMEM_CONFIG_NUMBER

}  // namespace lowmem
