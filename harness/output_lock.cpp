#include "output_lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <regex>

#include "numerics/error.hpp"

namespace lowmem {

namespace {

std::string holder_of(int fd) {
  char text[32] = {};
  const ssize_t n = pread(fd, text, sizeof text - 1, 0);
  return n > 0 ? std::string(text, static_cast<std::size_t>(n)) : "unknown";
}

}  // namespace

OutputLock::OutputLock(const std::string& results_path) : path_(results_path + ".lock") {
  // A holder removes the file before it lets go, so the file locked here may have been removed in between:
  // locked but no longer at path_. Then try again on the new one.
  for (;;) {
    fd_ = open(path_.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error("cannot create the lock file " + path_ + ": " + std::strerror(errno));
    if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      const std::string holder = holder_of(fd_);
      close(fd_);
      fd_ = -1;
      if (error == EWOULDBLOCK)
        throw Error(results_path + " is being written by another lowmem run (pid " + holder + ", lock " + path_ +
                    "); one sweep writes a results file at a time: wait for it to end, or choose another --out");
      throw Error("cannot lock " + path_ + ": " + std::strerror(error));
    }
    struct stat held {}, named {};
    if (fstat(fd_, &held) == 0 && stat(path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev)
      break;
    close(fd_);
  }
  // The holder's pid, for the message a second sweep prints; a failed write only makes that message vaguer.
  const std::string pid = std::to_string(getpid());
  [[maybe_unused]] const bool written = ftruncate(fd_, 0) == 0 && pwrite(fd_, pid.data(), pid.size(), 0) >= 0;
}

OutputLock::~OutputLock() {
  unlink(path_.c_str());
  close(fd_);
}

void remove_stale_job_files(const std::string& results_path) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(results_path).parent_path().empty() ? fs::path(".") : fs::path(results_path).parent_path();
  // <results file>.job-<sweep pid>-<position>.{json,h5,log} (runner.cpp names them).
  static const std::regex job_file(R"(.*\.job-([0-9]{1,9})-[0-9]+\.(json|h5|log))");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (name.size() > 8 && name.ends_with(".h5.lock")) {  // a lock nobody holds: its sweep was killed
      const int fd = open(entry.path().c_str(), O_RDWR | O_CLOEXEC);
      if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) unlink(entry.path().c_str());  // OutputLock re-checks
      if (fd >= 0) close(fd);
      continue;
    }
    if (!std::regex_match(name, m, job_file)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(m[1].str()));
    if (kill(pid, 0) != 0 && errno == ESRCH) fs::remove(entry.path(), ec);
  }
}

}  // namespace lowmem
