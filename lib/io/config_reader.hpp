#pragma once
// Strict JSON config reading where the parsing code is the schema: each typed getter reads a key and declares it
// valid, and finish() rejects every key no getter asked for (nlohmann/json itself ignores unknown keys silently).
// Every error is a lowmem::Error shaped "<file>: <json pointer>: <problem>" ("<json pointer>: <problem>" without a file).
//
//   ConfigReader train(config.at("train"), "/train", "cfg.json");
//   int batch = train.get_in("batch", 32, 1, std::numeric_limits<int>::max());
//   double lr = train.object("optimizer").required<double>("lr");   // sub-readers need their own finish()
//   train.finish();
#include <concepts>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "numerics/error.hpp"

namespace lowmem {

template <class T>
concept ConfigScalar = std::same_as<T, bool> || std::same_as<T, int> || std::same_as<T, std::int64_t> ||
                       std::same_as<T, double> || std::same_as<T, std::string>;
template <class T>
concept ConfigNumber = std::same_as<T, int> || std::same_as<T, std::int64_t> || std::same_as<T, double>;

class ConfigReader {
 public:
  // Holds a reference to `object`: the json must outlive the reader (hence no temporaries). Throws unless it is an object.
  // effective: if given, every value read (as written, or the default used) is recorded there at the same path,
  // so that after parsing it holds the config with every default filled in.
  ConfigReader(const nlohmann::json& object, std::string path, std::string file, nlohmann::json* effective = nullptr);
  ConfigReader(nlohmann::json&&, std::string, std::string, nlohmann::json* = nullptr) = delete;

  // Integers accept an integral float (2.0) but not 2.5 or "3"; double accepts integers; no other conversions.
  template <ConfigScalar T> T required(const std::string& key);
  template <ConfigScalar T> T get(const std::string& key, const T& fallback);
  // Inclusive bounds; pass numeric_limits lowest()/max() (or +-infinity) for an open side.
  template <ConfigNumber T> T get_in(const std::string& key, const T& fallback, T lo, T hi);
  template <ConfigNumber T> T required_in(const std::string& key, T lo, T hi);
  std::string get_choice(const std::string& key, const std::string& fallback, const std::vector<std::string>& choices);
  std::string required_choice(const std::string& key, const std::vector<std::string>& choices);
  template <ConfigScalar T> std::vector<T> get_list(const std::string& key, const std::vector<T>& fallback);

  bool has(const std::string& key) const;  // does not declare the key
  void allow(const std::string& key);      // declares a key that is read elsewhere
  ConfigReader object(const std::string& key);
  std::optional<ConfigReader> optional_object(const std::string& key);  // absent -> nullopt; null is an error
  ConfigReader object_or_empty(const std::string& key);  // absent -> an empty object (its defaults get recorded)
  std::vector<ConfigReader> object_list(const std::string& key);        // paths ".../layers/3"
  const nlohmann::json& raw(const std::string& key) const;              // required; declares the key

  // Throws for the first undeclared key, suggesting a near declared key. Checks this object only, not sub-readers.
  void finish() const;
  // "cfg.json: /train/batch"; where("") names this object itself.
  std::string where(const std::string& key) const;
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;

  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }

 private:
  const nlohmann::json* find(const std::string& key) const;  // declares the key; nullptr if absent
  const nlohmann::json& need(const std::string& key) const;  // declares; "missing required key" if absent
  std::string choice(const std::string& key, const nlohmann::json& value, const std::vector<std::string>& choices) const;

  template <class T> const T& record(const std::string& key, const T& value) const;

  const nlohmann::json* object_;
  nlohmann::json* effective_;
  std::string path_, file_;
  mutable std::set<std::string> declared_;  // mutable: raw() is const yet declares
};

// Reads and parses a JSON file. Errors name the file; parse errors give "line L, column C"; a key repeated in one
// object is an error (nlohmann would keep only one of them silently).
nlohmann::json read_json_file(const std::string& file);
// The same for JSON text from elsewhere (a --set value); `source` names it in errors. Nesting deeper than
// max_json_depth (io/limits.hpp) is refused; a number beyond a double is an error naming it.
nlohmann::json parse_json_text(const std::string& text, const std::string& source);
// The value as JSON text, shortened to 80 characters so a large value does not swamp a message.
std::string json_excerpt(const nlohmann::json& value);

// The "did you mean" rule shared by keys, choices and sweep paths: a case-insensitive match, else the single closest
// candidate within edit distance 2 that is not a total rewrite of the word. Ties suggest nothing.
std::optional<std::string> closest_match(const std::string& word, const std::vector<std::string>& candidates);
// Escapes one JSON-pointer token ("a/b" -> "a~1b").
std::string json_pointer_token(const std::string& key);

}  // namespace lowmem
