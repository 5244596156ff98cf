// One run in this process (a sweep with --jobs 1, and each job process): its record, and the data sets it
// loads, once per process.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "io/results_file.hpp"
#include "runner.hpp"
#include "study.hpp"

namespace lowmem {

// Data sets are loaded once per process and shared by the runs that ask for the same one.
extern std::map<std::string, std::unique_ptr<DataSplit>> data_cache;
const DataSplit& cached_data(const PlannedRun& run);

// The labels a run that failed before its study began still gets (the study sets them otherwise).
void failed_labels(const PlannedRun& run, RunRecord& record);
// The swept values as summary columns named by their paths ("train.optimizer.lr"): numbers as numbers, strings as
// they are, anything else as its JSON text. A path that names a column the study writes ("precision", "seed")
// keeps the study's. Added by the sweep as it commits a run, whichever process ran it (a job process gets the
// resolved config alone, without the sweep).
void sweep_columns(const PlannedRun& run, RunRecord& record);

// One run, in this process: its record, status "failed" with the error if it could not be done. Throws
// Interrupted on a stop request.
RunRecord execute(const PlannedRun& run, int threads, const Progress& show, const StudyOptions& options = {});

}  // namespace lowmem
