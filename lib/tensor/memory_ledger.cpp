#include "tensor/memory_ledger.hpp"

#include <malloc.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <stdexcept>

#include "numerics/error.hpp"

namespace lowmem {

const char* to_string(MemoryCategory c) {
  switch (c) {
    case MemoryCategory::weights: return "weights";
    case MemoryCategory::gradients: return "gradients";
    case MemoryCategory::optimizer_state: return "optimizer_state";
    case MemoryCategory::saved_activations: return "saved_activations";
    case MemoryCategory::workspace: return "workspace";
  }
  return "?";
}

const char* to_string(MemoryPhase p) {
  switch (p) {
    case MemoryPhase::setup: return "setup";
    case MemoryPhase::forward: return "forward";
    case MemoryPhase::backward: return "backward";
    case MemoryPhase::recompute: return "recompute";
    case MemoryPhase::optimizer: return "optimizer";
    case MemoryPhase::evaluation: return "evaluation";
  }
  return "?";
}

namespace {
thread_local MemoryLedger* active_ledger = nullptr;
const std::string no_owner = "(trainer)";
thread_local const std::string* active_owner = &no_owner;
thread_local MemoryPhase active_phase = MemoryPhase::setup;
}  // namespace

std::uint64_t MemoryLedger::allocate(MemoryCategory c, std::size_t bytes) {
  if (bytes > std::numeric_limits<std::size_t>::max() - current_total_)
    throw SizeError("the buffers alive at once would exceed 2^64 bytes");
  current_[index(c)] += bytes;
  current_total_ += bytes;
  update_peaks();
  ++buffers_;
  if (recording_) record(MemoryEvent::allocate, c, c, buffers_, bytes);
  return buffers_;
}

void MemoryLedger::release(MemoryCategory c, std::size_t bytes, std::uint64_t buffer) {
  if (current_[index(c)] < bytes) throw std::logic_error("memory ledger: release of more bytes than allocated");
  current_[index(c)] -= bytes;
  current_total_ -= bytes;
  if (recording_) record(MemoryEvent::release, c, c, buffer, bytes);
}

void MemoryLedger::move(MemoryCategory from, MemoryCategory to, std::size_t bytes, std::uint64_t buffer) {
  if (from == to) return;
  if (current_[index(from)] < bytes) throw std::logic_error("memory ledger: move of more bytes than allocated");
  current_[index(from)] -= bytes;
  current_[index(to)] += bytes;
  update_peaks();
  if (recording_) record(MemoryEvent::move, to, from, buffer, bytes);
}

void MemoryLedger::record_timeline(bool on) {
  if (on && !recording_ && (current_total_ != 0 || buffers_ != 0))
    throw std::logic_error("memory ledger: a timeline starts on an empty ledger that has seen no buffer");
  recording_ = on;
}

void MemoryLedger::record(MemoryEvent::Kind kind, MemoryCategory category, MemoryCategory from, std::uint64_t buffer,
                          std::size_t bytes) {
  const auto [it, fresh] = owner_index_.try_emplace(*active_owner, static_cast<std::uint32_t>(owners_.size()));
  if (fresh) owners_.push_back(*active_owner);
  events_.push_back({kind, category, from, active_phase, it->second, buffer, bytes});
}

MemoryOwner::MemoryOwner(const std::string& owner) : previous_(active_owner) { active_owner = &owner; }
MemoryOwner::~MemoryOwner() { active_owner = previous_; }
MemoryPhaseScope::MemoryPhaseScope(MemoryPhase phase) : previous_(active_phase) { active_phase = phase; }
MemoryPhaseScope::~MemoryPhaseScope() { active_phase = previous_; }
MemoryPhase current_memory_phase() { return active_phase; }

void MemoryLedger::update_peaks() {
  for (std::size_t i = 0; i < memory_category_count; ++i) peak_[i] = std::max(peak_[i], current_[i]);
  if (current_total_ > peak_total_) {
    peak_total_ = current_total_;
    at_total_peak_ = current_;
  }
}

void MemoryLedger::reset_peaks() {
  peaks_reset_at_ = events_.size();
  peak_ = current_;
  peak_total_ = current_total_;
  at_total_peak_ = current_;
}

MemoryLedger* MemoryLedger::active() { return active_ledger; }

MemoryLedger::Scope::Scope(MemoryLedger& ledger) : previous_(active_ledger) { active_ledger = &ledger; }
MemoryLedger::Scope::~Scope() { active_ledger = previous_; }

void keep_freed_memory_in_process() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value on 64-bit
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

void reset_process_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

std::size_t process_peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      std::size_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

}  // namespace lowmem
