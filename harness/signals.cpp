// The stop flag of a sweep and the Ctrl-C (SIGINT) / SIGTERM handlers that set it (see signals.hpp).
#include "signals.hpp"

namespace lowmem {

std::atomic<bool> stop_requested{false};
extern "C" void request_stop(int signal) {
  stop_requested = true;
  std::signal(signal, SIG_DFL);
}

StopSignals::StopSignals() {
  stop_requested = false;
  struct sigaction stop {};
  stop.sa_handler = request_stop;
  sigemptyset(&stop.sa_mask);
  for (int k = 0; k < 2; ++k) {
    sigaction(signals[k], nullptr, &previous[k]);
    if (previous[k].sa_handler != SIG_IGN) sigaction(signals[k], &stop, nullptr);
  }
}
StopSignals::~StopSignals() {
  for (int k = 0; k < 2; ++k) sigaction(signals[k], &previous[k], nullptr);
}

}  // namespace lowmem
