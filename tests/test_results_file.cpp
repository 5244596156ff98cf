// The HDF5 results file: round trip, /summary, replacement, output-path choice, bad files and the text table.
#include "io/results_file.hpp"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>

#include "numerics/error.hpp"

namespace fs = std::filesystem;
using lowmem::RunRecord;

namespace {

// A fresh directory per test, so tests can run in parallel (ctest -j).
class ResultsFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "lowmem_results_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir = tmpl;
  }
  void TearDown() override {
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add);
    fs::remove_all(dir);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
  fs::path dir;
};

RunRecord make_run(const std::string& id, const std::string& precision, double loss) {
  RunRecord r;
  r.run_id = id;
  r.config_json = R"({"precision":")" + precision + R"(","seed":0})";
  r.status = "complete";
  r.labels = {{"study", "train"}, {"precision", precision}};
  r.scalars = {{"wall_seconds", 1.5}, {"final_train_loss", loss}};
  r.arrays["curves/train_loss"] = {{2.3, 1.1, loss}, {}};
  return r;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `f`, expects lowmem::Error, returns its message.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const lowmem::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected lowmem::Error";
  return "";
}

}  // namespace

TEST_F(ResultsFile, RoundTripKeepsEveryField) {
  RunRecord r = make_run("cnn-f32-s0", "f32", 0.25);
  r.message = "";
  r.scalars["peak_bytes"] = 123456789;
  r.scalars["nan_scalar"] = std::nan("");
  r.arrays["curves/step"] = {{0, 1, 2}, {}};
  r.arrays["layers/3/grad_weight"] = {{1, 2, 3, 4, 5, 6}, {2, 3}};
  std::vector<double> w(2 * 1 * 2 * 2);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.5 * static_cast<double>(i) - 1e-300;
  r.arrays["layers/0/weight"] = {w, {2, 1, 2, 2}};
  r.string_arrays["memory/categories"] = {"weights", "activations", "gradients"};
  r.string_arrays["empty_names"] = {};
  r.attributes = {{"git_commit", "abc123"}, {"host", "node-ü"}};
  r.integers = {{"threads", 2}, {"sweep_index", std::int64_t{1} << 60}};
  const std::string path = file("r.h5");
  lowmem::append_run(path, r);

  const RunRecord back = lowmem::read_run(path, "cnn-f32-s0");
  EXPECT_EQ(back.run_id, r.run_id);
  EXPECT_EQ(back.config_json, r.config_json);
  EXPECT_EQ(back.status, "complete");
  EXPECT_EQ(back.message, "");
  EXPECT_EQ(back.labels, r.labels);
  EXPECT_EQ(back.attributes, r.attributes);
  EXPECT_EQ(back.integers, r.integers);  // int64, exactly
  ASSERT_EQ(back.scalars.size(), 4u);
  EXPECT_EQ(back.scalars.at("peak_bytes"), 123456789.0);
  EXPECT_EQ(back.scalars.at("final_train_loss"), 0.25);
  EXPECT_TRUE(std::isnan(back.scalars.at("nan_scalar")));
  EXPECT_EQ(back.string_arrays, r.string_arrays);
  ASSERT_EQ(back.arrays.size(), 4u);
  EXPECT_EQ(back.arrays.at("curves/train_loss").values, (std::vector<double>{2.3, 1.1, 0.25}));
  EXPECT_EQ(back.arrays.at("curves/train_loss").shape, (std::vector<std::uint64_t>{3}));  // filled in on read
  EXPECT_EQ(back.arrays.at("layers/3/grad_weight").values, r.arrays["layers/3/grad_weight"].values);
  EXPECT_EQ(back.arrays.at("layers/3/grad_weight").shape, (std::vector<std::uint64_t>{2, 3}));
  EXPECT_EQ(back.arrays.at("layers/0/weight").values, w);  // bit exact, including the subnormal-ish offsets
  EXPECT_EQ(back.arrays.at("layers/0/weight").shape, (std::vector<std::uint64_t>{2, 1, 2, 2}));
  EXPECT_EQ(lowmem::list_runs(path), std::vector<std::string>{"cnn-f32-s0"});
}

TEST_F(ResultsFile, LongConfigAttributeFits) {
  // A resolved config can exceed HDF5's 64 KiB compact attribute limit.
  RunRecord r = make_run("big", "f32", 1);
  r.config_json = "{\"x\":\"" + std::string(200000, 'a') + "\"}";
  lowmem::append_run(file("big.h5"), r);
  // Enough appends that the file is edited in place and also rebuilt (which copies the big run).
  for (int i = 0; i < 6; ++i) lowmem::append_run(file("big.h5"), make_run("small" + std::to_string(i), "f16", i));
  EXPECT_EQ(lowmem::read_run(file("big.h5"), "big").config_json, r.config_json);
  EXPECT_EQ(lowmem::read_run(file("big.h5"), "small5").labels.at("precision"), "f16");
  EXPECT_EQ(lowmem::list_runs(file("big.h5")).size(), 7u);
}

TEST_F(ResultsFile, SummaryHasOneRowPerRunInOrderWithNaNForMissing) {
  const std::string path = file("s.h5");
  RunRecord a = make_run("zeta", "f32", 0.5);
  RunRecord b = make_run("alpha", "bf16", 1234567.0);
  b.scalars.erase("wall_seconds");
  b.scalars["test_accuracy"] = 0.875;
  b.status = "diverged";
  b.message = "loss is NaN at step 12";
  RunRecord c = make_run("mid", "f16", 2);
  c.labels.erase("precision");
  c.labels["model"] = "cnn";
  for (const auto& r : {a, b, c}) lowmem::append_run(path, r);

  const auto t = lowmem::read_summary(path);
  EXPECT_EQ(t.columns, (std::vector<std::string>{"run_id", "status", "message", "model", "precision", "study",
                                                  "final_train_loss", "test_accuracy", "wall_seconds"}));
  ASSERT_EQ(t.rows.size(), 3u);  // creation order, not name order
  EXPECT_EQ(t.rows[0], (std::vector<std::string>{"zeta", "complete", "", "", "f32", "train", "0.5", "-", "1.5"}));
  EXPECT_EQ(t.rows[1], (std::vector<std::string>{"alpha", "diverged", "loss is NaN at step 12", "", "bf16", "train",
                                                  "1234567", "0.875", "-"}));
  EXPECT_EQ(t.rows[2], (std::vector<std::string>{"mid", "complete", "", "cnn", "", "train", "2", "-", "1.5"}));
  EXPECT_EQ(lowmem::list_runs(path), (std::vector<std::string>{"zeta", "alpha", "mid"}));
}

TEST_F(ResultsFile, SameRunIdReplacesTheRunInPlace) {
  const std::string path = file("rep.h5");
  RunRecord first = make_run("r1", "f32", 0.9);
  first.arrays["old/only"] = {{1, 2}, {}};
  lowmem::append_run(path, first);
  lowmem::append_run(path, make_run("r2", "f16", 0.8));
  RunRecord again = make_run("r1", "f32", 0.1);
  again.status = "failed";
  again.message = "out of memory";
  lowmem::append_run(path, again);

  EXPECT_EQ(lowmem::list_runs(path), (std::vector<std::string>{"r1", "r2"}));  // keeps its row
  const RunRecord back = lowmem::read_run(path, "r1");
  EXPECT_EQ(back.status, "failed");
  EXPECT_EQ(back.message, "out of memory");
  EXPECT_EQ(back.scalars.at("final_train_loss"), 0.1);
  EXPECT_EQ(back.arrays.count("old/only"), 0u);
  const auto t = lowmem::read_summary(path);
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.rows[0][0], "r1");
  EXPECT_EQ(t.rows[0][1], "failed");
  EXPECT_EQ(t.rows[1][0], "r2");
}

TEST_F(ResultsFile, RepeatedAppendsDoNotGrowTheFile) {
  // Each append rewrites /summary, and HDF5 1.10 loses some space on every reopening: the periodic compaction
  // must keep a file whose content does not change from growing.
  const std::string path = file("grow.h5");
  for (int i = 0; i < 10; ++i) lowmem::append_run(path, make_run("warm" + std::to_string(i), "f32", i));
  std::uintmax_t largest_first = 0, largest_second = 0;
  for (int i = 0; i < 80; ++i) {
    lowmem::append_run(path, make_run("warm" + std::to_string(i % 10), "f32", i));
    (i < 40 ? largest_first : largest_second) = std::max(i < 40 ? largest_first : largest_second, fs::file_size(path));
  }
  EXPECT_LE(largest_second, largest_first) << "replacing runs must not grow the file";
  const auto t = lowmem::read_summary(path);
  ASSERT_EQ(t.rows.size(), 10u);
  EXPECT_EQ(t.rows[9][0], "warm9");
  EXPECT_EQ(lowmem::read_run(path, "warm3").scalars.at("final_train_loss"), 73.0);
}

TEST(Units, FollowTheNameOneRule) {
  EXPECT_EQ(lowmem::unit_of("peak_bytes"), "bytes");
  EXPECT_EQ(lowmem::unit_of("at_total_peak_bytes"), "bytes");
  EXPECT_EQ(lowmem::unit_of("pixel_activation_bytes"), "bytes/pixel");
  EXPECT_EQ(lowmem::unit_of("wall_seconds"), "s");
  EXPECT_EQ(lowmem::unit_of("step_seconds"), "s");
  EXPECT_EQ(lowmem::unit_of("final_train_loss"), "");
  EXPECT_EQ(lowmem::unit_of("parameters"), "");
  EXPECT_EQ(lowmem::unit_of("bytes_per_step_ratio"), "");
}

TEST_F(ResultsFile, ChooseOutputPathNeverOverwrites) {
  const std::string requested = file("default.h5");
  auto c = lowmem::choose_output_path(requested);
  EXPECT_EQ(c.path, requested);
  EXPECT_EQ(c.note, "");
  std::ofstream(requested) << "x";
  c = lowmem::choose_output_path(requested);
  EXPECT_EQ(c.path, file("default.2.h5"));
  EXPECT_EQ(c.note, requested + " exists; writing " + file("default.2.h5") + " instead");
  std::ofstream(file("default.2.h5")) << "x";
  c = lowmem::choose_output_path(requested);
  EXPECT_EQ(c.path, file("default.3.h5"));
  EXPECT_EQ(c.note, requested + " exists; writing " + file("default.3.h5") + " instead");
  EXPECT_EQ(slurp(requested), "x");
}

TEST_F(ResultsFile, ChooseOutputPathRejectsBadDirectories) {
  const std::string missing = file("x/run.h5");
  EXPECT_NE(error_of([&] { lowmem::choose_output_path(missing); }).find("directory " + file("x") + " does not exist"),
            std::string::npos);
  fs::create_directory(dir / "adir");
  EXPECT_NE(error_of([&] { lowmem::choose_output_path(file("adir")); }).find(file("adir") + " is a directory"),
            std::string::npos);

  // /proc passes access(W_OK) as root but refuses new files: the probe file must catch it.
  EXPECT_NE(error_of([&] { lowmem::choose_output_path("/proc/run.h5"); }).find("directory /proc is not writable"),
            std::string::npos);

  fs::create_directory(dir / "ro");
  fs::permissions(dir / "ro", fs::perms(0555));
  if (access(file("ro").c_str(), W_OK) == 0) {
    GTEST_SKIP() << "running as root: a 0555 directory is still writable, cannot test it";
  }
  EXPECT_NE(error_of([&] { lowmem::choose_output_path(file("ro/run.h5")); }).find("directory " + file("ro") +
                                                                                  " is not writable"),
            std::string::npos);
}

TEST_F(ResultsFile, CorruptFileIsRefusedAndLeftUntouched) {
  const std::string path = file("x.h5");
  const std::string garbage = "this is not HDF5 \x01\x02\x03 at all, just bytes";
  std::ofstream(path, std::ios::binary) << garbage;
  const std::string msg = error_of([&] { lowmem::append_run(path, make_run("r", "f32", 1)); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an HDF5 file"), std::string::npos) << msg;
  EXPECT_EQ(slurp(path), garbage);
  EXPECT_NE(error_of([&] { lowmem::read_summary(path); }).find(path), std::string::npos);

  // A real HDF5 file cut short (as a crash during a plain in-place write would leave it).
  const std::string good = file("good.h5"), cut = file("cut.h5");
  lowmem::append_run(good, make_run("r", "f32", 1));
  const std::string bytes = slurp(good);
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  const std::string before = slurp(cut);
  const std::string msg2 = error_of([&] { lowmem::append_run(cut, make_run("r2", "f32", 1)); });
  EXPECT_NE(msg2.find(cut), std::string::npos) << msg2;
  EXPECT_EQ(slurp(cut), before);
  EXPECT_FALSE(fs::exists(cut + ".partial"));
}

TEST_F(ResultsFile, BadRecordsAndMissingThingsGiveErrors) {
  const std::string path = file("b.h5");
  RunRecord bad = make_run("r", "f32", 1);
  bad.arrays["w"] = {{1, 2, 3}, {2, 2}};
  EXPECT_NE(error_of([&] { lowmem::append_run(path, bad); }).find("array 'w' has 3 values but its shape holds 4"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(path));
  RunRecord clash = make_run("r", "f32", 1);
  clash.labels["status"] = "x";
  EXPECT_NE(error_of([&] { lowmem::append_run(path, clash); }).find("label name 'status' is reserved"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lowmem::read_summary(file("none.h5")); }).find("results file " + file("none.h5") +
                                                                          " does not exist"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { lowmem::append_run(file("no/r.h5"), make_run("r", "f32", 1)); }),
            "directory " + file("no") + " does not exist (for results file " + file("no/r.h5") + ")");
  lowmem::append_run(path, make_run("r", "f32", 1));
  EXPECT_NE(error_of([&] { lowmem::read_run(path, "nope"); }).find("has no run 'nope'; runs: r"), std::string::npos);
}

TEST_F(ResultsFile, OtherHdf5FileIsRefused) {
  const std::string path = file("other.h5");
  const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Gclose(H5Gcreate2(f, "images", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  H5Fclose(f);
  const std::string before = slurp(path);
  EXPECT_EQ(error_of([&] { lowmem::append_run(path, make_run("r", "f32", 1)); }),
            path + " has no /runs group; expected a lowmem results file");
  EXPECT_EQ(slurp(path), before);
}

TEST_F(ResultsFile, H5dumpReadsTheFile) {
  const std::string path = file("dump.h5");
  RunRecord r = make_run("r", "f32", 1);
  r.string_arrays["memory/categories"] = {"weights"};
  lowmem::append_run(path, r);
  lowmem::append_run(path, make_run("r2", "bf16", 2));
  EXPECT_EQ(std::system(("h5dump -H '" + path + "' > /dev/null").c_str()), 0);
  EXPECT_EQ(std::system(("h5dump -d /summary '" + path + "' | grep -q '\"bf16\"'").c_str()), 0);
}

TEST_F(ResultsFile, FormatTableChoosesColumnsAndRejectsUnknownOnes) {
  lowmem::SummaryTable t;
  t.columns = {"run_id", "status", "message", "precision", "study", "test_accuracy", "wall_seconds"};
  t.rows = {{"a", "complete", "", "f32", "train", "0.9", "12.5"},
            {"long-run-id", "failed", "bad\nthing", "bf16", "train", "-", "3"}};
  EXPECT_EQ(lowmem::format_table(t, {"precision", "run_id", "wall_seconds"}),
            "precision  run_id       wall_seconds\n"
            "f32        a                    12.5\n"
            "bf16       long-run-id             3\n");
  // Default: the standard columns first (those present), then the rest in table order; newlines flattened.
  EXPECT_EQ(lowmem::format_table(t, {}),
            "run_id       study  precision  status    wall_seconds  test_accuracy  message\n"
            "a            train  f32        complete          12.5            0.9\n"
            "long-run-id  train  bf16       failed               3              -  bad thing\n");
  const std::string msg = error_of([&] { lowmem::format_table(t, {"run_id", "accuracy"}); });
  EXPECT_EQ(msg, "unknown column 'accuracy'; valid columns: run_id, status, message, precision, study, "
                 "test_accuracy, wall_seconds");
}

// ---- ResultsWriter: commits as pending segments, read as one set with the file, folded in ---------------------

namespace {

std::vector<std::string> column(const lowmem::SummaryTable& t, const std::string& name) {
  const auto k = static_cast<std::size_t>(std::find(t.columns.begin(), t.columns.end(), name) - t.columns.begin());
  std::vector<std::string> cells;
  for (const auto& row : t.rows) cells.push_back(k < row.size() ? row[k] : "<missing column>");
  return cells;
}

std::size_t pending_files(const std::string& path) {
  std::error_code ec;
  std::size_t n = 0;
  for (const auto& entry : fs::directory_iterator(path + ".pending", ec)) n += entry.is_regular_file() ? 1 : 0;
  return n;
}

}  // namespace

TEST_F(ResultsFile, WriterCommitsAreReadAsOneSetAndFoldedIntoTheFile) {
  const std::string path = file("w.h5"), whole = file("whole.h5");
  std::vector<RunRecord> runs;
  for (int i = 0; i < 12; ++i) runs.push_back(make_run("run" + std::to_string(i), i % 2 ? "bf16" : "f32", i));
  runs[7].labels["extra_label"] = "only here";  // a column only a pending run has
  runs[7].scalars["extra_scalar"] = 7.5;
  lowmem::ResultsWriter writer(path, {{"sweep_id", "abc"}});
  for (const RunRecord& r : runs) writer.append(r);
  ASSERT_GT(writer.pending(), 0u) << "the last commits are pending segments";
  EXPECT_EQ(pending_files(path), writer.pending());
  lowmem::append_runs(whole, runs, {{"sweep_id", "abc"}});  // the same runs in one rewrite: the reference

  const auto expected = lowmem::read_summary(whole, true);
  const auto pending = lowmem::read_summary(path, true);
  EXPECT_EQ(pending.columns, expected.columns);
  EXPECT_EQ(pending.rows, expected.rows);
  EXPECT_EQ(lowmem::list_runs(path), lowmem::list_runs(whole));
  EXPECT_EQ(lowmem::read_run(path, "run11").arrays.at("curves/train_loss").values, (std::vector<double>{2.3, 1.1, 11}));
  EXPECT_EQ(lowmem::read_run(path, "run7").labels.at("extra_label"), "only here");
  EXPECT_EQ(lowmem::read_file_attributes(path).at("sweep_id"), "abc");

  writer.fold();
  EXPECT_EQ(writer.pending(), 0u);
  EXPECT_FALSE(fs::exists(path + ".pending")) << "an empty pending directory is removed";
  const auto folded = lowmem::read_summary(path, true);
  EXPECT_EQ(folded.columns, expected.columns);
  EXPECT_EQ(folded.rows, expected.rows);
  EXPECT_EQ(std::system(("h5dump -H '" + path + "' > /dev/null").c_str()), 0);
}

TEST_F(ResultsFile, WriterReplacesARunInItsRowWhetherPendingOrFolded) {
  const std::string path = file("r.h5");
  {
    lowmem::ResultsWriter writer(path);
    for (const char* id : {"a", "b", "c"}) writer.append(make_run(id, "f32", 1));
    writer.fold();
    writer.append(make_run("d", "f32", 1));
    writer.append(make_run("b", "f16", 2));  // folded run, replaced by a pending one
    writer.append(make_run("d", "bf16", 3));  // pending run, replaced by a later pending one
    const auto t = lowmem::read_summary(path);
    EXPECT_EQ(column(t, "run_id"), (std::vector<std::string>{"a", "b", "c", "d"}));
    EXPECT_EQ(column(t, "precision"), (std::vector<std::string>{"f32", "f16", "f32", "bf16"}));
    EXPECT_EQ(lowmem::read_run(path, "d").scalars.at("final_train_loss"), 3.0);
  }  // no fold: a new writer (a resumed sweep) picks the pending runs up
  lowmem::ResultsWriter resumed(path);
  EXPECT_EQ(resumed.pending(), 3u);
  resumed.append(make_run("e", "f32", 4));
  resumed.fold();
  const auto t = lowmem::read_summary(path);
  EXPECT_EQ(column(t, "run_id"), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(column(t, "precision"), (std::vector<std::string>{"f32", "f16", "f32", "bf16", "f32"}));
  EXPECT_EQ(column(t, "final_train_loss"), (std::vector<std::string>{"1", "2", "1", "3", "4"}));
}

TEST_F(ResultsFile, SegmentsLeftBehindAreNotRead) {
  const std::string path = file("s.h5"), other = file("other.h5");
  {
    lowmem::ResultsWriter writer(path), another(other);
    for (const char* id : {"a", "b", "c", "d"}) writer.append(make_run(id, "f32", 1)), another.append(make_run(id, "f16", 9));
    ASSERT_GT(another.pending(), 0u);
  }
  const auto before = lowmem::read_summary(path, true);
  // What a killed writer leaves, and what may end up under the directory otherwise: a segment of another file
  // (another file_id) numbered above this file's, one already folded in (numbered at or below folded_through),
  // a temporary file, and an unrelated name.
  fs::create_directories(path + ".pending");
  fs::copy_file(other + ".pending/" + fs::path(*fs::directory_iterator(other + ".pending")).filename().string(),
                path + ".pending/00000900.h5");
  lowmem::append_run(file("t.h5"), make_run("t", "f32", 5));
  fs::copy_file(file("t.h5"), path + ".pending/00000000.h5");
  std::ofstream(path + ".pending/.00000901.h5.partial-123") << "half";
  std::ofstream(path + ".pending/notes.txt") << "x";
  EXPECT_EQ(lowmem::read_summary(path, true).rows, before.rows);
  EXPECT_EQ(lowmem::list_runs(path), (std::vector<std::string>{"a", "b", "c", "d"}));
  lowmem::ResultsWriter cleaner(path);  // a new writer removes them all, and never reuses a number
  EXPECT_FALSE(fs::exists(path + ".pending/00000900.h5"));
  EXPECT_FALSE(fs::exists(path + ".pending/00000000.h5"));
  EXPECT_FALSE(fs::exists(path + ".pending/.00000901.h5.partial-123"));
  EXPECT_FALSE(fs::exists(path + ".pending/notes.txt"));
  cleaner.append(make_run("e", "bf16", 2));
  EXPECT_EQ(lowmem::list_runs(path), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
}

TEST_F(ResultsFile, CorruptSegmentIsNamed) {
  const std::string path = file("c.h5");
  lowmem::ResultsWriter writer(path);
  for (const char* id : {"a", "b", "c"}) writer.append(make_run(id, "f32", 1));
  ASSERT_GT(writer.pending(), 0u);
  const fs::path segment = *fs::directory_iterator(path + ".pending");
  const std::string bytes = slurp(segment.string());
  std::ofstream(segment, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 3);
  const std::string msg = error_of([&] { lowmem::read_summary(path); });
  EXPECT_NE(msg.find(segment.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
}

TEST_F(ResultsFile, WriterBytesStayWithinASmallMultipleOfTheFile) {
  // Folding when the pending bytes outgrow 3x the file: each fold at least quadruples the file, so the rewrites
  // sum to about 4/3 of the final size, and the segments add about 1.3x (a one-run file is larger than a run's
  // share of a big one). Guards the geometric folding, not the speed (that is bench/bench_results.cpp).
  // The runs are the size of a small real run's (bench/bench_results.cpp): a 1.9 KB config, provenance strings.
  const std::string path = file("b.h5");
  lowmem::ResultsWriter writer(path);
  for (int i = 0; i < 300; ++i) {
    RunRecord r = make_run("run" + std::to_string(i), "f32", i);
    r.config_json = std::string(R"({"padding":")") + std::string(1900, 'x') + R"("})";
    for (int a = 0; a < 19; ++a) r.attributes["provenance" + std::to_string(a)] = "a value of some twenty bytes";
    for (int a = 0; a < 12; ++a) r.scalars["scalar" + std::to_string(a)] = a;
    for (int c = 0; c < 8; ++c) r.arrays["curves/c" + std::to_string(c)] = {{0.5}, {}};
    writer.append(r);
  }
  writer.fold();
  const auto final_size = static_cast<double>(fs::file_size(path));
  EXPECT_LT(static_cast<double>(writer.bytes_written()), 3.5 * final_size);
  EXPECT_EQ(lowmem::list_runs(path).size(), 300u);
}

TEST_F(ResultsFile, KilledWritersLeaveEveryCommittedRunReadable) {
  // A child process commits runs as fast as it can and reports each commit on a pipe; it is SIGKILLed a random
  // delay after its first commit (so that every round commits something however slow the build: sanitizers, a
  // loaded machine), 25 times in a row, each child taking over what the last one left (as a resumed sweep does).
  // After every kill, each run the children reported is read back whole, and nothing else is there but at most
  // the run in flight.
  const std::string path = file("k.h5");
  std::mt19937 random(12345);
  int committed = 0;
  for (int round = 0; round < 25; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      close(fds[0]);
      lowmem::ResultsWriter writer(path);
      for (int k = committed;; ++k) {
        writer.append(make_run("run" + std::to_string(k), "f32", k));
        if (write(fds[1], &k, sizeof k) != sizeof k) _exit(1);
      }
    }
    close(fds[1]);
    int k = -1, last = committed - 1;
    const bool first = read(fds[0], &k, sizeof k) == sizeof k;  // blocks until the child's first commit
    if (first) last = k;
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(2000, 60000)(random)));
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(first) << "round " << round << ": the child ended before its first commit";
    while (read(fds[0], &k, sizeof k) == sizeof k) last = k;
    close(fds[0]);
    const auto ids = lowmem::list_runs(path);
    ASSERT_GE(static_cast<int>(ids.size()), last + 1) << "round " << round;
    ASSERT_LE(static_cast<int>(ids.size()), last + 2) << "round " << round;
    for (int i = 0; i < static_cast<int>(ids.size()); ++i) {
      ASSERT_EQ(ids[static_cast<std::size_t>(i)], "run" + std::to_string(i));
      if (i >= committed - 1) {
        const RunRecord back = lowmem::read_run(path, ids[static_cast<std::size_t>(i)]);
        ASSERT_EQ(back.scalars.at("final_train_loss"), i);
        ASSERT_EQ(back.arrays.at("curves/train_loss").values.back(), i);
      }
    }
    ASSERT_EQ(lowmem::read_summary(path).rows.size(), ids.size());
    committed = static_cast<int>(ids.size());
  }
  EXPECT_GE(committed, 25) << "every child committed a run before its kill";
  lowmem::ResultsWriter last(path);
  last.fold();
  EXPECT_EQ(lowmem::list_runs(path).size(), static_cast<std::size_t>(committed));
  EXPECT_EQ(std::system(("h5dump -H '" + path + "' > /dev/null").c_str()), 0);
}
