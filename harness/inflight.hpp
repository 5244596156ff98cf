#pragma once
// Runs saved in flight (train.checkpoint_every), the harness's side: each such run's state is
// "<results>.inflight/<run_id>.h5", written every checkpoint_every steps (io/state_file.hpp). When the run starts
// again (run --resume after a kill or a preemption) it continues from that state if the same config, binary and
// thread count wrote it, else it starts over with a note; once the run is committed the state is removed.
#include <map>
#include <optional>
#include <string>

#include "runner.hpp"
#include "study.hpp"

namespace lowmem {

std::string inflight_dir(const std::string& results_path);

class InFlight {
 public:
  // dir: inflight_dir of the sweep's results file (a job process is given its sweep's).
  InFlight(std::string dir, const PlannedRun& run, int threads, bool quiet);
  // Sets the study options' save_state and resume_from; nothing for a run that does not save in flight.
  void attach(StudyOptions& options);

 private:
  std::string path_;
  std::map<std::string, std::string> identity_;  // what must match for a saved state to be continued
  std::optional<StateArchive> loaded_;
  bool saves_ = false;
};

// The run is committed: its saved state is removed (and the directory, once empty).
void remove_inflight_state(const std::string& dir, const std::string& run_id);

}  // namespace lowmem
