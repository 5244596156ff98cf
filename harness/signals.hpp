// Stopping a sweep: the stop flag that Ctrl-C (SIGINT) and SIGTERM set, and the handlers that set it while a
// sweep runs.
#pragma once
#include <atomic>
#include <csignal>

namespace lowmem {

// Ctrl-C (SIGINT) and SIGTERM ask the sweep to stop; the runs in flight are dropped at their next step, and a
// second signal ends the process at once (the handler restores the default). Installed without SA_RESTART, so
// that a wait for job processes returns and passes the request on to them. A signal that was ignored (a sweep
// started in the background, or under nohup) stays ignored.
extern std::atomic<bool> stop_requested;
extern "C" void request_stop(int signal);
struct Interrupted {};  // not a std::exception: nothing on the way may record it as a failed run

struct StopSignals {
  StopSignals();
  ~StopSignals();
  const int signals[2] = {SIGINT, SIGTERM};
  struct sigaction previous[2] {};
};

}  // namespace lowmem
