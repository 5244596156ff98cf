#include "provenance.hpp"

#include <unistd.h>

#include <Eigen/Core>
#include <boost/version.hpp>
#include <ctime>
#include <fstream>

#include <H5public.h>

#include "build_commit.hpp"  // generated at build time (cmake/build_commit.cmake)
#include "tensor/gemm.hpp"

#ifndef LOWMEM_BUILD_TYPE
#define LOWMEM_BUILD_TYPE "unknown"
#endif

namespace lowmem {

namespace {

// The CPU's model name ("model name" in /proc/cpuinfo; "unknown" elsewhere).
std::string cpu_model() {
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      std::string name = line.substr(line.find(':') + 1);
      name.erase(0, name.find_first_not_of(" \t"));
      return name;
    }
  return "unknown";
}

// The instruction-set extensions this binary was compiled to use (the build targets the machine it is built on:
// numbers may differ between binaries built for different extensions, never between runs of one binary).
std::string compiled_isa() {
  std::string isa = "x86-64";
#ifdef __AVX2__
  isa += " avx2";
#endif
#ifdef __FMA__
  isa += " fma";
#endif
#ifdef __F16C__
  isa += " f16c";
#endif
#ifdef __AVX512F__
  isa += " avx512f";
#endif
#ifdef __AVX512BW__
  isa += " avx512bw";
#endif
#ifdef __AVX512VL__
  isa += " avx512vl";
#endif
#ifdef __AVX512BF16__
  isa += " avx512bf16";
#endif
  return isa;
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

std::map<std::string, std::string> provenance() {
  static const std::map<std::string, std::string> fixed = [] {
    std::map<std::string, std::string> p;
    // Taken when the binary was built (generated/build_commit.hpp): a binary kept while the tree moves on (a
    // long study's frozen copy) still names its own commit. git_dirty: tracked files differed from it then.
    p["git_commit"] = LOWMEM_BUILD_COMMIT;
    p["git_dirty"] = LOWMEM_BUILD_DIRTY;
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
    p["cpu_model"] = cpu_model();
    p["isa"] = compiled_isa();
    p["gemm_isa"] = to_string(gemm_isa());  // the kernels chosen at run time (tensor/gemm.hpp): speed only
    return p;
  }();
  return fixed;
}

}  // namespace lowmem
