#pragma once
// A run's state saved in flight (train.checkpoint_every): named blocks of bytes (tensor/state_archive.hpp) and
// string attributes saying what wrote them (config, binary, thread count), as one HDF5 file written beside its
// name and renamed into place, so a kill at any moment leaves the previous state or the new one, whole.
// Layout: root attributes format = "lowmem state 1" and the given ones; /names (variable-length strings) and
// /blocks/<k> (uint8) holding block names[k].
#include <map>
#include <string>
#include <vector>

namespace lowmem {

struct SavedState {
  std::map<std::string, std::string> attributes;
  std::map<std::string, std::vector<unsigned char>> blocks;
};

// Writes `state` to `path`, creating its directory if missing. Throws Error naming the file if it cannot.
void write_state_file(const std::string& path, const SavedState& state);
// Reads a file write_state_file wrote. Throws Error naming the file if it is missing, corrupt or another kind of file.
SavedState read_state_file(const std::string& path);

}  // namespace lowmem
