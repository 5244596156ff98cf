#pragma once
// Reading a memory timeline (MemoryLedger::record_timeline): the moment of the peak and the buffers alive at it,
// with their owners. What `lowmem plan --timeline` prints: the reason for a peak, buffer by buffer.
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/memory_ledger.hpp"

namespace lowmem {

struct TimelinePeak {
  // The state after the first `events` events of the timeline is the peak: the first moment after setup (the last
  // reset_peaks) at which the total reached the ledger's peak_total.
  std::size_t events = 0;
  std::size_t total = 0;
  MemoryPhase phase = MemoryPhase::setup;  // of the event that reached the peak
  std::string owner;
  struct Buffer {
    std::uint64_t id = 0;
    std::size_t bytes = 0;
    MemoryCategory category = MemoryCategory::workspace;  // at the peak
    MemoryPhase phase = MemoryPhase::setup;               // when it was allocated
    std::string owner;                                    // who allocated it
  };
  std::vector<Buffer> alive;  // largest first; equal sizes in allocation order
};

TimelinePeak timeline_peak(const MemoryLedger& ledger);

}  // namespace lowmem
