#include "provenance.hpp"

#include <unistd.h>

#include <Eigen/Core>
#include <array>
#include <boost/version.hpp>
#include <cstdio>
#include <ctime>

#include <H5public.h>

#ifndef LOWMEM_SOURCE_DIR
#define LOWMEM_SOURCE_DIR "."
#endif
#ifndef LOWMEM_BUILD_TYPE
#define LOWMEM_BUILD_TYPE "unknown"
#endif

namespace lowmem {

namespace {

// Output of a shell command, trailing newline removed ("" if it fails).
std::string capture(const std::string& command) {
  std::string out;
  if (FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r")) {
    std::array<char, 256> buffer{};
    while (fgets(buffer.data(), buffer.size(), pipe)) out += buffer.data();
    if (pclose(pipe) != 0) return "";
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

}  // namespace

std::string iso_time_now() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[40];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S%z", &local);
  return text;
}

std::map<std::string, std::string> provenance(int threads) {
  static const std::map<std::string, std::string> fixed = [] {
    const std::string git = "git -C '" + std::string(LOWMEM_SOURCE_DIR) + "' ";
    const std::string commit = capture(git + "rev-parse HEAD");
    std::map<std::string, std::string> p;
    p["git_commit"] = commit.empty() ? "unknown" : commit;
    p["git_dirty"] = commit.empty() ? "unknown" : (capture(git + "status --porcelain --untracked-files=no").empty() ? "false" : "true");
    p["build_type"] = LOWMEM_BUILD_TYPE;
    p["compiler"] = "g++ " __VERSION__;
    p["eigen_version"] = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                         std::to_string(EIGEN_MINOR_VERSION);
    p["boost_version"] = std::to_string(BOOST_VERSION / 100000) + "." + std::to_string(BOOST_VERSION / 100 % 1000) +
                         "." + std::to_string(BOOST_VERSION % 100);
    unsigned major = 0, minor = 0, release = 0;
    H5get_libversion(&major, &minor, &release);
    p["hdf5_version"] = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    p["host"] = host;
    return p;
  }();
  auto p = fixed;
  p["threads"] = std::to_string(threads);
  return p;
}

}  // namespace lowmem
