"""Bit-for-bit guard for restructurings: runs tests/golden/sweep.json (140 small runs: every technique alone and in
combination, every precision, the train, gradient and reconstruction studies) and compares every number of the
results file (losses, learning rates, accuracies, gradient errors, SNRs, peaks per category, predicted peaks, run
ids, labels, the effective configs) and its layout (groups, datasets, attribute names) with
tests/golden/expected.json, recorded by this script's --record before the code was restructured.

Only what differs from run to run by nature is left out: timings, RSS, start/end times, host, git state.
The numbers are those of one build at --threads 1. The default build (AVX2 baseline, matrix kernels chosen at
run time with identical results) gives them on every CPU with AVX2; with LOWMEM_ISA set (ctest's test_golden_ISA
runs) the sweep must give the same bits on that choice of kernels. A binary compiled for other instruction sets
(LOWMEM_NATIVE) may round differently, so then the comparison is skipped (and says so).

Numbers and memory figures are compared apart. A change meant to lower peaks (lean buffers) must keep every
number; once `plan` = `run` is shown for its new peaks, --record-memory re-records the memory figures alone, and
refuses to if any number differs.

usage: test_golden.py LOWMEM_BINARY                    compare
       test_golden.py LOWMEM_BINARY --record           write tests/golden/expected.json (only before a restructuring)
       test_golden.py LOWMEM_BINARY --record-memory    re-record the memory figures, keeping the numbers
"""
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "golden" / "sweep.json"
EXPECTED = HERE / "golden" / "expected.json"
VOLATILE = {"wall_seconds", "step_seconds", "rss_peak_bytes", "start_time", "end_time", "host", "cpu_model", "gemm_isa",
            "git_commit",
            "git_dirty", "curves/step_seconds"}
# The writer's bookkeeping on the file's root: a random token, and counts that follow when the pending runs were
# folded in (which depends on file sizes, hence on the HDF5 version), not the results.
BOOKKEEPING = {"file_id", "folded_through", "appends_since_compaction"}
def isa(figures):
    """The instruction sets the binary was compiled for (every run records them): the default build's AVX2
    baseline gives the same numbers on every CPU that has it (the matrix kernels that choose AVX-512 at run time
    compute the same bits); a -march=native build (LOWMEM_NATIVE) gives other low bits on other CPUs."""
    return sorted({run["attributes"]["isa"] for run in figures["runs"].values()})


def plain(v):
    """An HDF5 value as JSON: strings decoded, floats exact (repr round-trips), NaN/Inf as strings."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and len(v) > 120:  # effective configs: their hash keeps the fixture small
        return "sha256:" + hashlib.sha256(v.encode()).hexdigest()
    if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size > 16:
        # large arrays (inputs, weights, gradients dumped by the gradient study) by the hash of their float64 bits
        return {"n": int(v.size), "head": [plain(x) for x in v.ravel()[:4].tolist()],
                "sha256": hashlib.sha256(np.ascontiguousarray(v, dtype="<f8").tobytes()).hexdigest()}
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def figures(h5):
    """Every number and name of a results file, except the volatile ones, as a JSON-able dict."""
    out = {}
    with h5py.File(h5, "r") as f:
        out["file_attributes"] = {k: plain(v) for k, v in sorted(f.attrs.items()) if k not in BOOKKEEPING}
        summary = f["summary"]
        names = [n for n in summary.dtype.names if n not in VOLATILE]
        out["summary_columns"] = list(summary.dtype.names)
        out["summary"] = [{n: plain(row[n]) for n in names} for row in summary[()]]
        runs = {}
        for run_id, g in f["runs"].items():
            run = {"attributes": {k: plain(v) for k, v in sorted(g.attrs.items()) if k not in VOLATILE}}
            layout, data = [], {}

            def visit(name, obj, layout=layout, data=data):
                layout.append(name + ("/" if isinstance(obj, h5py.Group) else ""))
                if isinstance(obj, h5py.Dataset) and name not in VOLATILE:
                    data[name] = plain(obj[()])
            g.visititems(visit)
            run["layout"] = sorted(layout)
            run["data"] = data
            runs[run_id] = run
        out["runs"] = runs
    return out


def is_memory(key):
    """Memory figures: byte counts, pixel-wise costs, the memory/ datasets (peaks per category, timelines), and the
    recomputation count, which a checkpoint budget schedule chooses from the step's memory (every loss and
    gradient stays exact whatever it recomputes, and those are compared as numbers)."""
    return (key.endswith("_bytes") or key.startswith("pixel_") or key.startswith("memory/")
            or key == "recomputed_evaluations_per_step")


def split(figs):
    """(numbers, memory): the same structure, each holding only its kind of key."""
    numbers = {"file_attributes": figs["file_attributes"], "summary_columns": figs["summary_columns"],
               "summary": [], "runs": {}}
    memory = {"summary": [], "runs": {}}
    for row in figs["summary"]:
        numbers["summary"].append({k: v for k, v in row.items() if not is_memory(k)})
        memory["summary"].append({k: v for k, v in row.items() if is_memory(k)})
    for run_id, run in figs["runs"].items():
        numbers["runs"][run_id] = {"layout": run["layout"],
                                   "attributes": {k: v for k, v in run["attributes"].items() if not is_memory(k)},
                                   "data": {k: v for k, v in run["data"].items() if not is_memory(k)}}
        memory["runs"][run_id] = {"attributes": {k: v for k, v in run["attributes"].items() if is_memory(k)},
                                  "data": {k: v for k, v in run["data"].items() if is_memory(k)}}
    return numbers, memory


def join(numbers, memory):
    """The inverse of split."""
    figs = {"file_attributes": numbers["file_attributes"], "summary_columns": numbers["summary_columns"],
            "summary": [{**n, **m} for n, m in zip(numbers["summary"], memory["summary"])], "runs": {}}
    for run_id, run in numbers["runs"].items():
        figs["runs"][run_id] = {"layout": run["layout"],
                                "attributes": dict(sorted({**run["attributes"],
                                                           **memory["runs"][run_id]["attributes"]}.items())),
                                "data": {**run["data"], **memory["runs"][run_id]["data"]}}
    return figs


def run_sweep(binary, tmp):
    import subprocess
    out = Path(tmp) / "golden.h5"
    p = subprocess.run([binary, "run", str(CONFIG), "--out", str(out), "--threads", "1", "--quiet"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAILED: lowmem run {CONFIG} exited {p.returncode}\n{p.stderr}")
        sys.exit(1)
    return figures(out)


def differences(expected, got, where="", limit=20):
    """Paths at which two JSON values differ (at most `limit`)."""
    found = []

    def walk(a, b, path):
        if len(found) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in a or k not in b:
                    found.append(f"{path}/{k}: {'missing' if k not in b else 'new'}")
                else:
                    walk(a[k], b[k], f"{path}/{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b or type(a) is not type(b):
            found.append(f"{path}: expected {a!r}, got {b!r}")
    walk(expected, got, where)
    return found


# LOWMEM_ISA's choices and the /proc/cpuinfo flags each needs (tensor/gemm.hpp).
ISA_NEEDS = {"portable": [], "avx2": ["avx2", "fma"], "avx512": ["avx2", "fma", "avx512f"],
             "avx512_bf16": ["avx2", "fma", "avx512f", "avx512_bf16"]}


def cpu_lacks(isa):
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [f for f in ISA_NEEDS.get(isa, []) if f not in flags]


def main():
    chosen = os.environ.get("LOWMEM_ISA", "")
    if chosen and cpu_lacks(chosen):
        print(f"skipped: LOWMEM_ISA={chosen} needs {', '.join(cpu_lacks(chosen))}, which this CPU lacks")
        return 0
    binary = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else str(HERE.parent / "build" / "lowmem")
    with tempfile.TemporaryDirectory(prefix="lowmem-golden-") as tmp:
        got = run_sweep(binary, tmp)
    if "--record" in sys.argv:
        EXPECTED.write_text(json.dumps({"isa": isa(got), "threads": 1, "figures": got}, sort_keys=True) + "\n")
        print(f"recorded {len(got['runs'])} runs into {EXPECTED}")
        return 0
    expected = json.loads(EXPECTED.read_text())
    if expected["isa"] != isa(got):
        print(f"skipped: figures recorded by a binary compiled for {expected['isa']}, this one is for {isa(got)}; "
              "code compiled for other instruction sets may round differently, so bit-for-bit equality is not expected")
        return 0
    runs = len(expected["figures"]["runs"])
    want_numbers, want_memory = split(expected["figures"])
    got_numbers, got_memory = split(got)
    diff = differences(want_numbers, got_numbers)
    if diff:
        print(f"FAILED: the golden sweep's numbers differ from those recorded ({runs} runs); first differences:")
        for d in diff:
            print("  " + d)
        return 1
    if "--record-memory" in sys.argv:
        # Only peaks that `plan` predicted to the byte are recorded; the report says which peaks moved.
        wrong = [r for r, run in got["runs"].items()
                 if run["attributes"].get("predicted_peak_bytes") != run["attributes"].get("peak_bytes")]
        if wrong:
            print(f"FAILED: plan != run for {len(wrong)} runs (e.g. {wrong[0]}); memory figures not recorded")
            return 1
        before = {r: run["attributes"]["peak_bytes"] for r, run in expected["figures"]["runs"].items()}
        after = {r: run["attributes"]["peak_bytes"] for r, run in got["runs"].items()}
        fell = sum(after[r] < before[r] for r in after)
        rose = [r for r in after if after[r] > before[r]]
        print(f"plan = run for all {runs} runs; peaks: {fell} fell, {len(rose)} rose"
              + (f" ({', '.join(f'{r}: {before[r]:.0f} -> {after[r]:.0f}' for r in rose)})" if rose else ""))
        EXPECTED.write_text(json.dumps({"isa": isa(got), "threads": 1, "figures": join(want_numbers, got_memory)},
                                       sort_keys=True) + "\n")
        print(f"numbers of all {runs} runs unchanged; memory figures re-recorded into {EXPECTED}")
        return 0
    diff = differences(want_memory, got_memory)
    if diff:
        print(f"FAILED: the golden sweep's memory figures differ from those recorded ({runs} runs; every number is "
              "equal). If the change is meant to lower peaks, check plan = run and re-record them with "
              "--record-memory. First differences:")
        for d in diff:
            print("  " + d)
        return 1
    print(f"ok: all {runs} runs of {CONFIG.name} equal the recorded figures bit for bit "
          f"(losses, accuracies, gradient errors, SNRs, peaks per category, run ids, configs, layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
