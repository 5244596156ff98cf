#!/usr/bin/env python3
"""Results files from elsewhere, read defensively (issue 12, item 5): links that loop, nesting and extents that
would exhaust memory, a bad sweep_index, full-width strings, signals while reading, and `ulimit -f`.

usage: test_hostile_results.py LOWMEM_BINARY

Each hostile file is a copy of a real two-run results file changed with h5py. Every refusal must be lowmem's
own single line naming the file and the HDF5 path inside it, exit 1, and leave the file as it was. Prints one
line per check and exits non-zero if any failed.
"""
import copy
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import *  # noqa: E402,F401,F403  lowmem, check, expect_error, TINY, ...

MEMORY_CAP = 2 << 30  # a reader that runs away hits this and fails the checks, rather than the machine


def capped():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def lowmem_capped(*args):
    return lowmem(*args, timeout=60, preexec_fn=capped)


def sweep(tmp, name, seeds):
    c = copy.deepcopy(TINY)
    c["name"] = name
    c["sweep"] = {"seed": list(seeds)}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(c))
    return path


def base_file(tmp):
    """A real results file of two runs (seeds 1 and 2), made once."""
    out = tmp / "base.h5"
    if not out.exists():
        p = lowmem("run", sweep(tmp, "base", [1, 2]), "--out", out, *RUN_OPTS)
        check(p.returncode == 0, "the base results file is written", describe(p))
    return out


def variant(tmp, name, edit):
    """A copy of the base file changed by edit(file, first run group); returns (path, first run's HDF5 path)."""
    path = tmp / name
    shutil.copy(base_file(tmp), path)
    with h5py.File(path, "r+") as f:
        run = f["runs"][sorted(f["runs"])[0]]
        edit(f, run)
        return path, run.name


def expect_refused(tmp, what, path, words, command="merge"):
    """`lowmem merge` (or show) of `path`: exit 1, one line naming the file and `words`, the file unchanged."""
    before = sha256(path)
    out = tmp / "merged.h5"
    out.unlink(missing_ok=True)
    p = lowmem_capped("merge", out, path) if command == "merge" else lowmem_capped("show", path)
    expect_error(f"{command} {what}: exit 1, one line naming the file and {words}", p, 1, [str(path), *words])
    check(len(p.stderr.splitlines()) == 1, f"{command} {what}: the message is one line", describe(p))
    check(sha256(path) == before and not out.exists(), f"{command} {what}: the file is unchanged, nothing written")


# ---------------------------------------------------------------------------------------------------------------

def check_links(tmp):
    def hard_cycle(f, run):
        run["curves"]["loop"] = run  # a group linking back to its parent
    path, run = variant(tmp, "hard-cycle.h5", hard_cycle)
    expect_refused(tmp, "a hard link back to the run", path, [run, "2 links"])

    path, run = variant(tmp, "soft-cycle.h5", lambda f, r: r["curves"].__setitem__("loop", h5py.SoftLink(r.name)))
    expect_refused(tmp, "a soft link back to the run", path, [f"{run}/curves/loop", "soft link"])

    path, run = variant(tmp, "external.h5", lambda f, r: r.__setitem__("ext", h5py.ExternalLink("base.h5", "/runs")))
    expect_refused(tmp, "an external link", path, [f"{run}/ext", "external link"])

    def shared(f, run):
        other = f["runs"][sorted(f["runs"])[1]]
        other["curves"]["copy"] = run["curves"]["train_loss"]  # one dataset under two runs
    path, run = variant(tmp, "shared.h5", shared)
    expect_refused(tmp, "one dataset linked from two runs", path, ["train_loss", "2 links"])


def check_resume_of_a_cycle(tmp):
    """The defect: --resume on a file with a cycle read forever (10.6 GB) and ignored SIGTERM."""
    def cycle(f, run):
        run["curves"]["loop"] = run
        f.attrs["appends_since_compaction"] = 100  # the next commit rebuilds the file, reading every run
    path, run = variant(tmp, "resume-cycle.h5", cycle)
    before = sha256(path)
    start = time.monotonic()
    p = lowmem_capped("run", sweep(tmp, "base3", [1, 2, 3]), "--out", path, "--resume", "--force", *RUN_OPTS)
    expect_error("resume into a file with a cycle: exit 1, names the run group and its 2 links", p, 1,
                 [str(path), run, "2 links", "the file is unchanged"])
    check(time.monotonic() - start < 30 and sha256(path) == before,
          "resume into a file with a cycle: stops at once, the file unchanged")


def check_bounds(tmp):
    def huge(f, run):  # 2^61 values over chunks never written: a few bytes of file
        run.create_dataset("curves/huge", shape=(2 ** 61,), dtype="f8", chunks=(1024,))
    path, run = variant(tmp, "huge.h5", huge)
    expect_refused(tmp, "a dataset of 2^61 values", path, [f"{run}/curves/huge", str(2 ** 61), "refuses"])

    def deep(f, run):
        g = run
        for _ in range(40):
            g = g.create_group("d")
    path, run = variant(tmp, "deep.h5", deep)
    expect_refused(tmp, "groups 40 deep", path, [run, "nested more than 32 deep"])

    def many_indices(f, run):
        del run.attrs["index"]
        run.attrs["index"] = np.arange(1000, dtype="i8")  # read into one int64 before
    path, run = variant(tmp, "index-array.h5", many_indices)
    expect_refused(tmp, "an index attribute of 1000 values", path, [run, "attribute 'index'", "a single value"])

    def newline_name(f, run):
        run["curves"]["a\nb"] = h5py.SoftLink("/runs")
    path, run = variant(tmp, "newline.h5", newline_name)
    expect_refused(tmp, "a link named with a newline", path, [f"{run}/curves/a?b", "soft link"])


def check_sweep_index(tmp):
    for value in ("abc", "-3", "99999999999999999999999", "12 "):
        def bad(f, run):
            del run.attrs["sweep_index"]
            run.attrs["sweep_index"] = value
        path, run = variant(tmp, "bad-index.h5", bad)
        expect_refused(tmp, f"sweep_index {value!r}", path,
                       ["attribute 'sweep_index'", run, json.dumps(value), "not a run position"])


def write_summary(f, pad):
    """/summary rewritten with every string column fixed-length and exactly as wide as its longest cell, padded
    with NULs (h5py's np.bytes_) or spaces."""
    rows = f["summary"][:]
    widths = {n: max(1, max(len(x) for x in rows[n])) for n in rows.dtype.names if rows.dtype[n].kind == "S"}
    dtype = np.dtype([(n, f"S{widths[n]}" if n in widths else rows.dtype[n]) for n in rows.dtype.names])
    data = np.array([tuple(r) for r in rows.tolist()], dtype=dtype)
    file_type = h5py.h5t.py_create(dtype)
    if pad == "space":
        file_type = h5py.h5t.create(h5py.h5t.COMPOUND, dtype.itemsize)
        for n in dtype.names:
            member = h5py.h5t.py_create(dtype[n])
            if n in widths:
                member = h5py.h5t.C_S1.copy()
                member.set_size(widths[n])
                member.set_strpad(h5py.h5t.STR_SPACEPAD)
                data[n] = [x.ljust(widths[n]) for x in data[n]]
            file_type.insert(n.encode(), dtype.fields[n][1], member)
    del f["summary"]
    space = h5py.h5s.create_simple((len(data),))
    h5py.h5d.create(f.id, b"summary", file_type, space).write(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=file_type)


def check_full_width_strings(tmp):
    for pad in ("nul", "space"):
        path = tmp / f"full-width-{pad}.h5"
        shutil.copy(base_file(tmp), path)
        with h5py.File(path, "r+") as f:
            write_summary(f, pad)
        p = lowmem("show", path, "--columns", "run_id,status")
        statuses = [line.split()[-1] for line in p.stdout.splitlines()[1:]]
        check(p.returncode == 0 and statuses == ["complete", "complete"],
              f"show: full-width {pad}-padded strings read whole ('complete', not 'complet')", describe(p))
        p = lowmem("run", sweep(tmp, "base", [1, 2]), "--out", path, "--resume", "--threads", "1")
        check(p.returncode == 0 and "2 of 2 runs are done, 0 to run" in p.stderr,
              f"resume: runs in a full-width {pad}-padded /summary count as done", describe(p))


def check_signal_while_reading(tmp):
    """SIGTERM while merge reads a large file: one line, status 143, nothing written, the input unchanged."""
    path = tmp / "large.h5"
    shutil.copy(base_file(tmp), path)
    with h5py.File(path, "r+") as f:
        extra = f["runs"][sorted(f["runs"])[0]].create_group("extra")
        for i in range(20000):
            extra.create_dataset(f"d{i}", data=np.arange(4.0))
    before = sha256(path)
    out = tmp / "large-merged.h5"
    p = subprocess.Popen([str(BINARY), "merge", str(out), str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)

    def catches_sigterm():  # the reader's handler is in place (seen twice: the long read, not a short one)
        try:
            return int(next(l for l in Path(f"/proc/{p.pid}/status").read_text().splitlines()
                            if l.startswith("SigCgt")).split()[1], 16) & (1 << (signal.SIGTERM - 1))
        except (OSError, StopIteration):
            return False
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and not (catches_sigterm() and time.sleep(0.05) is None
                                                                    and catches_sigterm()):
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    check(p.returncode == 128 + signal.SIGTERM and stderr == f"lowmem: {path}: stopped by SIGTERM while reading; "
          "nothing was written\n", "SIGTERM while merge reads: one line naming the file, exit 143",
          f"\n    exit {p.returncode}\n    stderr {stderr!r}")
    check(not out.exists() and sha256(path) == before, "SIGTERM while merge reads: nothing written, input unchanged")


def check_file_size_limit(tmp):
    """`ulimit -f` reached, with SIGXFSZ at its default (which killed lowmem with no word, status 153): the write
    fails like a full disk, one line, exit 1, the runs committed before kept."""
    cfg = sweep(tmp, "limited", range(1, 21))
    out = tmp / "limited.h5"
    limit = 200 * 1024
    p = subprocess.run([str(BINARY), "run", str(cfg), "--out", str(out), *RUN_OPTS], capture_output=True,
                       text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    p.cmdline = f"ulimit -f {limit // 1024}; lowmem run {cfg} --out {out}"
    expect_error("ulimit -f reached: exit 1, one line naming the file, 'File too large', the file unchanged", p, 1,
                 [str(out), "no room", "File too large", "unchanged"])
    kept = committed_runs(out)
    p = lowmem("show", out)
    check(1 <= kept < 20 and p.returncode == 0 and len(p.stdout.splitlines()) == kept + 1,
          f"ulimit -f reached: the {kept} runs committed before are kept and readable", describe(p))


def main():
    return run_sections([check_links, check_resume_of_a_cycle, check_bounds, check_sweep_index,
                         check_full_width_strings, check_signal_while_reading, check_file_size_limit])


if __name__ == "__main__":
    sys.exit(main())
