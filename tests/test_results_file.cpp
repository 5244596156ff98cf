// The HDF5 results file: round trip, /summary, replacement, output-path choice, bad files and the text table.
#include "io/results_file.hpp"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

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
  const std::string path = file("r.h5");
  lowmem::append_run(path, r);

  const RunRecord back = lowmem::read_run(path, "cnn-f32-s0");
  EXPECT_EQ(back.run_id, r.run_id);
  EXPECT_EQ(back.config_json, r.config_json);
  EXPECT_EQ(back.status, "complete");
  EXPECT_EQ(back.message, "");
  EXPECT_EQ(back.labels, r.labels);
  EXPECT_EQ(back.attributes, r.attributes);
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
