// One writer per results file: a sweep holds an exclusive lock on "<results>.lock" from the moment it chooses
// its results file until it ends, so a second `lowmem run` on the same file is refused at once instead of mixing
// two sweeps in one file. The lock is the kernel's (flock): a killed sweep releases it with its last breath.
#pragma once
#include <string>

namespace lowmem {

class OutputLock {
 public:
  // Throws Error, naming the holder's pid, if another process holds the lock; or if the lock file cannot be made.
  explicit OutputLock(const std::string& results_path);
  ~OutputLock();  // removes the lock file, then releases it
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

// What killed sweeps left in the results file's directory, removed: files of job processes (--jobs) whose sweep
// process is gone, and lock files nobody holds. Those of a sweep still running are left alone.
void remove_stale_job_files(const std::string& results_path);

}  // namespace lowmem
