#pragma once
// Exact memory accounting. Every tensor buffer is charged to a category when it is allocated and credited when
// it is freed; the ledger keeps current and peak bytes per category and in total. "Activation memory" in any
// report is this ledger's saved_activations peak, not an estimate.
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowmem {

enum class MemoryCategory { weights, gradients, optimizer_state, saved_activations, workspace };
inline constexpr std::size_t memory_category_count = 5;
const char* to_string(MemoryCategory c);

// What the step was doing when a buffer was allocated or released (the memory timeline).
enum class MemoryPhase : std::uint8_t { setup, forward, backward, recompute, optimizer, evaluation };
inline constexpr std::size_t memory_phase_count = 6;
const char* to_string(MemoryPhase p);

// One allocation, release or change of category of a buffer, in the order the ledger saw them.
struct MemoryEvent {
  enum Kind : std::uint8_t { allocate, release, move } kind;
  MemoryCategory category;  // the buffer's (move: its new category)
  MemoryCategory from;      // move: its old category; otherwise equal to category
  MemoryPhase phase;
  std::uint32_t owner;      // index into MemoryLedger::owners(): the layer (or trainer part) that was running
  std::uint64_t buffer;     // the buffer's id, from 1 in allocation order
  std::size_t bytes;
};

class MemoryLedger {
 public:
  // Returns the new buffer's id (what release and move name it by).
  std::uint64_t allocate(MemoryCategory c, std::size_t bytes);
  void release(MemoryCategory c, std::size_t bytes, std::uint64_t buffer = 0);
  // A buffer changes role (a forward output becomes saved for backward): moves its bytes, no new memory.
  void move(MemoryCategory from, MemoryCategory to, std::size_t bytes, std::uint64_t buffer = 0);

  std::size_t current(MemoryCategory c) const { return current_[index(c)]; }
  std::size_t peak(MemoryCategory c) const { return peak_[index(c)]; }
  std::size_t current_total() const { return current_total_; }
  std::size_t peak_total() const { return peak_total_; }
  // Peak of each category as it stood when the total peaked (the composition of the peak).
  std::size_t at_total_peak(MemoryCategory c) const { return at_total_peak_[index(c)]; }
  void reset_peaks();

  // A dry-run ledger: tensors charged to it get no values, only their bytes. Layers allocate exactly as in a
  // real step and skip the arithmetic, so a dry step measures a run's memory before the run (lowmem plan).
  void set_dry_run(bool dry) { dry_run_ = dry; }
  bool dry_run() const { return dry_run_; }

  // The memory timeline: while on, every event is recorded with the owner and phase active on this thread
  // (MemoryOwner, MemoryPhaseScope). Off by default (a run records only when asked). A timeline starts on an
  // empty ledger and, once turned off, stays off (so that replaying its events gives the ledger's totals);
  // turning it on otherwise throws std::logic_error.
  void record_timeline(bool on);
  bool recording_timeline() const { return recording_; }
  const std::vector<MemoryEvent>& events() const { return events_; }
  const std::vector<std::string>& owners() const { return owners_; }
  // Events before this index precede the last reset_peaks (setup): the peak is sought after it.
  std::size_t peaks_reset_at() const { return peaks_reset_at_; }

  // The ledger that new tensors on this thread are charged to (none: not counted). Allocate tensors outside
  // OpenMP parallel regions: worker threads have no active ledger.
  static MemoryLedger* active();
  class Scope {  // makes a ledger active for a lexical scope
   public:
    explicit Scope(MemoryLedger& ledger);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
   private:
    MemoryLedger* previous_;
  };

 private:
  static std::size_t index(MemoryCategory c) { return static_cast<std::size_t>(c); }
  void update_peaks();
  void record(MemoryEvent::Kind kind, MemoryCategory category, MemoryCategory from, std::uint64_t buffer,
              std::size_t bytes);
  std::array<std::size_t, memory_category_count> current_{}, peak_{}, at_total_peak_{};
  std::size_t current_total_ = 0, peak_total_ = 0;
  bool dry_run_ = false;
  bool recording_ = false;
  std::uint64_t buffers_ = 0;
  std::vector<MemoryEvent> events_;
  std::vector<std::string> owners_;
  std::map<std::string, std::uint32_t> owner_index_;
  std::size_t peaks_reset_at_ = 0;
};

// Who is allocating, for the timeline: a layer's label ("/model/layers/3 (conv)") or a part of the trainer
// ("batch", "loss", "optimizer"), for a lexical scope on this thread. The string must outlive the scope.
class MemoryOwner {
 public:
  explicit MemoryOwner(const std::string& owner);
  ~MemoryOwner();
  MemoryOwner(const MemoryOwner&) = delete;
  MemoryOwner& operator=(const MemoryOwner&) = delete;

 private:
  const std::string* previous_;
};
class MemoryPhaseScope {
 public:
  explicit MemoryPhaseScope(MemoryPhase phase);
  ~MemoryPhaseScope();
  MemoryPhaseScope(const MemoryPhaseScope&) = delete;
  MemoryPhaseScope& operator=(const MemoryPhaseScope&) = delete;

 private:
  MemoryPhase previous_;
};
MemoryPhase current_memory_phase();

// Keeps freed tensor memory in the process instead of returning it to the system after every step (glibc
// otherwise maps large buffers afresh each time and every step pays the page faults). Call once at start.
void keep_freed_memory_in_process();

// Peak resident set size of this process (VmHWM), in bytes: reported beside the ledger for honesty.
std::size_t process_peak_rss_bytes();
// Starts a new peak (Linux: writes 5 to /proc/self/clear_refs), so that each run of a sweep reports its own.
void reset_process_peak_rss();

}  // namespace lowmem
