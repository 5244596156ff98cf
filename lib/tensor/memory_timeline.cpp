#include "tensor/memory_timeline.hpp"

#include <algorithm>
#include <map>

namespace lowmem {

TimelinePeak timeline_peak(const MemoryLedger& ledger) {
  const std::vector<MemoryEvent>& events = ledger.events();
  TimelinePeak peak;
  // First pass: the totals, and the first moment after setup at which the highest one is reached.
  std::size_t total = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (i == ledger.peaks_reset_at()) peak.events = i, peak.total = total;
    const MemoryEvent& e = events[i];
    if (e.kind == MemoryEvent::allocate) total += e.bytes;
    if (e.kind == MemoryEvent::release) total -= e.bytes;
    if (i >= ledger.peaks_reset_at() && total > peak.total) peak.events = i + 1, peak.total = total;
  }
  if (ledger.peaks_reset_at() >= events.size() && peak.events == 0) peak.events = events.size(), peak.total = total;
  if (peak.events > 0) {
    peak.phase = events[peak.events - 1].phase;
    peak.owner = ledger.owners()[events[peak.events - 1].owner];
  }
  // Second pass: the buffers alive at that moment.
  std::map<std::uint64_t, TimelinePeak::Buffer> alive;
  for (std::size_t i = 0; i < peak.events; ++i) {
    const MemoryEvent& e = events[i];
    if (e.kind == MemoryEvent::allocate)
      alive[e.buffer] = {e.buffer, e.bytes, e.category, e.phase, ledger.owners()[e.owner]};
    else if (e.kind == MemoryEvent::release) alive.erase(e.buffer);
    else if (auto it = alive.find(e.buffer); it != alive.end()) it->second.category = e.category;
  }
  for (auto& [id, buffer] : alive) peak.alive.push_back(std::move(buffer));
  std::stable_sort(peak.alive.begin(), peak.alive.end(),
                   [](const TimelinePeak::Buffer& a, const TimelinePeak::Buffer& b) { return a.bytes > b.bytes; });
  return peak;
}

}  // namespace lowmem
