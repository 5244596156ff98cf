#include "inflight.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "io/state_file.hpp"
#include "numerics/error.hpp"
#include "provenance.hpp"

namespace lowmem {

namespace {

// FNV-1a of this program's own bytes: a binary rebuilt from other sources is another binary, even when its
// git_commit and git_dirty read the same.
std::string binary_hash() {
  static const std::string hash = [] {
    std::ifstream in("/proc/self/exe", std::ios::binary);
    std::uint64_t h = 1469598103934665603ULL;
    char buffer[1 << 16];
    while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
      for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ static_cast<unsigned char>(buffer[i])) * 1099511628211ULL;
      if (!in) break;
    }
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
    return std::string(text);
  }();
  return hash;
}

}  // namespace

std::string inflight_dir(const std::string& results_path) { return results_path + ".inflight"; }

InFlight::InFlight(std::string dir, const PlannedRun& run, int threads, bool quiet)
    : path_((std::filesystem::path(dir) / (run.id + ".h5")).string()) {
  saves_ = run.parsed.study == "train" && run.parsed.train.checkpoint_every > 0;
  if (!saves_) return;
  identity_ = {{"run_id", run.id}, {"config", run.config.dump()}, {"threads", std::to_string(threads)},
               {"binary", binary_hash()}, {"git_commit", provenance().at("git_commit")}};
  std::error_code ec;
  if (!std::filesystem::exists(path_, ec)) return;
  SavedState saved;
  try {
    saved = read_state_file(path_);
  } catch (const Error& e) {
    if (!quiet) std::cerr << "lowmem: " << e.what() << "; run " << run.id << " starts over\n";
    return;
  }
  for (const auto& [key, value] : identity_) {
    const auto it = saved.attributes.find(key);
    if (it == saved.attributes.end() || it->second != value) {
      if (!quiet)
        std::cerr << "lowmem: the state of run " << run.id << " saved in flight (" << path_ << ") was written with "
                  << "another " << key << "; the run starts over\n";
      return;
    }
  }
  loaded_.emplace(StateArchive::Mode::load);
  loaded_->blocks = std::move(saved.blocks);
  if (!quiet) std::cerr << "lowmem: run " << run.id << " continues from its state saved in flight (" << path_ << ")\n";
}

void InFlight::attach(StudyOptions& options) {
  if (!saves_) return;
  options.save_state = [this](const StateArchive& state) { write_state_file(path_, {identity_, state.blocks}); };
  if (loaded_) options.resume_from = &*loaded_;
}

void remove_inflight_state(const std::string& dir, const std::string& run_id) {
  std::error_code ec;
  std::vector<std::filesystem::path> files;  // the state, and any half-written one a kill left (".partial-<pid>")
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
    if (entry.path().filename().string().rfind(run_id + ".h5", 0) == 0) files.push_back(entry.path());
  for (const auto& f : files) std::filesystem::remove(f, ec);
  std::filesystem::remove(dir, ec);  // if empty
}

}  // namespace lowmem
