#include "io/limits.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "numerics/error.hpp"

namespace lowmem {

namespace {
Limits current;
}  // namespace

const Limits& limits() { return current; }

void set_limit(const std::string& assignment) {
  const std::string context = "--limit " + assignment;
  const std::size_t eq = assignment.find('=');
  const std::string name = assignment.substr(0, eq), text = eq == std::string::npos ? "" : assignment.substr(eq + 1);
  std::int64_t* field = name == "runs" ? &current.runs : name == "layers" ? &current.layers
                        : name == "memory" ? &current.memory_bytes : nullptr;
  if (!field) throw Error(context + ": expected runs=N, layers=N or memory=BYTES");
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  // Bounded so that sums and products of counts under the limits stay far from 2^63.
  const long long most = field == &current.memory_bytes ? 1LL << 62 : 1LL << 40;
  if (text.empty() || *end != '\0' || errno == ERANGE || value < 1 || value > most)
    throw Error(context + ": expected a whole number from 1 to " + std::to_string(most));
  *field = value;
}

std::int64_t memory_limit_bytes() {
  if (current.memory_bytes > 0) return current.memory_bytes;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const std::int64_t machine = pages > 0 && page > 0 ? static_cast<std::int64_t>(pages) * page : INT64_MAX;
  return std::min<std::int64_t>(machine, std::int64_t{1} << 62);  // as --limit memory allows
}

std::string raise_hint(const std::string& name) {
  return "raise it with --limit " + name + (name == "memory" ? "=BYTES" : "=N");
}

}  // namespace lowmem
