#pragma once
// Pending segments (see results_file.hpp): the runs a sweep committed since its results file was last rewritten,
// one small results file per commit in "<file>.pending/<8-digit number>.h5". Readers see the main file and then
// its segments, in order, as one set of runs. Internal to lib/io: only lib/io/*.cpp include it.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/hdf5_util.hpp"

namespace lowmem::io_detail {

// Root attributes of the main file: a random token its segments carry too (a segment left by another file of
// the same name is not read), and the number of the last segment folded into it.
constexpr const char* kFileIdAttr = "file_id";
constexpr const char* kFoldedAttr = "folded_through";
// Root attribute of a segment: its number.
constexpr const char* kSegmentAttr = "segment";

std::string pending_dir(const std::string& path);
std::string segment_path(const std::string& path, std::int64_t number);
// The numbers of the complete segments in the pending directory ("<8 digits>.h5"), ascending; none if it is
// missing.
std::vector<std::int64_t> segment_numbers(const std::string& path);
// A segment's number from its file name, or -1 if the name is not a complete segment's.
std::int64_t segment_number(const std::string& file_name);

// The segments readers include: numbered above main's folded_through and carrying main's file_id. f(segment)
// sees each opened read-only, one at a time (a killed sweep may leave thousands, more than a process may hold
// open), in order, or newest first; f returns false to stop. One that cannot be opened is an InFileError naming it.
struct Segment {
  std::int64_t number;
  std::string path;
  H5::H5File file;
};
void for_each_segment(const std::string& path, const H5::H5File& main, const std::function<bool(const Segment&)>& f,
                      bool newest_first = false);

}  // namespace lowmem::io_detail
