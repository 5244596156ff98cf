// Plain text for sequence models: a corpus read as bytes or Unicode characters, cut into next-token windows.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "data/dataset.hpp"
#include "numerics/error.hpp"

namespace lowmem {
namespace {

namespace fs = std::filesystem;

const char* const kFortunesHint = "(Debian's package fortunes provides /usr/share/games/fortunes)";

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error("text: cannot open " + file.string());
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw Error("text: cannot read " + file.string());
  return std::move(bytes).str();
}

// The files a path stands for: itself, or a directory's regular files in name order (symlinks skipped: Debian's
// fortunes has *.u8 links to files it also has).
std::vector<fs::path> text_files(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec || !fs::exists(status))
    throw Error("text: " + path + " does not exist " + (path == "/usr/share/games/fortunes" ? kFortunesHint : ""));
  if (!fs::is_directory(status)) return {fs::path(path)};
  std::vector<fs::path> files;
  for (const fs::directory_entry& e : fs::directory_iterator(path, ec))
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  if (ec) throw Error("text: cannot list " + path + ": " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// Appends the code points of UTF-8 `text` (from `file`) to `out`; throws naming the byte offset of a bad sequence.
void decode_utf8(const std::string& text, const fs::path& file, std::vector<std::uint32_t>& out) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char b = s[i];
    const int extra = b < 0x80 ? 0 : (b >> 5) == 0x6 ? 1 : (b >> 4) == 0xE ? 2 : (b >> 3) == 0x1E ? 3 : -1;
    std::uint32_t cp = extra == 0 ? b : extra == 1 ? (b & 0x1F) : extra == 2 ? (b & 0x0F) : (b & 0x07);
    bool ok = extra >= 0 && i + static_cast<std::size_t>(extra) < n;
    for (int k = 1; ok && k <= extra; ++k) {
      ok = (s[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8 either.
    static constexpr std::uint32_t least[] = {0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= least[extra] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    if (!ok)
      throw Error("text: " + file.string() + " is not UTF-8 at byte " + std::to_string(i) +
                  " (use \"level\": \"byte\" for other encodings)");
    out.push_back(cp);
    i += static_cast<std::size_t>(extra) + 1;
  }
}

}  // namespace

TextCorpus read_text(const std::string& path, const std::string& level) {
  if (level != "char" && level != "byte") throw Error("text: level \"" + level + "\", expected char or byte");
  TextCorpus c;
  std::vector<std::uint32_t> symbols;  // the text as bytes or code points
  std::size_t files = 0;
  for (const fs::path& file : text_files(path)) {
    const std::string text = read_file(file);
    if (text.find('\0') != std::string::npos) continue;  // not text (fortune's .dat indexes)
    ++files;
    if (level == "byte") symbols.insert(symbols.end(), text.begin(), text.end());
    else decode_utf8(text, file, symbols);
  }
  if (level == "byte") {
    for (std::uint32_t& b : symbols) b &= 0xFF;  // from char, which may be signed
    c.symbols.resize(256);
    for (std::uint32_t b = 0; b < 256; ++b) c.symbols[b] = b;
  } else {
    c.symbols = symbols;
    std::sort(c.symbols.begin(), c.symbols.end());
    c.symbols.erase(std::unique(c.symbols.begin(), c.symbols.end()), c.symbols.end());
  }
  if (symbols.empty()) throw Error("text: " + path + " has no text" + (files == 0 ? " (no text file in it)" : ""));
  c.tokens.reserve(symbols.size());
  for (std::uint32_t s : symbols)
    c.tokens.push_back(static_cast<std::int32_t>(std::lower_bound(c.symbols.begin(), c.symbols.end(), s) -
                                                 c.symbols.begin()));
  c.source = "text (" + path + (files > 1 ? ", " + std::to_string(files) + " files" : "") + ", " + level + " level)";
  return c;
}

int text_vocabulary(const std::string& path, const std::string& level) {
  if (level == "byte") {
    text_files(path);  // a missing path is an error now, not when the run starts
    return 256;
  }
  static std::mutex mutex;
  static std::map<std::pair<std::string, std::string>, int> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::pair{path, level};
  if (const auto it = known.find(key); it != known.end()) return it->second;
  return known[key] = static_cast<int>(read_text(path, level).symbols.size());
}

std::pair<Dataset, Dataset> split_text(const TextCorpus& corpus, const TextSplitSpec& spec) {
  const auto n = static_cast<std::int64_t>(corpus.tokens.size());
  const auto validation = static_cast<std::int64_t>(static_cast<double>(n) * spec.validation);
  auto windows = [&](std::int64_t first, std::int64_t end, std::int64_t limit, const char* name) {
    const std::int64_t tokens = end - first, T = spec.seq_len;
    if (tokens < T + 1)
      throw Error("data.seq_len " + std::to_string(T) + " is too long for the " + name + " split of " + corpus.source +
                  ": it has " + std::to_string(tokens) + " tokens, a window needs seq_len + 1");
    Dataset d;
    d.source = corpus.source + " " + name;
    d.count = (tokens - 1) / T;
    if (limit > 0) d.count = std::min(d.count, limit);
    d.channels = d.height = 1, d.width = T;
    d.classes = static_cast<int>(corpus.symbols.size());
    d.tokens = true;
    d.targets = T;
    d.tail = std::min(T - 1, tokens - 1 - d.count * T);  // inputs stored past the last window, each with its label
    d.images.resize(static_cast<std::size_t>(d.count * T + d.tail));
    d.labels.resize(static_cast<std::size_t>(d.count * T + d.tail));
    for (std::int64_t i = 0; i < d.count * T + d.tail; ++i) {
      d.images[static_cast<std::size_t>(i)] = static_cast<float>(corpus.tokens[static_cast<std::size_t>(first + i)]);
      d.labels[static_cast<std::size_t>(i)] = corpus.tokens[static_cast<std::size_t>(first + i + 1)];
    }
    return d;
  };
  return {windows(0, n - validation, spec.train_limit, "train"),
          windows(n - validation, n, spec.validation_limit, "validation")};
}

}  // namespace lowmem
