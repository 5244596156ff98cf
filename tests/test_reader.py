#!/usr/bin/env python3
"""The Python reader plots/lowmem_results.py against the files lowmem writes: every value it returns is checked
against the datasets h5py reads, with pandas and with plain numpy.

usage: test_reader.py LOWMEM_BINARY
"""
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "plots"))
from cli_helpers import *  # noqa: E402,F401,F403  lowmem, check, describe, TINY, RUN_OPTS, run_sections
import lowmem_results  # noqa: E402


def sweep(tmp, name, sweep_values, *extra):
    c = copy.deepcopy(TINY)
    c["name"] = name
    c["sweep"] = sweep_values
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps(c))
    out = tmp / f"{name}.h5"
    p = lowmem("run", cfg, "--out", out, *RUN_OPTS, *extra)
    return out if check(p.returncode == 0, f"run {name}: exit 0", describe(p)) else None


def raw_summary(path):
    with h5py.File(path, "r") as f:
        return f["summary"][()]


def check_reader(tmp):
    a = sweep(tmp, "reader-a", {"seed": [0, 1, 2], "train.optimizer.lr": [0.05, 0.1]})
    b = sweep(tmp, "reader-b", {"seed": [3]}, "--timeline")
    if not a or not b:
        return
    raw = raw_summary(a)
    modes = [False] + ([True] if lowmem_results.pandas is not None else [])
    if lowmem_results.pandas is None:
        skip("read_summary as a pandas DataFrame", "pandas is not installed")
    for use_pandas in modes:
        kind = "pandas" if use_pandas else "numpy"
        s = lowmem_results.read_summary(a, pandas=use_pandas)
        names = list(s.columns) if use_pandas else list(s.dtype.names)
        column = (lambda n: s[n].to_numpy()) if use_pandas else (lambda n: s[n])
        check(names == list(raw.dtype.names) and len(s) == len(raw),
              f"read_summary ({kind}): the summary's columns in order, one row per run", f"\n    {names}")
        check(list(column("run_id")) == [x.decode() for x in raw["run_id"]]
              and list(column("technique_label")) == ["store_all"] * 6,
              f"read_summary ({kind}): strings decoded (run_id, technique_label)")
        check(np.array_equal(column("final_train_loss").astype(float), raw["final_train_loss"])
              and sorted(set(column("train.optimizer.lr").astype(float))) == [0.05, 0.1],
              f"read_summary ({kind}): numbers bit for bit, the swept lr a numeric column")
        both = lowmem_results.read_summary([a, b], pandas=use_pandas)
        files = list(both["file"])
        lr = np.asarray(both["train.optimizer.lr"], dtype=float)
        check(len(both) == 7 and files == [str(a)] * 6 + [str(b)] and np.isnan(lr[6]) and not np.isnan(lr[:6]).any(),
              f"read_summary([a, b]) ({kind}): 7 rows, a file column, NaN where b has no lr column")
    with h5py.File(a, "r") as f:
        run_id = lowmem_results.load_runs(f)[1]["id"]
        want = {k: np.asarray(v[()], dtype=float) for k, v in f[f"runs/{run_id}/curves"].items()}
    for use_pandas in modes:
        c = lowmem_results.read_curves(a, run_id, pandas=use_pandas)
        get = (lambda n: c[n].to_numpy()) if use_pandas else (lambda n: c[n])
        accuracy = get("test_accuracy").astype(float)
        check(np.array_equal(get("step").astype(float), want["step"])
              and np.array_equal(get("train_loss").astype(float), want["train_loss"])
              and np.array_equal(accuracy[~np.isnan(accuracy)], want["test_accuracy"])
              and not np.isnan(accuracy[-1]),
              f"read_curves ({'pandas' if use_pandas else 'numpy'}): steps and losses as stored, the epoch's "
              "test accuracy at its last step")
        every = lowmem_results.read_curves(a, pandas=use_pandas)
        check(len(every) == 6 * len(want["step"]), "read_curves of every run: a row per run and step")
    # Evaluations where they happened: 20 steps over epochs of 8 (64 examples at batch 8) are evaluated after
    # steps 7, 15 and 19, the last epoch cut short.
    long_run = sweep(tmp, "reader-long", {"train.steps": [20]})
    if long_run:
        c = lowmem_results.read_curves(long_run, pandas=False)
        placed = [int(s_) for s_, e in zip(c["step"], c["epoch"]) if not np.isnan(e)]
        check(placed == [7, 15, 19], "read_curves: each evaluation at the step it followed (7, 15, 19)",
              f"\n    {placed}")
    with h5py.File(b, "r") as f:
        (run_id, group), = f["runs"].items()
        events = group["memory/timeline/events"][()]
        kinds = [x.decode() for x in group["memory/timeline/kinds"][()]]
    for use_pandas in modes:
        t = lowmem_results.read_timeline(b, run_id, pandas=use_pandas)
        kind = list(t["kind"])
        check(len(t) == len(events) and kind == [kinds[int(k)] for k in events[:, 0]]
              and np.array_equal(np.asarray(t["bytes"], dtype=float), events[:, 6]),
              f"read_timeline ({'pandas' if use_pandas else 'numpy'}): one row per event, kinds named, bytes as stored")
    try:
        lowmem_results.read_timeline(a, lowmem_results.read_summary(a, pandas=False)["run_id"][0])
        check(False, "read_timeline of a run without a timeline raises")
    except KeyError as e:
        check("--timeline" in str(e), "read_timeline of a run without a timeline: KeyError saying to use --timeline")
    corrupt = tmp / "corrupt.h5"
    corrupt.write_bytes(b"not an HDF5 file")
    try:
        lowmem_results.read_summary(corrupt)
        check(False, "read_summary of a corrupt file raises")
    except OSError as e:
        check(str(corrupt) in str(e) or "signature" in str(e).lower() or "unable" in str(e).lower(),
              "read_summary of a corrupt file: OSError from h5py", f"\n    {e}")


def check_pending(tmp):
    """A sweep killed with runs still in pending segments: the reader sees the file and its segments as one set,
    the same rows as lowmem show, curves and load_runs included."""
    c = copy.deepcopy(TINY)
    c["name"] = "killed"
    c["train"]["steps"] = 40
    c["train"]["epochs"] = 40
    c["sweep"] = {"seed": list(range(200))}
    cfg = tmp / "killed.json"
    cfg.write_text(json.dumps(c))
    out = tmp / "killed.h5"
    p = subprocess.Popen([str(BINARY), "run", str(cfg), "--out", str(out), "--threads", "1", "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    pending = Path(f"{out}.pending")
    while p.poll() is None and time.monotonic() < deadline and len(list(pending.glob("*.h5"))) < 3:
        time.sleep(0.01)
    p.kill()
    p.wait()
    segments = len(list(pending.glob("*.h5")))
    if not check(segments >= 3, f"a killed sweep left {segments} pending segments"):
        return
    shown = lowmem("show", out, "--format", "csv", "--columns", "run_id,final_train_loss")
    rows = [line.split(",") for line in shown.stdout.splitlines()[1:]]
    s = lowmem_results.read_summary(out, pandas=False)
    check(shown.returncode == 0 and list(s["run_id"]) == [r[0] for r in rows]
          and [repr(float(x)) for x in s["final_train_loss"]] == [repr(float(r[1])) for r in rows],
          f"read_summary with pending segments: the {len(rows)} rows lowmem show prints, numbers bit for bit",
          describe(shown))
    with h5py.File(out, "r") as f:
        folded = len(f["runs"])
        ids = [r["id"] for r in lowmem_results.load_runs(f)]
        last = lowmem_results.load_runs(f)[-1]["group"]["curves/train_loss"][()]
    check(folded < len(s) and ids == list(s["run_id"]),
          f"load_runs: the {folded} runs in the file and the {len(s) - folded} pending ones, in order")
    curves = lowmem_results.read_curves(out, ids[-1], pandas=False)
    check(np.array_equal(curves["train_loss"], last), "read_curves of a pending run: its curve as stored")


def check_formats(tmp):
    """Format 2 files are typed and self-describing; format 1 files (written by an older lowmem, kept in the fuzz
    corpus) are still read by show, merge and the reader, merge turning them into format 2; runs are not added to
    them; a file of an unknown format is refused by each reader with one line."""
    new = sweep(tmp, "typed", {"seed": [4, 5]})
    if not new:
        return
    with h5py.File(new, "r") as f:
        run = lowmem_results.load_runs(f)[0]["group"]
        summary = f["summary"]
        units = dict(zip(summary.dtype.names, [lowmem_results.text(u) for u in summary.attrs["units"]]))
        check(text_of(f.attrs["format"]) == "lowmem results 2" and isinstance(run.attrs["threads"], np.integer)
              and isinstance(run.attrs["sweep_index"], np.integer) and summary.dtype["seed"].kind == "f",
              "format 2: threads and sweep_index int64 attributes, seed a numeric summary column")
        check(units["peak_bytes"] == "bytes" and units["wall_seconds"] == "s" and units["pixel_memory_bytes"] ==
              "bytes/pixel" and units["final_train_loss"] == "" and len(units) == len(summary.dtype.names),
              "format 2: /summary's units attribute, one per column", f"\n    {units}")
        check(text_of(run["memory/peak_bytes"].attrs["units"]) == "bytes"
              and text_of(run["curves/step_seconds"].attrs["units"]) == "s"
              and "units" not in run["curves/train_loss"].attrs,
              "format 2: units on the datasets that have one")
        check(run["curves/train_loss"].dims[0][0] == run["curves/step"]
              and run["curves/test_accuracy"].dims[0][0] in (run["curves/test_step"], run["curves/step"]),
              "format 2: curves/step is the step axis (an HDF5 dimension scale) of the curves")
    old = HERE.parent / "fuzz" / "corpus" / "results" / "two-runs.h5"
    with h5py.File(old, "r") as f:
        old_ids = [r["id"] for r in lowmem_results.load_runs(f)]
        check(text_of(f.attrs["format"]) == "lowmem results 1", "the corpus's two-runs.h5 is a format 1 file")
    p = lowmem("show", old, "--format", "csv", "--columns", "run_id,seed")
    check(p.returncode == 0 and [line.split(",")[0] for line in p.stdout.splitlines()[1:]] == old_ids,
          "format 1: lowmem show reads it", describe(p))
    check(list(lowmem_results.read_summary(old, pandas=False)["run_id"]) == old_ids, "format 1: the reader reads it")
    merged = tmp / "upgraded.h5"
    p = lowmem("merge", merged, old, "--force")
    if check(p.returncode == 0, "format 1: merge --force copies its runs into a new file", describe(p)):
        with h5py.File(merged, "r") as f:
            runs = lowmem_results.load_runs(f)
            check(text_of(f.attrs["format"]) == "lowmem results 2" and [r["id"] for r in runs] == old_ids
                  and f["summary"].dtype["seed"].kind == "f" and all(isinstance(r["attrs"]["threads"], np.integer)
                                                                     for r in runs),
                  "format 1 merged: a format 2 file, seed a number, threads int64, the runs in order")
    copy = tmp / "old-copy.h5"
    copy.write_bytes(old.read_bytes())
    cfg = tmp / "typed.json"
    p = lowmem("run", cfg, "--out", copy, "--resume", "--force", *RUN_OPTS)
    expect_error("format 1: run --resume into it is refused, pointing to merge", p, 1,
                 [str(copy), "lowmem results 1", "lowmem merge"])
    check(copy.read_bytes() == old.read_bytes(), "format 1: the refused file is unchanged")
    future = tmp / "future.h5"
    future.write_bytes(new.read_bytes())
    with h5py.File(future, "r+") as f:
        del f.attrs["format"]
        f.attrs["format"] = "lowmem results 9"
    for args, what in ((("show", future), "show"), (("merge", tmp / "m9.h5", future), "merge")):
        p = lowmem(*args)
        expect_error(f"format 9: {what} refuses it with one line", p, 1, [str(future), "lowmem results 9",
                                                                           "lowmem results 2"])
    try:
        lowmem_results.read_summary(future)
        check(False, "format 9: the reader refuses it")
    except ValueError as e:
        check("lowmem results 9" in str(e), "format 9: the reader refuses it, naming the format", f"\n    {e}")


def text_of(value):
    return lowmem_results.text(value)


if __name__ == "__main__":
    sys.exit(run_sections([check_reader, check_pending, check_formats]))
