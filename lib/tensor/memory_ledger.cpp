#include "tensor/memory_ledger.hpp"

#include <malloc.h>

#include <algorithm>
#include <fstream>
#include <stdexcept>

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

namespace {
thread_local MemoryLedger* active_ledger = nullptr;
}

void MemoryLedger::allocate(MemoryCategory c, std::size_t bytes) {
  current_[index(c)] += bytes;
  current_total_ += bytes;
  update_peaks();
}

void MemoryLedger::release(MemoryCategory c, std::size_t bytes) {
  if (current_[index(c)] < bytes) throw std::logic_error("memory ledger: release of more bytes than allocated");
  current_[index(c)] -= bytes;
  current_total_ -= bytes;
}

void MemoryLedger::move(MemoryCategory from, MemoryCategory to, std::size_t bytes) {
  if (from == to) return;
  if (current_[index(from)] < bytes) throw std::logic_error("memory ledger: move of more bytes than allocated");
  current_[index(from)] -= bytes;
  current_[index(to)] += bytes;
  update_peaks();
}

void MemoryLedger::update_peaks() {
  for (std::size_t i = 0; i < memory_category_count; ++i) peak_[i] = std::max(peak_[i], current_[i]);
  if (current_total_ > peak_total_) {
    peak_total_ = current_total_;
    at_total_peak_ = current_;
  }
}

void MemoryLedger::reset_peaks() {
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
