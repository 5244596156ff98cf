#!/usr/bin/env python3
"""Hostile and pathological input to `lowmem plan` and `lowmem run`: sizes that overflow, nesting that would blow
the stack, models and sweeps past the limits, names that are not file names, two sweeps on one results file,
files left by a killed sweep. Each case asserts the exit code and the one-line message, and that it answers fast
(no allocation of the sizes asked for).

usage: test_hostile_input.py LOWMEM_BINARY
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import *  # noqa: E402,F401,F403  lowmem, check, describe, expect_error, TINY, ...

# Memory a refused config may use: far below what it asks for (prlimit through the helper's prefix).
ADDRESS_LIMIT = ["prlimit", "--as=4000000000"]


def write(tmp, name, c):
    path = tmp / name
    path.write_text(c if isinstance(c, str) else json.dumps(c))
    return path


def tiny(change):
    c = copy.deepcopy(TINY)
    change(c)
    return c


def refused(what, tmp, name, c, words, *extra, commands=("plan", "run")):
    """Both plan and run refuse the config at once: exit 1, one 'lowmem: ' line with `words`, no results file."""
    cfg = write(tmp, name, c)
    for command in commands:
        out = tmp / (name + ".h5")
        args = [command, cfg, *extra] + (["--out", out, *RUN_OPTS] if command == "run" else [])
        start = time.monotonic()
        p = lowmem(*args, prefix=ADDRESS_LIMIT)
        seconds = time.monotonic() - start
        expect_error(f"{command} {what}: exit 1, message names {words}", p, 1, words)
        check(seconds < 20, f"{command} {what}: answers in {seconds:.1f} s (< 20 s)")
        check(not out.exists(), f"{command} {what}: no results file", describe(p))


def check_sizes(tmp):
    def huge_conv(c):
        c["model"]["layers"][0]["out"] = 2 ** 62
    refused("a conv with out 2^62", tmp, "huge_conv.json", tiny(huge_conv),
            ["/model/layers/0 (conv)", "more than 2^57 values"])

    def wide_revnet(c):
        c["model"] = {"arch": "revnet", "stages": 8, "width": 2 ** 30, "input": [1, 8, 8], "classes": 3}
    refused("a revnet of width 2^30", tmp, "wide_revnet.json", tiny(wide_revnet), ["/model (revnet", "2^57"])

    def deep_resnet(c):
        c["model"] = {"arch": "resnet", "depth": 2 ** 31 - 4, "input": [1, 8, 8], "classes": 3}
    refused("a resnet of depth 2^31-4", tmp, "deep_resnet.json", tiny(deep_resnet),
            ["/model/depth", "more than the limit of 100000", "--limit layers"])

    def many_blocks(c):
        c["model"] = {"arch": "hybrid", "blocks": 666666666, "input": [1, 8, 8], "classes": 3}
    refused("666666666 hybrid blocks", tmp, "many_blocks.json", tiny(many_blocks), ["/model/blocks", "--limit layers"])

    def million_layers(c):
        c["model"]["layers"] = [{"type": "relu"}] * 1000000 + c["model"]["layers"]
    refused("10^6 layers", tmp, "million.json", tiny(million_layers), ["/model/layers", "1000006 layers"])

    # The limit is the user's: raised, the same kind of model (smaller here, so the test stays fast) is accepted.
    def long_model(c):
        c["model"]["layers"] = [{"type": "relu"}] * 30 + c["model"]["layers"]
    cfg = write(tmp, "long.json", tiny(long_model))
    p = lowmem("plan", cfg, "--limit", "layers=20")
    expect_error("plan with --limit layers=20 refuses 36 layers", p, 1, ["36 layers", "limit of 20"])
    p = lowmem("plan", cfg, "--limit", "layers=36")
    check(p.returncode == 0, "plan with --limit layers=36 accepts 36 layers", describe(p))
    p = lowmem("plan", cfg, "--limit", "layers=lots")
    expect_error("--limit layers=lots: exit 1, names the option", p, 1, ["--limit layers=lots", "whole number"])

    def big_batch(c):
        c["train"]["batch"] = 10 ** 9
        c["data"]["synthetic"]["count"] = 10 ** 9
    refused("batch 10^9", tmp, "big_batch.json", tiny(big_batch),
            ["/train/batch 1000000000", "exceed the memory limit", "--limit memory"])
    p = lowmem("plan", write(tmp, "tiny.json", TINY), "--limit", "memory=1000")
    expect_error("plan with --limit memory=1000 refuses the tiny model", p, 1, ["memory limit of 1000 bytes"])

    def huge_synthetic(c):
        c["data"]["synthetic"]["count"] = 10 ** 15
    refused("a synthetic data set of 10^15 examples", tmp, "huge_synthetic.json", tiny(huge_synthetic),
            ["/data/synthetic", "1000000000000000 + 16 examples", "--limit memory"])

    def huge_sweep(c):
        c["sweep"] = {"seed": list(range(100000)), "train.optimizer.lr": [0.1 * (k + 1) for k in range(100000)]}
    refused("a sweep of 10^10 runs", tmp, "huge_sweep.json", tiny(huge_sweep),
            ["/sweep", "more than 100000 runs", "--limit runs"])

    def crop(c):
        c["data"]["augment"] = {"crop_pad": 64}
    refused("crop_pad 64 on 8x8 images", tmp, "crop.json", tiny(crop), ["/data/augment/crop_pad", "expected 0 to 8"])


def check_text(tmp):
    deep = '{"name": ' + "[" * 60000 + "]" * 60000 + "}"
    refused("60000 nested lists", tmp, "deep.json", deep, ["deep.json", "nested deeper than 64 levels"])

    layer = '{"type": "relu"}'
    for _ in range(20000):
        layer = '{"type": "coupling", "f": [' + layer + '], "g": [{"type": "relu"}]}'
    nested = json.dumps(TINY).replace('"layers": [', '"layers": [' + layer + ", ", 1)
    refused("20000 nested couplings", tmp, "nested.json", nested, ["/model/layers/0/f/0/f", "nested deeper"])

    refused("1e400", tmp, "overflow.json", json.dumps(TINY).replace('"lr": 0.05', '"lr": 1e400'),
            ["overflow.json", "line 1", "1e400", "beyond the range of a double"])

    cfg = write(tmp, "tiny.json", TINY)
    p = subprocess.run([str(BINARY), "plan", str(cfg), "--set", b"name=\xff\xfe".decode("latin-1").encode("latin-1")],
                       capture_output=True)
    stderr = p.stderr.decode("utf-8", "replace")
    check(p.returncode == 1 and stderr.startswith("lowmem: --set name=\\xff\\xfe: the value is not valid UTF-8")
          and stderr.count("\n") == 1, "--set with invalid UTF-8: exit 1, one line naming the --set", repr(stderr))
    p = lowmem("plan", cfg, "--set", "name=" + "[" * 100 + "]" * 100)
    expect_error("--set with 100 nested lists: exit 1", p, 1, ["--set name=", "nested deeper than 64"])
    # A long value is cut in the message, not printed whole.
    p = lowmem("plan", cfg, "--set", "train.batch=" + json.dumps(list(range(10000))))
    expect_error("--set with a long list: exit 1, names the key", p, 1, ["/train/batch", "..."])
    check(len(p.stderr) < 400, f"--set with a long list: the message is short ({len(p.stderr)} characters)")


def check_names(tmp):
    work = tmp / "names"
    (work / "results").mkdir(parents=True)
    cfg = write(work, "escape.json", tiny(lambda c: c.update(name="../../escaped")))
    p = lowmem("run", cfg, *RUN_OPTS, cwd=work)
    written = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*escaped*"))
    check(p.returncode == 0 and written == ["names/results/_._.._escaped.h5"],
          'name "../../escaped": the results file stays in results/ (results/_._.._escaped.h5)',
          describe(p) + f"\n    files: {written}")
    cfg = write(work, "nul.json", tiny(lambda c: c.update(name="a\u0000b")))
    for command in ("plan", "run"):
        p = lowmem(command, cfg, *(RUN_OPTS if command == "run" else []), cwd=work)
        expect_error(f"{command}: a NUL in name: exit 1", p, 1, ["nul.json: /name", "control character (code 0)"])
    check(not any(work.joinpath("results").glob("a*")), "a NUL in name: no results file")


def slow_config(tmp):
    """A sweep of runs long enough to be caught running (about a second a run)."""
    def slow(c):
        c["model"]["input"] = [3, 32, 32]
        c["data"]["synthetic"] = {"count": 4096, "test_count": 16, "shape": [3, 32, 32], "classes": 3}
        c["model"]["layers"][0]["out"] = 32
        c["train"].update(batch=64, steps=60)
        c["sweep"] = {"seed": [1, 2, 3, 4]}
    return write(tmp, "slow.json", tiny(slow))


def wait_for(path, seconds=30):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not Path(path).exists():
        time.sleep(0.05)
    return Path(path).exists()


def check_one_writer(tmp):
    cfg, out = slow_config(tmp), tmp / "shared.h5"
    first = subprocess.Popen([str(BINARY), "run", str(cfg), "--out", str(out), *RUN_OPTS],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        check(wait_for(str(out) + ".lock"), "a running sweep holds a lock file beside its results file")
        for extra in ([], ["--resume"]):
            p = lowmem("run", cfg, "--out", out, *RUN_OPTS, *extra)
            expect_error(f"a second run{' --resume' if extra else ''} on the same --out is refused", p, 1,
                         [str(out), "is being written by another lowmem run", f"pid {first.pid}"])
    finally:
        _, stderr = first.communicate(timeout=300)
    check(first.returncode == 0 and not Path(str(out) + ".lock").exists(),
          "the first sweep ends normally and removes its lock file", stderr[-500:])
    check(len(runs_of(out)) == 4, "the first sweep's file holds its 4 runs, nothing of the refused ones")


def check_killed_jobs(tmp):
    cfg, out = slow_config(tmp), tmp / "killed.h5"
    sweep = subprocess.Popen([str(BINARY), "run", str(cfg), "--out", str(out), "--jobs", "2", *RUN_OPTS],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job_files = lambda: sorted(p.name for p in tmp.glob("killed.h5.job-*"))
    end = time.monotonic() + 30
    while time.monotonic() < end and not any(n.endswith(".log") for n in job_files()):
        time.sleep(0.05)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    time.sleep(0.5)  # the jobs stop when their sweep dies (PR_SET_PDEATHSIG)
    left = job_files()
    check(any(n.endswith(".json") for n in left), f"kill -9 during --jobs leaves job files ({len(left)})")
    p = lowmem("run", cfg, "--out", out, "--resume", *RUN_OPTS)
    check(p.returncode == 0, "the resume after kill -9 completes", describe(p))
    check(job_files() == [] and not Path(str(out) + ".lock").exists(),
          "the resume removes the killed sweep's job files and lock", f"\n    left: {job_files()}")


def main():
    return run_sections([check_sizes, check_text, check_names, check_one_writer, check_killed_jobs])


if __name__ == "__main__":
    sys.exit(main())
