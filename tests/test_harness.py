#!/usr/bin/env python3
"""End-to-end tests of the sweep harness: a sweep killed with SIGKILL and resumed, Ctrl-C, --jobs, --shard and
merge against the unsharded sweep, resume into another sweep's file, a full disk, show --where and plan's resume
column.

usage: test_harness.py LOWMEM_BINARY

Prints one line per check ("ok: ..." or "FAILED: ...") and exits non-zero if any check failed.
"""
import copy
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import (BINARY, PROVENANCE, TINY, check, committed_runs, describe, expect_error, lowmem,  # noqa: E402
                         skip, run_sections, runs_of)

# Timing and host-dependent figures: equal configs give equal numbers except these.
VOLATILE = ("wall_seconds", "step_seconds", "rss_peak_bytes")


def sweep_config(tmp, name, seeds, steps, heavy=False):
    """TINY swept over `seeds`, `steps` optimizer steps per run; heavy: 28 x 28 images and 16 channels, about
    1.5 ms a step, for runs that last long enough to be killed in the middle."""
    c = copy.deepcopy(TINY)
    c["name"] = name
    c["train"]["steps"] = steps
    c["train"]["epochs"] = steps  # 8 steps an epoch: enough epochs for `steps`
    c["sweep"] = {"seed": list(seeds)}
    if heavy:
        c["model"]["input"] = c["data"]["synthetic"]["shape"] = [1, 28, 28]
        c["model"]["layers"][0]["out"] = 16
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(c, indent=1))
    return path


def run_ids_once(h5):
    """The run ids of /runs, and whether /summary lists each of them exactly once."""
    with h5py.File(h5, "r") as f:
        ids = sorted(f["runs"].keys())
        summary = sorted(r.decode() if isinstance(r, bytes) else r for r in f["summary"]["run_id"])
        return ids, summary == ids


def h5dump_reads(h5):
    d = subprocess.run(["h5dump", "-H", str(h5)], capture_output=True, text=True, errors="replace")
    return d.returncode == 0, d.stderr[:500]


def signal_midway(cfg, out, sig, *extra, wait_for=1, settle=0.0):
    """Starts `lowmem run cfg --out out`, sends `sig` once `wait_for` runs are committed (and `settle` seconds
    more), and returns (exit code, stderr)."""
    p = subprocess.Popen([str(BINARY), "run", str(cfg), "--out", str(out), "--threads", "1", "--quiet", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while committed_runs(out) < wait_for and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(settle)
    p.send_signal(sig)
    try:
        _, stderr = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, stderr = p.communicate()
    return p.returncode, stderr


def same_results(a, b):
    """Differences between two results files in everything but timing: run ids, statuses, labels, scalars and
    curves."""
    ra, rb = runs_of(a), runs_of(b)
    problems = []
    if sorted(ra) != sorted(rb):
        return [f"run ids differ: {sorted(ra)} vs {sorted(rb)}"]
    for run_id, (attrs, curves) in ra.items():
        other_attrs, other_curves = rb[run_id]
        for key in ("status", "config", "precision", "study", "final_train_loss", "test_accuracy", "peak_bytes",
                    "activation_peak_bytes", "test_loss"):
            if attrs.get(key) != other_attrs.get(key):
                problems.append(f"{run_id} {key}: {attrs.get(key)} vs {other_attrs.get(key)}")
        for key, values in curves.items():
            if key in VOLATILE:
                continue
            if key not in other_curves or values.tobytes() != other_curves[key].tobytes():
                problems.append(f"{run_id} curve {key} differs")
    return problems


# ---------------------------------------------------------------------------------------------------------------

def check_sigkill_and_resume(tmp):
    cfg = sweep_config(tmp, "killed", range(1, 9), steps=200, heavy=True)
    out = tmp / "killed.h5"
    # somewhere inside the third run, or inside the commit of one
    code, _ = signal_midway(cfg, out, signal.SIGKILL, wait_for=2, settle=0.1)
    done = committed_runs(out)
    check(code == -signal.SIGKILL and 2 <= done < 8,
          f"SIGKILL: the sweep was killed for real in the middle ({done} of 8 runs committed)",
          f"\n    exit {code}, runs {done}")
    ok, err = h5dump_reads(out)
    check(ok, "SIGKILL: h5dump reads the killed sweep's file", f"\n    {err}")
    pending = sorted(Path(f"{out}.pending").glob("*.h5"))
    readable = all(h5dump_reads(p)[0] for p in pending)
    check(readable and len(pending) >= 1, f"SIGKILL: h5dump reads each of the {len(pending)} pending segments",
          f"\n    {pending}")
    r = lowmem("run", cfg, "--out", out, "--resume", "--threads", "1")
    check(r.returncode == 0 and f"{done} of 8 runs are done" in r.stderr,
          f"SIGKILL: run --resume skips the {done} committed runs and exits 0", describe(r))
    ids, once = run_ids_once(out)
    statuses = {a["status"] for a, _ in runs_of(out).values()}
    check(len(ids) == 8 and once and statuses == {"complete"},
          "SIGKILL: after resume every run is present exactly once, all complete", f"\n    {ids} {statuses}")
    ok, err = h5dump_reads(out)
    check(ok, "SIGKILL: h5dump reads the resumed file", f"\n    {err}")
    check(not Path(f"{out}.pending").exists(), "SIGKILL: the resumed sweep's end folded every pending run in")
    reference = tmp / "killed-reference.h5"
    lowmem("run", cfg, "--out", reference, "--threads", "1", "--quiet")
    problems = same_results(out, reference)
    check(not problems, "SIGKILL: the killed and resumed sweep equals an uninterrupted one", f"\n    {problems[:5]}")


def check_killed_in_flight(tmp):
    """train.checkpoint_every: a run SIGKILLed in the middle continues from its saved state on run --resume, and
    its numbers (every loss, accuracy, memory figure) equal those of the run never interrupted, bit for bit; alone
    and under --jobs."""
    for jobs in ("1", "2"):
        name = f"inflight-jobs{jobs}"
        # 1,500 steps (about 2 s) so that the kill lands well inside the run on a fast machine too
        cfg = sweep_config(tmp, name, [1, 2] if jobs == "2" else [1], steps=1500, heavy=True)
        c = json.loads(cfg.read_text())
        c["train"]["checkpoint_every"] = 25
        cfg.write_text(json.dumps(c))
        out = tmp / f"{name}.h5"
        inflight = Path(f"{out}.inflight")
        p = subprocess.Popen([str(BINARY), "run", str(cfg), "--out", str(out), "--threads", "1", "--quiet",
                              "--jobs", jobs], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline and len(list(inflight.glob("*.h5"))) < int(jobs):
            time.sleep(0.002)
        # Kill once each state has been replaced at least once (a new inode: the rename of a later save), so that
        # the continued run starts from a state written over an earlier one, not the first.
        def inodes():
            found = {}
            for f in inflight.glob("*.h5"):
                try:
                    found[f.name] = f.stat().st_ino
                except FileNotFoundError:  # removed as we looked: the run was committed
                    pass
            return found
        first = inodes()
        while p.poll() is None and time.monotonic() < deadline and not all(
                inodes().get(n, ino) != ino for n, ino in first.items()):
            time.sleep(0.002)
        if jobs == "2":
            for child in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split():
                os.kill(int(child), signal.SIGKILL)
        p.kill()
        p.communicate()
        states = sorted(inflight.glob("*.h5"))
        check(p.returncode == -signal.SIGKILL and len(states) == int(jobs) and committed_runs(out) == 0,
              f"jobs {jobs}: killed in flight with {len(states)} saved state(s) and no run committed",
              f"\n    exit {p.returncode}, states {states}, committed {committed_runs(out)}")
        r = lowmem("run", cfg, "--out", out, "--resume", "--threads", "1", "--jobs", jobs)
        check(r.returncode == 0 and (jobs == "2" or "continues from its state saved in flight" in r.stderr),
              f"jobs {jobs}: run --resume continues the run(s) from the saved state", describe(r))
        check(not inflight.exists(), f"jobs {jobs}: the saved states are removed once the runs are committed")
        reference = tmp / f"{name}-reference.h5"
        lowmem("run", cfg, "--out", reference, "--threads", "1", "--quiet")
        problems = same_results(out, reference)
        check(not problems and committed_runs(out) == int(jobs),
              f"jobs {jobs}: the killed and continued run equals the uninterrupted one bit for bit", f"\n    {problems[:5]}")


def check_inflight_refusals(tmp):
    """train.checkpoint_every where no run in flight can be saved: one line naming the JSON path, exit 1."""
    cfg = sweep_config(tmp, "refusals", [1], steps=4)
    p = lowmem("plan", cfg, "--set", "train.checkpoint_every=2", "--set", "study=gradient")
    expect_error("checkpoint_every with the gradient study is refused", p, 1,
                 ["/train/checkpoint_every", "gradient study"])
    p = lowmem("plan", cfg, "--set", "train.checkpoint_every=2", "--set",
               'technique={"type": "sparsity", "density": 0.5, "method": "dsr"}')
    expect_error("checkpoint_every with sparsity dsr is refused, saying why", p, 1,
                 ["/train/checkpoint_every", "dsr", "magnitude"])
    p = lowmem("plan", cfg, "--set", "train.checkpoint_every=-1")
    expect_error("checkpoint_every below 0 is refused", p, 1, ["/train/checkpoint_every", "-1"])


def check_ctrl_c(tmp):
    cfg = sweep_config(tmp, "interrupted", range(1, 7), steps=400, heavy=True)
    out = tmp / "interrupted.h5"
    code, stderr = signal_midway(cfg, out, signal.SIGINT)
    done = committed_runs(out)
    check(code == 130 and "interrupted" in stderr and "--resume" in stderr and 1 <= done < 6,
          f"Ctrl-C: exit 130 soon after, says how to resume ({done} runs committed)",
          f"\n    exit {code}\n    stderr {stderr[-600:]!r}")
    statuses = [a["status"] for a, _ in runs_of(out).values()]
    check(statuses and all(s == "complete" for s in statuses),
          "Ctrl-C: the run in flight is dropped, not recorded as failed", f"\n    {statuses}")
    r = lowmem("run", cfg, "--out", out, "--resume", "--threads", "1", "--quiet")
    ids, once = run_ids_once(out)
    check(r.returncode == 0 and len(ids) == 6 and once, "Ctrl-C: resume completes the sweep", describe(r))


def check_jobs_stop(tmp):
    """SIGTERM to the sweep alone (as `timeout` or a scheduler sends it) stops its job processes too."""
    cfg = sweep_config(tmp, "jobs-stopped", range(1, 9), steps=400, heavy=True)
    out = tmp / "jobs-stopped.h5"
    code, stderr = signal_midway(cfg, out, signal.SIGTERM, "--jobs", "2")
    time.sleep(0.2)
    left = [f.name for f in tmp.glob("jobs-stopped.h5.job-*")]
    running = subprocess.run(["pgrep", "-f", "jobs-stopped.h5.job-"], capture_output=True, text=True).stdout.split()
    check(code == 130 and not left and not running,
          "jobs: SIGTERM to the sweep stops its jobs at their next step, leaving no process and no job file",
          f"\n    exit {code}, files {left}, processes {running}\n    stderr {stderr[-400:]!r}")


def check_shards_jobs_and_merge(tmp):
    cfg = sweep_config(tmp, "sharded", range(1, 8), steps=20)
    whole = tmp / "whole.h5"
    r = lowmem("run", cfg, "--out", whole, "--threads", "1", "--quiet")
    check(r.returncode == 0, "shards: the unsharded sweep runs", describe(r))
    shards = []
    for i in range(3):
        shard = tmp / f"shard{i}.h5"
        r = lowmem("run", cfg, "--out", shard, "--shard", f"{i}/3", "--threads", "1", "--quiet")
        check(r.returncode == 0 and committed_runs(shard) == len(range(i, 7, 3)),
              f"shards: shard {i}/3 runs every third run", describe(r))
        shards.append(shard)
    merged = tmp / "merged.h5"
    r = lowmem("merge", merged, *shards)
    check(r.returncode == 0 and "merged 7 runs from 3 files" in r.stdout, "merge: three shards into one", describe(r))
    problems = same_results(merged, whole)
    check(not problems, "merge: the merged shards equal the unsharded sweep (same runs, same numbers)",
          f"\n    {problems[:5]}")
    with h5py.File(merged, "r") as f, h5py.File(whole, "r") as g:
        order = lambda h: [r.decode() if isinstance(r, bytes) else r for r in h["summary"]["run_id"]]
        check(order(f) == order(g), "merge: runs in the sweep's order")
    missing = [(run_id, k) for run_id, (attrs, _) in runs_of(merged).items() for k in PROVENANCE if k not in attrs]
    check(not missing, "merge: provenance attributes kept on every run", f"\n    {missing[:5]}")

    jobs = tmp / "jobs.h5"
    r = lowmem("run", cfg, "--out", jobs, "--jobs", "2", "--threads", "1")
    check(r.returncode == 0 and r.stdout.count("results:") == 1 and r.stderr.count("complete") == 7,
          "jobs: --jobs 2 runs the sweep in two processes, one line per run", describe(r))
    problems = same_results(jobs, whole)
    check(not problems, "jobs: the same numbers as one process at the same thread count", f"\n    {problems[:5]}")
    leftovers = [p.name for p in tmp.glob("jobs.h5.job-*")]
    check(not leftovers, "jobs: no job files left behind", f"\n    {leftovers}")
    # On a terminal (a pseudo-terminal from util-linux's script) --jobs keeps a live line: the runs in flight,
    # and once one is done the sweep's ETA.
    if shutil.which("script"):
        command = " ".join(shlex.quote(str(a)) for a in
                           [BINARY, "run", cfg, "--out", tmp / "live.h5", "--jobs", "2", "--threads", "1"])
        p = subprocess.run(["script", "-qfc", command, "/dev/null"], capture_output=True, text=True, timeout=600)
        lines = p.stdout.replace("\r", "\n").splitlines()
        check(p.returncode == 0 and any(l.startswith("2 jobs: [") for l in lines)
              and any("done, ETA" in l for l in lines),
              "jobs on a terminal: a live line with the runs in flight and the ETA", f"\n    {p.stdout[-600:]!r}")
    else:
        skip("jobs on a terminal", "util-linux's script is not installed")

    other = sweep_config(tmp, "other", range(1, 3), steps=20)
    p = lowmem("merge", tmp / "mixed.h5", whole, lowmem_result(tmp, other))
    expect_error("merge: refuses files of different sweeps, naming both configs", p, 1,
                 ["another sweep", "sharded", "other", "--force"])
    p = lowmem("merge", tmp / "mixed.h5", whole, tmp / "other.h5", "--force")
    check(p.returncode == 0 and committed_runs(tmp / "mixed.h5") == 9, "merge --force: mixes them anyway", describe(p))
    p = lowmem("merge", merged, whole)
    expect_error("merge: refuses to overwrite an existing output", p, 1, ["exists"])


def lowmem_result(tmp, cfg):
    out = tmp / (Path(cfg).stem + ".h5")
    lowmem("run", cfg, "--out", out, "--threads", "1", "--quiet")
    return out


def check_resume_guards(tmp):
    first = sweep_config(tmp, "first", range(1, 3), steps=5)
    second = sweep_config(tmp, "second", range(1, 3), steps=6)
    out = lowmem_result(tmp, first)
    before = runs_of(out)
    p = lowmem("run", second, "--out", out, "--resume", "--threads", "1", "--quiet")
    expect_error("resume: refuses a file written by another config, saying why", p, 1,
                 [str(out), "another sweep", "\"first\"", "--force"])
    check(runs_of(out).keys() == before.keys(), "resume: the refused file is unchanged")
    p = lowmem("run", second, "--out", out, "--resume", "--force", "--threads", "1", "--quiet")
    check(p.returncode == 0 and committed_runs(out) == 4, "resume --force: adds the other sweep's runs", describe(p))
    p = lowmem("run", first, "--out", out, "--resume", "--threads", "1")
    check(p.returncode == 0 and "2 of 2 runs are done, 0 to run" in p.stderr,
          "resume: a finished sweep has nothing to do", describe(p))
    p = lowmem("plan", first, "--out", out)
    check(p.returncode == 0 and "skip (complete)" in p.stdout and "would skip 2 of these 2 runs" in p.stdout,
          "plan --out: says which runs a resume would skip", describe(p))
    p = lowmem("run", first, "--shard", "3/3")
    expect_error("run --shard 3/3: I must be below N", p, 2, ["--shard", "0 <= I < N"])
    p = lowmem("run", first, "--force")
    expect_error("run --force without --resume", p, 2, ["--force goes with --resume"])


def check_full_disk(tmp):
    """No room for the results file (a file size limit, as a full disk would): a clear error, the completed runs
    kept. The limit lets the first runs in and stops the sweep once the file has grown."""
    cfg = sweep_config(tmp, "disk", range(1, 21), steps=3)
    limit = 200 * 1024

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp / "disk.h5"
    p = subprocess.run([str(BINARY), "run", str(cfg), "--out", str(out), "--threads", "1", "--quiet"],
                       capture_output=True, text=True, preexec_fn=limited)
    check(p.returncode == 1 and p.stderr.startswith("lowmem: ") and str(out) in p.stderr
          and "no room" in p.stderr and "File too large" in p.stderr and "unchanged" in p.stderr
          and "Traceback" not in p.stderr,
          "full disk: exit 1 with one message naming the file and the reason",
          f"\n    exit {p.returncode}\n    stderr {p.stderr!r}")
    ids, once = run_ids_once(out)
    check(1 <= len(ids) < 20 and once, f"full disk: the {len(ids)} runs completed before the failure are kept")
    ok, err = h5dump_reads(out)
    check(ok, "full disk: h5dump reads the file", f"\n    {err}")


def check_show_where(tmp):
    cfg = sweep_config(tmp, "shown", range(1, 4), steps=3)
    out = lowmem_result(tmp, cfg)
    p = lowmem("show", out, "--where", "seed=2", "--columns", "run_id,seed")
    rows = p.stdout.strip().splitlines()[1:]
    check(p.returncode == 0 and len(rows) == 1 and rows[0].split()[-1] == "2", "show --where seed=2: one row",
          describe(p))
    p = lowmem("show", out, "--where", "seed!=2", "--columns", "seed")
    check(p.returncode == 0 and len(p.stdout.strip().splitlines()) == 3, "show --where seed!=2: two rows", describe(p))
    p = lowmem("show", out, "--where", "colour=red")
    expect_error("show --where on an unknown column lists the columns", p, 1, ["colour", "columns:", "seed"])


def check_shipped_configs(tmp):
    """Every config in configs/ plans (all its runs validate, memory predicted), so none rots unnoticed."""
    root = Path(__file__).resolve().parent.parent
    for cfg in sorted((root / "configs").rglob("*.json")):
        p = lowmem("plan", cfg, "--json", "--threads", "2", "--out", tmp / "none.h5")
        try:
            runs = json.loads(p.stdout)
        except ValueError:
            runs = None
        check(p.returncode == 0 and isinstance(runs, list) and runs,
              f"configs: {cfg.relative_to(root)} plans ({len(runs or [])} runs)", describe(p))
    # A results file of another sweep at plan's --out: plan notes that a resume would refuse it, and goes on.
    other = lowmem_result(tmp, sweep_config(tmp, "foreign", range(1, 2), steps=2))
    p = lowmem("plan", root / "configs" / "reference-cnn.json", "--out", other)
    check(p.returncode == 0 and "note:" in p.stderr and "another sweep" in p.stderr,
          "plan --out on another sweep's file: a note, exit 0", describe(p))


if __name__ == "__main__":
    sys.exit(run_sections([check_sigkill_and_resume, check_killed_in_flight, check_inflight_refusals, check_ctrl_c, check_jobs_stop, check_shards_jobs_and_merge, check_resume_guards,
                           check_full_disk, check_show_where, check_shipped_configs]))
