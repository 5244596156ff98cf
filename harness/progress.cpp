// The text of the sweep's progress: a finished run's line (status, time, figures, peak memory) and durations.
#include "progress.hpp"

#include <cmath>
#include <cstdio>
#include <optional>

namespace lowmem {

namespace {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) bytes /= 1024, ++u;
  char text[32];
  std::snprintf(text, sizeof text, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return text;
}

}  // namespace

std::string run_line(const std::string& prefix, const RunRecord& record) {
  std::string line = prefix + " " + record.status;
  char figures[200];
  const auto scalar = [&](const char* key) {
    const auto it = record.scalars.find(key);
    return it == record.scalars.end() ? std::optional<double>() : it->second;
  };
  std::snprintf(figures, sizeof figures, " %.1fs", scalar("wall_seconds").value_or(0));
  line += figures;
  if (auto v = scalar("test_accuracy")) std::snprintf(figures, sizeof figures, " test_accuracy %.4f", *v), line += figures;
  if (auto v = scalar("grad_max_rel_error"))
    std::snprintf(figures, sizeof figures, " grad_max_rel_error %.3g", *v), line += figures;
  if (auto v = scalar("peak_bytes")) line += " peak " + human_bytes(*v);
  if (!record.message.empty()) line += ": " + record.message;
  return line;
}

std::string duration_text(double seconds) {
  char text[32];
  const long s = std::lround(seconds);
  if (s >= 3600) std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  return text;
}

}  // namespace lowmem
