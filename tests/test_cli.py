#!/usr/bin/env python3
"""End-to-end tests of the lowmem command line (run / plan / show) on tiny configs.

usage: test_cli.py LOWMEM_BINARY   (CTest passes the binary; env LOWMEM_SOURCE_DIR = repo root, unused here)

Prints one line per check ("ok: ..." or "FAILED: ..." with the command, exit code and output) and exits
non-zero if any check failed. Every config is tiny (synthetic 1x8x8 data, 3 steps), so the whole file runs in
a few seconds.
"""
import copy
import gzip
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import *  # noqa: E402,F401,F403  lowmem, check, describe, TINY, ...

TMP = None  # Path of the scratch directory


# ---------------------------------------------------------------------------------------------------------------
# helpers

def config(tmp_name, changes=None, base=None):
    """Writes a copy of `base` (TINY) changed by `changes(c)` to TMP/tmp_name; returns its path."""
    c = copy.deepcopy(base if base is not None else TINY)
    if changes:
        changes(c)
    path = TMP / tmp_name
    path.write_text(json.dumps(c, indent=1))
    return path


def expect_failed_run(what, cfg, words):
    """A config whose runs cannot be done (a shape that does not fit, missing or corrupt data): lowmem run stops
    before any run with exit 1 and one 'lowmem: ' line holding `words`, and creates no results file."""
    out = TMP / (Path(cfg).stem + ".h5")
    p = lowmem("run", cfg, "--out", out, *RUN_OPTS)
    expect_error(f"run {what}: exit 1 before any run, message names {words}", p, 1, words)
    check(not out.exists(), f"run {what}: no results file is created", describe(p))


# ---------------------------------------------------------------------------------------------------------------
# 1. bad input

def idx_bytes(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">i", d) for d in dims) + payload


def write_fashion_mnist(directory, n=10, truncate_train_images=False):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        pixels = rng.integers(0, 256, size=n * 28 * 28, dtype=np.uint8).tobytes()
        labels = rng.integers(0, 10, size=n, dtype=np.uint8).tobytes()
        if truncate_train_images and prefix == "train":
            pixels = pixels[: 3 * 28 * 28 + 100]  # the header says 10 images, the payload holds 3.1
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(idx_bytes(0x803, [n, 28, 28], pixels))
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(idx_bytes(0x801, [n], labels))


def fashion_model(c, data):
    c["model"]["input"] = [1, 28, 28]
    c["model"]["classes"] = 10  # Fashion-MNIST's labels are 0..9
    c["model"]["layers"][-1]["out"] = 10
    c["data"] = data
    c["train"]["batch"] = 2


def check_bad_input():
    # Config errors: both plan and run reject the config before running anything.
    cases = [
        ("unknown key /train/bacth", lambda c: c["train"].update(bacth=8),
         ["/train/bacth", "unknown key", '"batch"']),
        ("wrong type: batch \"64\"", lambda c: c["train"].update(batch="64"),
         ["/train/batch", "integer", '"64"']),
        ("negative batch", lambda c: c["train"].update(batch=-3), ["/train/batch", ">= 1", "-3"]),
        ("zero batch", lambda c: c["train"].update(batch=0), ["/train/batch", ">= 1", "got 0"]),
        ("unknown layer type", lambda c: c["model"]["layers"][2].update(type="rleu"),
         ["/model/layers/2", '"rleu"', '"relu"', '"conv"', '"linear"']),
        ("unknown sweep path", lambda c: c.update(sweep={"train.optimiser.lr": [0.1, 0.01]}),
         ["/sweep/train.optimiser.lr", '"train.optimiser"', '"train.optimizer"']),
    ]
    for i, (what, change, words) in enumerate(cases):
        cfg = config(f"bad{i}.json", change)
        expect_error(f"plan {what}: exit 1, message names {words}", lowmem("plan", cfg), 1, words)
        out = TMP / f"bad{i}.h5"
        p = lowmem("run", cfg, "--out", out, *RUN_OPTS)
        expect_error(f"run {what}: exit 1, message names {words}", p, 1, words)
        check(not out.exists(), f"run {what}: no results file created", describe(p))

    # Shape errors: plan names the layer; run records a failed run.
    shape_cases = [
        ("linear directly after conv (no flatten)", lambda c: c["model"]["layers"].pop(4),
         ["/model/layers/4", "linear", "flatten"]),
        ("conv with a kernel larger than its input", lambda c: c["model"]["layers"][0].update(kernel=9, pad=0),
         ["/model/layers/0", "conv", "kernel 9", "[1, 8, 8]"]),
        ("conv after flatten (no channels)", lambda c: c["model"]["layers"].insert(5, {"type": "conv", "out": 4}),
         ["/model/layers/5", "conv", "(channels, height, width)"]),
    ]
    for i, (what, change, words) in enumerate(shape_cases):
        cfg = config(f"shape{i}.json", change)
        expect_error(f"plan {what}: exit 1, message names {words}", lowmem("plan", cfg), 1, words)
        expect_failed_run(what, cfg, words)

    # Data errors (only `run` reads data).
    cfg = config("nodata.json", lambda c: fashion_model(c, {"dataset": "fashion-mnist", "path": "/nonexistent/dir"}))
    expect_failed_run("fashion-mnist in a missing directory", cfg, ["/nonexistent/dir", "dataset-fashion-mnist"])

    fm = TMP / "fm-truncated"
    write_fashion_mnist(fm, truncate_train_images=True)
    cfg = config("truncated.json", lambda c: fashion_model(c, {"dataset": "fashion-mnist", "path": str(fm)}))
    expect_failed_run("truncated IDX file", cfg, ["truncated", "train-images-idx3-ubyte.gz"])
    # labels 0..9 into a model with 3 outputs: refused before any run (it would read past the logits)
    def three_classes(c):
        fashion_model(c, {"dataset": "fashion-mnist", "path": str(TMP / "fm-ok")})
        c["model"]["classes"] = 3
        c["model"]["layers"][-1]["out"] = 3
    write_fashion_mnist(TMP / "fm-ok")
    cfg = config("classes.json", three_classes)
    expect_failed_run("more data classes than model outputs", cfg, ["10 classes", "model.classes is 3"])
    # control: the same files, whole, load and train
    fm_ok = TMP / "fm-ok"
    write_fashion_mnist(fm_ok)
    cfg = config("fm-ok.json", lambda c: fashion_model(c, {"dataset": "fashion-mnist", "path": str(fm_ok)}))
    p = lowmem("run", cfg, "--out", TMP / "fm-ok.h5", *RUN_OPTS)
    check(p.returncode == 0 and run_messages(TMP / "fm-ok.h5")[0][0] == "complete",
          "control: the same IDX files untruncated train fine", describe(p))

    cifar = TMP / "cifar"
    cifar.mkdir()
    (cifar / "data_batch_1.bin").write_bytes(bytes(3073 * 2 + 17))
    (cifar / "test_batch.bin").write_bytes(bytes(3073 * 2))

    def cifar_model(c):
        c["model"]["input"] = [3, 32, 32]
        c["data"] = {"dataset": "cifar10", "path": str(cifar)}
        c["train"]["batch"] = 2
    cfg = config("cifar.json", cifar_model)
    expect_failed_run("corrupt CIFAR file (size not a multiple of 3073)", cfg,
                      [str(cifar / "data_batch_1.bin"), "3073"])

    # Invalid JSON: the message gives the line.
    bad = TMP / "invalid.json"
    bad.write_text('{\n  "name": "x",\n  "seed": 1,,\n  "precision": "f32"\n}\n')
    for cmd in ("plan", "run"):
        extra = ["--out", TMP / "invalid.h5", *RUN_OPTS] if cmd == "run" else []
        expect_error(f"{cmd} invalid JSON: exit 1, message names the file and line 3",
                     lowmem(cmd, bad, *extra), 1, ["invalid.json", "line 3", "JSON"])
    missing_cfg = TMP / "no-such-config.json"
    for cmd in ("plan", "run"):
        extra = ["--out", TMP / "nocfg.h5", *RUN_OPTS] if cmd == "run" else []
        expect_error(f"{cmd} missing config file: exit 1, message names it", lowmem(cmd, missing_cfg, *extra), 1,
                     [str(missing_cfg)])

    # Results path problems.
    cfg = config("ok.json")
    p = lowmem("run", cfg, "--out", "/nonexistent/x.h5", *RUN_OPTS)
    expect_error("run --out /nonexistent/x.h5: exit 1, message names the directory", p, 1, ["/nonexistent", "x.h5"])
    check(not Path("/nonexistent").exists(), "run --out /nonexistent/x.h5: nothing created", describe(p))
    missing_dir = TMP / "missing-dir"
    p = lowmem("run", cfg, "--out", missing_dir / "x.h5", *RUN_OPTS)
    expect_error("run --out in a missing directory: exit 1, message names it", p, 1, [str(missing_dir), "not exist"])
    check(not missing_dir.exists() and not list(TMP.glob("missing-dir*")),
          "run --out in a missing directory: nothing created", describe(p))

    ro = TMP / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    prefix = ()
    if os.geteuid() == 0 and os.access(ro, os.W_OK):
        # root writes anywhere: try as user nobody instead (needs setpriv and a traversable scratch directory)
        if shutil.which("setpriv"):
            prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
            TMP.chmod(0o755)
            cfg.chmod(0o644)
    if os.geteuid() == 0 and not prefix:
        skip("run --out in an unwritable directory", "running as root without setpriv")
    else:
        p = lowmem("run", cfg, "--out", ro / "x.h5", *RUN_OPTS, prefix=prefix)
        expect_error("run --out in an unwritable directory (0555): exit 1, message names the directory", p, 1,
                     [str(ro), "not writable"])
        check(not list(ro.iterdir()), "run --out in an unwritable directory: nothing created", describe(p))
    ro.chmod(0o755)

    # An existing results file is never overwritten.
    x = TMP / "x.h5"
    p1 = lowmem("run", cfg, "--out", x, *RUN_OPTS)
    check(p1.returncode == 0 and x.exists(), "run --out x.h5: exit 0, x.h5 written", describe(p1))
    before = sha256(x)
    p2 = lowmem("run", cfg, "--out", x, *RUN_OPTS)
    x2 = TMP / "x.2.h5"
    check(p2.returncode == 0 and x2.exists() and str(x) in p2.stderr and str(x2) in p2.stderr
          and "exists" in p2.stderr and str(x2) in p2.stdout,
          "run twice with the same --out: writes x.2.h5 and says so on stderr", describe(p2))
    check(sha256(x) == before, "run twice with the same --out: the first file is byte-for-byte unchanged")

    # show on bad files.
    corrupt = TMP / "corrupt.h5"
    corrupt.write_bytes(b"this is not an HDF5 file\n" * 100)
    expect_error("show on a corrupt results file: exit 1, message names the file",
                 lowmem("show", corrupt), 1, [str(corrupt), "not an HDF5 file"])
    half = TMP / "half.h5"
    half.write_bytes(x.read_bytes()[: x.stat().st_size // 2])
    p = lowmem("show", half)
    expect_error("show on a truncated results file: exit 1, message names the file", p, 1, [str(half)])
    nofile = TMP / "no-such-file.h5"
    expect_error("show on a missing file: exit 1, message names it", lowmem("show", nofile), 1,
                 [str(nofile), "does not exist"])
    expect_error("show --sort on an unknown column: exit 1", lowmem("show", x, "--sort", "bogus"), 1, ['"bogus"'])

    # Usage errors.
    for cmd, extra in (("run", ["--out", TMP / "u.h5", *RUN_OPTS]), ("plan", []), ("show", [])):
        target = x if cmd == "show" else cfg
        expect_error(f"{cmd} --bogus: exit 2, unknown option named", lowmem(cmd, target, *extra, "--bogus"), 2,
                     ["unknown option --bogus"])
    p = lowmem("run", cfg, "--out", TMP / "t0.h5", "--threads", "0", "--quiet")
    expect_error("run --threads 0: exit 2, message names --threads and 0", p, 2, ["--threads", '"0"'])
    check(not (TMP / "t0.h5").exists(), "run --threads 0: no results file created")
    expect_error("unknown command: exit 2", lowmem("frobnicate"), 2, ['"frobnicate"'])


# ---------------------------------------------------------------------------------------------------------------
# 2. determinism

def check_determinism():
    cfg = config("det.json", lambda c: c.update(sweep={"precision": ["f32", "f16"]}))
    a, b = TMP / "det-a.h5", TMP / "det-b.h5"
    pa = lowmem("run", cfg, "--out", a, *RUN_OPTS)
    pb = lowmem("run", cfg, "--out", b, *RUN_OPTS)
    if not check(pa.returncode == 0 and pb.returncode == 0, "determinism: both runs exit 0", describe(pa) + describe(pb)):
        return
    ra, rb = runs_of(a), runs_of(b)
    check(list(ra) == list(rb) and len(ra) == 2, f"determinism: identical run ids in both files ({list(ra)}, {list(rb)})")
    for run_id in ra:
        if run_id not in rb:
            continue
        prec = ra[run_id][0]["precision"]
        la, lb = ra[run_id][1].get("train_loss"), rb[run_id][1].get("train_loss")
        check(la is not None and lb is not None and la.dtype == lb.dtype and la.tobytes() == lb.tobytes(),
              f"determinism {prec}: train_loss curves bit-identical", f"\n    {la!r}\n    {lb!r}")
        ta, tb = ra[run_id][0].get("test_accuracy"), rb[run_id][0].get("test_accuracy")
        check(ta is not None and ta == tb, f"determinism {prec}: test_accuracy identical ({ta}, {tb})")


# ---------------------------------------------------------------------------------------------------------------
# 3. plan predicts memory exactly

def check_plan_matches_run(name, cfg, tolerance=0.0):
    """Every predicted byte equals the measured one (within `tolerance`, relative, where patterns move)."""
    p, plan = plan_json(cfg, "--threads", "1")
    if not check(p.returncode == 0 and isinstance(plan, list), f"{name}: plan --json exits 0 and prints a list",
                 describe(p)):
        return
    out = TMP / (cfg.stem + ".h5")
    r = lowmem("run", cfg, "--out", out, *RUN_OPTS)
    if not check(r.returncode == 0, f"{name}: run exits 0", describe(r)):
        return
    runs = runs_of(out)
    check([e["run_id"] for e in plan] == list(runs), f"{name}: run ids of plan and run match",
          f"\n    plan {[e['run_id'] for e in plan]}\n    run  {list(runs)}")
    for entry in plan:
        if entry["run_id"] not in runs:
            continue
        attrs = runs[entry["run_id"]][0]
        prec = entry["precision"]
        mismatches = []
        def differ(measured, predicted):
            return measured is None or predicted is None or abs(measured - predicted) > tolerance * predicted

        if differ(attrs.get("peak_bytes"), entry["predicted_peak_bytes"]):
            mismatches.append(f"peak: predicted {entry['predicted_peak_bytes']}, measured {attrs.get('peak_bytes')}")
        if attrs.get("predicted_peak_bytes") != entry["predicted_peak_bytes"]:
            mismatches.append(f"the run's predicted_peak_bytes {attrs.get('predicted_peak_bytes')} is not plan's")
        if abs(attrs.get("pixel_memory_bytes", -1) - entry.get("pixel_memory_bytes", -2)) > 1e-9 * entry.get(
                "pixel_memory_bytes", 1):
            mismatches.append(f"pixel memory: predicted {entry.get('pixel_memory_bytes')}, "
                              f"measured {attrs.get('pixel_memory_bytes')}")
        if attrs.get("recomputed_evaluations_per_step", 0) != entry.get("recomputed_evaluations_per_step"):
            mismatches.append(f"recomputed evaluations: predicted {entry.get('recomputed_evaluations_per_step')}, "
                              f"measured {attrs.get('recomputed_evaluations_per_step')}")
        for category, attr in MEMORY.items():
            predicted = entry["predicted_bytes"].get(category)
            if differ(attrs.get(attr), predicted):
                mismatches.append(f"{category}: predicted {predicted}, measured {attr} = {attrs.get(attr)}")
        check(not mismatches and attrs.get("status") == "complete",
              f"{name} {prec}: predicted peak and every category equal the measured bytes " +
              (f"within {tolerance:.0%}" if tolerance else "exactly"),
              f"\n    run {entry['run_id']} status {attrs.get('status')}: " + "; ".join(mismatches))


def check_plan():
    cfg = config("plan.json", lambda c: c.update(sweep={"precision": ["f32", "f16", "bf16", "f64"]}))
    check_plan_matches_run("plan vs run", cfg)
    cfg = config("plan-gradient.json", lambda c: c.update(study="gradient", gradient={"reference": "none"},
                                                            sweep={"precision": ["f32", "f16", "bf16"]}))
    check_plan_matches_run("plan vs run (gradient study)", cfg)
    cfg = config("plan-storage.json", lambda c: c.update(precision="f16", accumulate="f16"))
    check_plan_matches_run("plan vs run (16-bit accumulation)", cfg)
    cfg = config("plan-mp.json", lambda c: (c.update(precision="mp"), c["train"].update(steps=1)))
    check_plan_matches_run("plan vs run (steps 1)", cfg)
    reversible = {"input": [1, 8, 8], "classes": 3, "arch": "revnet", "stages": 2, "blocks": 2, "width": 4}
    cfg = config("plan-reversible.json", lambda c: c.update(
        model=reversible, technique={"type": "reversible"},
        sweep={"model.arch": ["revnet", "hybrid", "flat"], "precision": ["f32", "bf16"]}))
    check_plan_matches_run("plan vs run (reversible)", cfg)
    cfg = config("plan-reversible-checkpoint.json", lambda c: c.update(
        model=reversible, technique=[{"type": "reversible"}, {"type": "checkpoint"}],
        sweep={"model.arch": ["revnet", "flat"], "precision": ["f32", "f16"]}))
    check_plan_matches_run("plan vs run (reversible + checkpoint)", cfg)
    cfg = config("plan-checkpoint.json", lambda c: c.update(
        technique={"type": "store_all"},
        sweep={"technique": [{"type": "checkpoint"}, {"type": "checkpoint", "schedule": "revolve", "slots": 2}],
               "precision": ["f32", "f16"]}))
    check_plan_matches_run("plan vs run (checkpoint)", cfg)
    cfg = config("plan-microbatch.json", lambda c: c.update(
        technique={"type": "store_all"},
        sweep={"technique": [{"type": "microbatch", "count": 4},
                             [{"type": "microbatch", "count": 2}, {"type": "checkpoint"}]],
               "precision": ["f32", "bf16"]}))
    check_plan_matches_run("plan vs run (microbatch)", cfg)
    # Normalisations in the named architectures, Proxy Norm, sparse end layers and narrow conv bands.
    resnet = {"input": [1, 8, 8], "classes": 3, "arch": "resnet", "depth": 10, "base_width": 4}
    cfg = config("plan-norms.json", lambda c: c.update(
        model=resnet, technique={"type": "microbatch", "count": 4},
        sweep=[{"model.norm": ["groupnorm"], "model.groups": [2], "model.proxy": [False, True],
                "precision": ["f32", "f16"]},
               {"model.norm": ["layernorm", "instancenorm"], "model.proxy": [True], "conv_band_columns": [8]},
               {"technique": [[{"type": "mixed_precision", "compute": "f16"},
                               {"type": "sparsity", "density": 0.5, "first_density": 0.5, "last_density": 0.25}]]}]))
    check_plan_matches_run("plan vs run (norms, Proxy Norm, sparse ends, conv bands)", cfg)
    # A cnn without norm keys records the older keys' defaults, so configs written before "norm" keep their run ids.
    cnn = {"input": [1, 8, 8], "classes": 3, "arch": "cnn", "channels": [4]}
    ids = []
    for name, extra in (("implicit", {}), ("explicit", {"batchnorm": True, "groupnorm": 0})):
        p, plan = plan_json(config(f"ids-{name}.json", lambda c: c.update(model={**cnn, **extra})))
        ids.append(plan[0]["run_id"] if p.returncode == 0 else describe(p))
    check(ids[0] == ids[1], "a cnn without norm keys has the run id of the same cnn with the older keys' defaults",
          f"{ids}")
    cfg = config("plan-approx.json", lambda c: c.update(
        technique={"type": "store_all"},
        sweep={"technique": [{"type": "approx_activations", "bits": 4, "method": "actnn"},
                             {"type": "approx_activations", "bits": 2, "method": "naive"},
                             [{"type": "approx_activations", "bits": 2, "method": "blpa"}, {"type": "checkpoint"}]],
               "precision": ["f32", "f16"]}))
    check_plan_matches_run("plan vs run (approx_activations)", cfg)
    cnn = {"input": [1, 8, 8], "classes": 3, "arch": "cnn", "channels": [4, 4, 4]}  # 3 convs + linear: 2 sparse
    cfg = config("plan-sparsity.json", lambda c: (c.update(
        model=cnn, technique={"type": "store_all"},
        sweep={"technique": [{"type": "sparsity", "density": 0.3},
                             [{"type": "sparsity", "density": 0.1}, {"type": "mixed_precision"},
                              {"type": "microbatch", "count": 2}]]})))
    check_plan_matches_run("plan vs run (sparsity)", cfg)
    # DSR moves nonzeros between layers, so per-layer buffers drift from the initial pattern's sizes.
    cfg = config("plan-dsr.json", lambda c: (c.update(
        model=cnn, technique={"type": "sparsity", "density": 0.3, "method": "dsr", "interval": 1, "threshold": 0.05,
                              "prune_fraction": 0.2}), c["train"].update(steps=6)))
    check_plan_matches_run("plan vs run (sparsity dsr)", cfg, tolerance=0.01)
    cfg = config("plan-reconstruction.json", lambda c: c.update(
        model=reversible, study="reconstruction", sweep={"model.arch": ["revnet", "flat"], "precision": ["f64", "f16"]}))
    check_plan_matches_run("plan vs run (reconstruction study)", cfg)


# ---------------------------------------------------------------------------------------------------------------
# 4. results file contents

def check_plan_timeline():
    """plan --timeline: per run, a peak equal to plan's predicted peak, made of the buffers it lists; as JSON with
    every event; refused for a study without a step."""
    cfg = config("timeline.json", lambda c: c.update(sweep={"technique": [{"type": "store_all"},
                                                                          {"type": "checkpoint"}]}))
    p = lowmem("plan", cfg, "--timeline", "--threads", "1")
    _, planned = plan_json(cfg, "--threads", "1")
    peaks = [int(line.split(" peak ")[1].split(" B")[0]) for line in p.stdout.splitlines() if line.startswith("run ")]
    check(p.returncode == 0 and planned is not None and peaks == [r["predicted_peak_bytes"] for r in planned],
          "plan --timeline: each run's peak is plan's predicted peak", describe(p))
    first = p.stdout.split("\nrun ")[0].splitlines()
    listed = sum(int(line.split()[0]) for line in first[2:] if line.split() and line.split()[0].isdigit())
    check(listed == peaks[0] and "/model/layers/0 (conv)" in p.stdout and "backward" in p.stdout,
          "plan --timeline: the buffers listed at the peak add up to it and name their layers", describe(p))
    p = lowmem("plan", cfg, "--timeline", "--json", "--threads", "1")
    try:
        timelines = json.loads(p.stdout)
    except ValueError:
        timelines = None
    check(timelines is not None and [t["peak"]["bytes"] for t in timelines] == peaks and
          all(len(t["events"]["kind"]) == len(t["events"]["bytes"]) >= t["peak"]["after_event"] for t in timelines),
          "plan --timeline --json: every event of each run's timeline, with the same peaks", describe(p))
    # run --timeline: each run's measured timeline (setup and first step) is plan's up to its evaluation batch.
    out = TMP / "timeline.h5"
    p = lowmem("run", cfg, "--timeline", "--out", out, *RUN_OPTS)
    same = p.returncode == 0 and timelines is not None
    if same:
        with h5py.File(out, "r") as f:
            for t in timelines:
                g = f["runs"][t["run_id"]]["memory"]["timeline"]
                measured = np.array(g["events"])
                owners = [o.decode() if isinstance(o, bytes) else o for o in g["owners"][()]]
                ev = t["events"]
                phases = t["phases"]
                end = next(i for i, ph in enumerate(ev["phase"]) if phases[ph] == "evaluation")
                predicted = [[ev[c][i] for c in ("kind", "category", "from", "phase")] + [t["owners"][ev["owner"][i]]] +
                             [ev["buffer"][i], ev["bytes"][i]] for i in range(end)]
                got = [[int(r[0]), int(r[1]), int(r[2]), int(r[3]), owners[int(r[4])], int(r[5]), int(r[6])]
                       for r in measured]
                same = same and got == predicted and len(got) > 10
    check(same, "run --timeline: the measured timeline equals plan's event for event (setup and first step)",
          describe(p))
    rec = config("timeline-rec.json", lambda c: c.update(
        study="reconstruction", model={"input": [1, 8, 8], "classes": 3, "arch": "flat", "blocks": 1, "width": 4}))
    expect_error("plan --timeline refuses a reconstruction study", lowmem("plan", rec, "--timeline"), 1,
                 ["reconstruction", "no timeline"])
    expect_error("run --timeline refuses a reconstruction study before any run",
                 lowmem("run", rec, "--timeline", "--out", TMP / "timeline-rec.h5", *RUN_OPTS), 1,
                 ["reconstruction", "records no timeline"])
    check(not (TMP / "timeline-rec.h5").exists(), "run --timeline on a reconstruction study writes nothing")


def check_results_file():
    h5 = TMP / "det-a.h5"
    if not h5.exists():
        check(False, "results file: det-a.h5 exists")
        return
    runs = runs_of(h5)
    for run_id, (attrs, curves) in runs.items():
        check(attrs.get("status") == "complete", f"results {run_id}: status complete (got {attrs.get('status')})")
        try:
            parsed = json.loads(attrs["config"])
            ok = isinstance(parsed, dict) and parsed.get("precision") == attrs.get("precision")
        except (KeyError, ValueError):
            ok = False
        check(ok, f"results {run_id}: config attribute parses as JSON and matches the run's precision")
        missing = [k for k in PROVENANCE if k not in attrs or str(attrs[k]) == ""]
        check(not missing, f"results {run_id}: provenance attributes present", f"\n    missing or empty: {missing}")
        check(isinstance(attrs.get("threads"), np.integer) and attrs.get("threads") == 1
              and isinstance(attrs.get("sweep_index"), np.integer)
              and isinstance(attrs.get("seed"), np.floating) and attrs.get("seed") == 1,
              f"results {run_id}: threads and sweep_index recorded as int64, seed as a number "
              f"(threads={attrs.get('threads')!r}, seed={attrs.get('seed')!r})")
        check("train_loss" in curves and len(curves["train_loss"]) == 3,
              f"results {run_id}: curves/train_loss has 3 steps")
    with h5py.File(h5, "r") as f:
        ok = "summary" in f and f["summary"].dtype.names is not None
        names = list(f["summary"].dtype.names) if ok else []
        missing = [c for c in SUMMARY_COLUMNS if c not in names]
        check(ok and not missing, "results: /summary is a compound dataset with the standard columns",
              f"\n    columns {names}, missing {missing}")
        if ok and "run_id" in names:
            rows = f["summary"][:]
            ids = [r.decode() if isinstance(r, bytes) else str(r) for r in rows["run_id"]]
            check(len(rows) == len(runs) and ids == list(runs), f"results: /summary has one row per run ({ids})")
    p = lowmem("show", h5)
    check(p.returncode == 0 and all(r in p.stdout for r in runs) and not p.stderr,
          "show FILE: exit 0, lists every run id", describe(p))
    p = lowmem("show", h5, "--sort", "peak_bytes")
    lines = [l for l in p.stdout.splitlines() if any(r in l for r in runs)]
    order = [next(r for r in runs if r in l) for l in lines]
    expected = sorted(runs, key=lambda r: runs[r][0]["peak_bytes"])
    check(p.returncode == 0 and order == expected, "show --sort peak_bytes: exit 0, rows in increasing peak_bytes",
          describe(p) + f"\n    expected order {expected}")
    p = lowmem("show", h5, "--columns", "run_id,peak_bytes")
    check(p.returncode == 0 and p.stdout.splitlines()[0].split() == ["run_id", "peak_bytes"],
          "show --columns run_id,peak_bytes: exactly those columns", describe(p))
    if shutil.which("h5dump"):
        d = subprocess.run(["h5dump", "-H", str(h5)], capture_output=True, text=True, errors="replace")
        check(d.returncode == 0, "h5dump -H FILE exits 0", f"\n    exit {d.returncode}: {d.stderr[:500]}")
    else:
        skip("h5dump -H FILE", "h5dump not installed")


# ---------------------------------------------------------------------------------------------------------------
# 5. divergence

def check_divergence():
    for precision in ("f32", "f16"):
        cfg = config(f"diverge-{precision}.json",
                     lambda c: c.update(precision=precision, sweep={"train.optimizer.lr": [1e6, 0.01]}))
        out = TMP / f"diverge-{precision}.h5"
        p = lowmem("run", cfg, "--out", out, *RUN_OPTS)
        if not check(p.returncode == 0 and out.exists(), f"diverge {precision}: run exits 0", describe(p)):
            continue
        runs = runs_of(out)
        statuses = [(a["status"], a["message"], json.loads(a["config"])["train"]["optimizer"]["lr"],
                     list(c.get("train_loss", []))) for a, c in runs.values()]
        check(len(statuses) == 2 and statuses[0][2] == 1e6 and statuses[0][0] == "diverged" and statuses[0][1],
              f"diverge {precision}: lr 1e6 recorded as \"diverged\" with a message",
              f"\n    (status, message, lr, train_loss) = {statuses[0] if statuses else None}")
        check(len(statuses) == 2 and statuses[1][2] == 0.01 and statuses[1][0] == "complete",
              f"diverge {precision}: the sweep goes on, lr 0.01 complete",
              f"\n    {statuses[1] if len(statuses) > 1 else None}")


# ---------------------------------------------------------------------------------------------------------------
# 6. --set

def check_set():
    cfg = config("set.json")
    p, plan = plan_json(cfg, "--set", "train.batch=4")
    check(p.returncode == 0 and plan and plan[0]["config"]["train"]["batch"] == 4,
          "plan --set train.batch=4: the resolved config has batch 4", describe(p))
    out = TMP / "set.h5"
    p = lowmem("run", cfg, "--out", out, "--set", "train.batch=4", "--set", "train.optimizer.lr=0.02", *RUN_OPTS)
    if check(p.returncode == 0, "run --set train.batch=4 --set train.optimizer.lr=0.02: exit 0", describe(p)):
        (attrs, _), = runs_of(out).values()
        c = json.loads(attrs["config"])
        check(c["train"]["batch"] == 4 and c["train"]["optimizer"]["lr"] == 0.02,
              "run --set: config attribute has train.batch 4 and lr 0.02", f"\n    train = {c['train']}")
    p = lowmem("plan", cfg, "--set", "train.bacth=4")
    expect_error("plan --set train.bacth=4: exit 1, unknown key with suggestion", p, 1, ["/train/bacth", '"batch"'])
    p = lowmem("plan", cfg, "--set", "train.optimiser.lr=3")
    expect_error("plan --set train.optimiser.lr=3: exit 1, path does not exist, suggestion", p, 1,
                 ['"train.optimiser"', '"train.optimizer"'])

    # A --set on a swept key replaces that axis with its one value, validated like any value.
    swept = config("set-swept.json", lambda c: c.update(sweep={"precision": ["f32", "f64"],
                                                               "train.optimizer.lr": [0.01, 0.02]}))
    p, plan = plan_json(swept, "--set", "precision=f64")
    check(p.returncode == 0 and plan and len(plan) == 2 and all(r["config"]["precision"] == "f64" for r in plan)
          and [r["swept"] for r in plan] == [{"train.optimizer.lr": 0.01}, {"train.optimizer.lr": 0.02}],
          "plan --set precision=f64 on a precision sweep: 2 runs, both f64, lr the only swept value",
          describe(p) + f"\n    plan = {[(r['config']['precision'], r['swept']) for r in plan or []]}")
    p = lowmem("plan", swept, "--set", "precision=fp16")
    expect_error("plan --set precision=fp16 on a precision sweep: exit 1, the value is checked", p, 1,
                 ["/precision", '"fp16"', '"f16"'])
    # Swept values and the readable technique label become summary columns, shown by `show` by default.
    out = TMP / "set-swept.h5"
    p = lowmem("run", swept, "--out", out, "--set", "precision=f32", *RUN_OPTS)
    if check(p.returncode == 0, "run of an lr sweep: exit 0", describe(p)):
        with h5py.File(out, "r") as f:
            columns = f["summary"].dtype.names
            lrs = sorted(float(x) for x in f["summary"]["train.optimizer.lr"])
            labels = {x.decode() if isinstance(x, bytes) else x for x in f["summary"]["technique_label"]}
        check(lrs == [0.01, 0.02] and labels == {"store_all"},
              "summary: column train.optimizer.lr holds 0.01 and 0.02 (numbers), technique_label store_all",
              f"\n    columns = {columns}, lr = {lrs}, labels = {labels}")
        p = lowmem("show", out)
        check(p.returncode == 0 and "train.optimizer.lr" in p.stdout and "technique_label" in p.stdout
              and "0.02" in p.stdout, "show: the swept lr and technique_label are default columns", describe(p))
    # The same with --jobs: a job process gets the resolved config alone, and the sweep adds the columns.
    jobs_out = TMP / "set-swept-jobs.h5"
    p = lowmem("run", swept, "--out", jobs_out, "--set", "precision=f32", "--jobs", "2", "--threads", "1", "--quiet")
    if check(p.returncode == 0, "run of an lr sweep with --jobs 2: exit 0", describe(p)):
        with h5py.File(jobs_out, "r") as f:
            names = f["summary"].dtype.names
            lrs = sorted(float(x) for x in f["summary"]["train.optimizer.lr"]) if "train.optimizer.lr" in names else []
        check(lrs == [0.01, 0.02], "--jobs 2: the swept lr is a summary column too", f"\n    columns = {names}")
    # A --set whose value sets a swept path inside it would be overwritten by the sweep: refused.
    p = lowmem("plan", swept, "--set", 'train.optimizer={"type": "sgd", "lr": 0.5}')
    expect_error("plan --set train.optimizer={... lr ...} while lr is swept: refused naming the axis", p, 1,
                 ['"train.optimizer.lr"', "swept"])
    p, plan = plan_json(swept, "--set", 'train.optimizer={"type": "sgd", "momentum": 0.5}')
    check(p.returncode == 0 and plan and all(r["config"]["train"]["optimizer"]["momentum"] == 0.5 for r in plan)
          and sorted(r["config"]["train"]["optimizer"]["lr"] for r in plan) == [0.01, 0.01, 0.02, 0.02],
          "plan --set train.optimizer={... without lr ...}: set, the sweep still varies lr", describe(p))


def check_show():
    """show over a seed x lr sweep: formats, comparisons, descending sort, several files, group-by, units."""
    cfg = config("show.json", lambda c: c.update(sweep={"seed": [0, 1, 2], "train.optimizer.lr": [0.05, 0.1]}))
    out = TMP / "show.h5"
    p = lowmem("run", cfg, "--out", out, *RUN_OPTS)
    if not check(p.returncode == 0, "show: the seed x lr sweep runs", describe(p)):
        return
    with h5py.File(out, "r") as f:
        s = f["summary"][()]
        loss = {(int(r["seed"]), float(r["train.optimizer.lr"])): float(r["final_train_loss"]) for r in s}
        peak = float(s["peak_bytes"][0])
    p = lowmem("show", out, "--format", "csv", "--columns", "seed,train.optimizer.lr,final_train_loss",
               "--where", "train.optimizer.lr<0.1", "--sort", "-seed")
    lines = p.stdout.strip().splitlines()
    rows = [l.split(",") for l in lines[1:]]
    check(p.returncode == 0 and lines[0] == "seed,train.optimizer.lr,final_train_loss"
          and [r[0] for r in rows] == ["2", "1", "0"] and all(r[1] == "0.05" for r in rows)
          and all(float(r[2]) == loss[(int(r[0]), 0.05)] for r in rows),
          "show --format csv --where lr<0.1 --sort -seed: three rows, seeds 2 1 0, every digit of the loss", describe(p))
    p = lowmem("show", out, out, "--format", "json", "--columns", "file,seed,final_train_loss", "--where", "seed>=2")
    try:
        got = json.loads(p.stdout)
    except ValueError:
        got = None
    check(p.returncode == 0 and got is not None and len(got) == 4 and all(r["file"] == str(out) for r in got)
          and all(r["seed"] == 2 for r in got), "show A B --format json --where seed>=2: 2 files x 2 runs, file column",
          describe(p))
    p = lowmem("show", out, "--group-by", "train.optimizer.lr", "--columns", "final_train_loss,peak_bytes",
               "--format", "json")
    try:
        groups = {g["train.optimizer.lr"]: g for g in json.loads(p.stdout)}
    except (ValueError, KeyError, TypeError):
        groups = {}
    want = [loss[(s_, 0.1)] for s_ in range(3)]
    mean = sum(want) / 3
    sd = (sum((x - mean) ** 2 for x in want) / 2) ** 0.5
    g = groups.get(0.1, {})
    check(p.returncode == 0 and set(groups) == {0.05, 0.1} and g.get("runs") == 3
          and abs(g.get("final_train_loss", 0) - mean) <= 1e-12 * abs(mean)
          and abs(g.get("final_train_loss_sd", 0) - sd) <= 1e-9 * sd and g.get("peak_bytes_sd") == 0,
          "show --group-by lr: 3 runs per lr, the mean and sample standard deviation of the loss over seeds",
          describe(p) + f"\n    want mean {mean} sd {sd}")
    p = lowmem("show", out, "--format", "markdown", "--columns", "seed,peak_bytes", "--bytes", "KiB")
    lines = p.stdout.splitlines()
    check(p.returncode == 0 and lines[0] == "| seed | peak_KiB |" and lines[1] == "| ---: | ---: |"
          and f"| {peak / 1024:.4g} |" in lines[2], "show --format markdown --bytes KiB: the peak in KiB", describe(p))
    p = lowmem("show", out, "--where", "technique_label~store", "--columns", "run_id")
    check(p.returncode == 0 and len(p.stdout.strip().splitlines()) == 7, "show --where technique_label~store: 6 runs",
          describe(p))
    p = lowmem("show", out, "--format", "xml")
    expect_error("show --format xml: usage error naming the formats", p, 2, ["--format", "csv", '"xml"'])
    p = lowmem("show", out, "--where", "nope<3")
    expect_error("show --where on a missing column: exit 1, names it and lists the columns", p, 1,
                 ['"nope"', "final_train_loss"])
    p = lowmem("show", out, "--bytes", "MB")
    expect_error("show --bytes MB: usage error naming the units", p, 2, ["--bytes", "MiB", '"MB"'])


def check_command_line():
    """CLI11's parsing: --version, --opt=value, generated help; configs with comments; results/ made if missing."""
    p = lowmem("--version")
    check(p.returncode == 0 and p.stdout.startswith("lowmem ") and "git " in p.stdout,
          "lowmem --version: exit 0, names the version and the git commit", describe(p))
    cfg = config("eq.json")
    p, plan = plan_json(cfg, "--set=train.batch=4", "--threads=1")
    check(p.returncode == 0 and plan and plan[0]["config"]["train"]["batch"] == 4,
          "plan --set=train.batch=4 --threads=1: the --opt=value form", describe(p))
    p = lowmem("show", "--help")
    check(p.returncode == 0 and "--group-by" in p.stdout and "--format" in p.stdout,
          "show --help: generated from the options", describe(p))
    commented = TMP / "commented.json"
    text = json.dumps(dict(TINY, name="commented"), indent=1)
    commented.write_text("// why this config: a comment\n" + text.replace("{", "{ /* and one inside */", 1) + "\n")
    # The README's commented example config, as printed there, is a valid config.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("## Config format", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    (TMP / "readme-example.json").write_text(example)
    p = lowmem("plan", TMP / "readme-example.json", "--threads", "1")
    check(p.returncode == 0 and "train" in p.stdout, "the README's commented example config plans as printed", describe(p))
    # train.steps beyond one epoch runs into the next epochs (64 examples at batch 8: 8 steps an epoch).
    long_run = config("long.json", lambda c: c["train"].update(steps=20))
    p = lowmem("run", long_run, "--out", TMP / "long.h5", *RUN_OPTS)
    if check(p.returncode == 0, "run with train.steps 20 over epochs of 8 steps: exit 0", describe(p)):
        (attrs, curves), = runs_of(TMP / "long.h5").values()
        check(list(curves["step"]) == list(range(20)) and list(curves["epoch"]) == [1, 2, 3],
              "train.steps 20: steps 0..19, evaluated after epochs 1, 2 and 3 (the last cut short)",
              f"\n    steps {list(curves['step'])}, epochs {list(curves.get('epoch', []))}")
    fresh = TMP / "no-results-dir"
    fresh.mkdir()
    p = lowmem("run", commented, *RUN_OPTS, cwd=fresh)
    check(p.returncode == 0 and (fresh / "results" / "commented.h5").exists(),
          "run of a config with // and /* */ comments, no --out, in a directory without results/: results/ made",
          describe(p))


# ---------------------------------------------------------------------------------------------------------------
# 8. text: sequence models on a corpus written here

def text_config(name, corpus, model=None, **data):
    """A tiny character Transformer on `corpus` (windows of 8 characters, batch 4, 3 steps)."""
    def change(c):
        c["model"] = model or {"arch": "transformer", "depth": 1, "width": 8, "heads": 2}
        c["data"] = {"dataset": "text", "path": str(corpus), "seq_len": 8, **data}
        c["train"]["batch"] = 4
    return config(name, change)


def check_text():
    corpus = TMP / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40 + "caf\u00e9 \u20ac\n", encoding="utf-8")
    cfg = text_config("text.json", corpus)
    p, plan = plan_json(cfg)
    check(p.returncode == 0 and plan[0]["predicted_peak_bytes"] > 0, "text: a character Transformer plans", describe(p))
    def plan_matches_run(name, stem, c, sweep):
        cfg = TMP / f"{stem}.json"
        cfg.write_text(json.dumps({**c, "sweep": sweep}))
        check_plan_matches_run(f"plan vs run ({name})", cfg)

    techniques = {"technique": [{"type": "microbatch", "count": 2}, {"type": "checkpoint"},
                                {"type": "mixed_precision", "compute": "bf16"},
                                {"type": "approx_activations", "bits": 4, "method": "actnn"},
                                {"type": "sparsity", "density": 0.5}]}  # the blocks' linear layers
    c = json.loads(text_config("text-plan.json", corpus).read_text())
    plan_matches_run("text transformer", "text-plan", c, {"precision": ["f32", "f64", "f16", "bf16"]})
    plan_matches_run("text transformer, techniques", "text-techniques", c, techniques)
    # The reversible Transformer under reversible; an LSTM checkpointed over time by each schedule.
    c["model"] = {"arch": "transformer", "depth": 2, "width": 8, "heads": 2, "reversible": True}
    plan_matches_run("reversible transformer", "text-reversible", c,
                     {"technique": [{"type": "store_all"}, {"type": "reversible"}]})
    c["model"] = {"arch": "lstm", "depth": 2, "width": 6, "bptt": 3}
    plan_matches_run("lstm checkpointed over time", "text-lstm", c, {"technique": [
        {"type": "checkpoint", "over": "time"}, {"type": "checkpoint", "over": "time", "schedule": "revolve", "slots": 2},
        {"type": "checkpoint", "over": "time", "schedule": "budget", "budget_bytes": 200000}]})
    # The convolution model (Wu et al.'s dynamic and lightweight convolutions in pre-norm blocks): the same.
    c["model"] = {"arch": "dynamic_conv", "depth": 1, "width": 8, "heads": 2, "kernel": 3}
    plan_matches_run("text dynamic_conv", "conv-plan", c,
                     {"precision": ["f32", "f64", "f16", "bf16"], "model.conv": ["dynamic", "lightweight"]})
    plan_matches_run("text dynamic_conv, techniques", "conv-techniques", c, techniques)
    out = TMP / "text-run.h5"
    r = lowmem("run", text_config("text-run.json", corpus, augment={"shift": 7}), "--out", out, *RUN_OPTS)
    runs = runs_of(out) if r.returncode == 0 else {}
    attrs = next(iter(runs.values()))[0] if runs else {}
    bpc, loss = attrs.get("val_bits_per_char", -1), attrs.get("test_loss", -2)
    check(r.returncode == 0 and abs(bpc - loss / np.log(2)) < 1e-12 and 0 < bpc < 8,
          "text: a run records val_bits_per_char, the validation loss in bits", f"{describe(r)}\n    {bpc} {loss}")

    # Bad input: one line naming the file or JSON path.
    expect_error("text: a missing corpus names data.path", lowmem("plan", text_config("t1.json", TMP / "nothing.txt")),
                 1, ["/data/path", "nothing.txt", "does not exist"])
    (TMP / "empty.txt").write_text("")
    expect_error("text: an empty corpus", lowmem("plan", text_config("t2.json", TMP / "empty.txt")), 1,
                 ["/data/path", "empty.txt", "no text"])
    expect_error("text: seq_len longer than the corpus",
                 lowmem("run", text_config("t3.json", corpus, seq_len=100000), "--out", TMP / "t3.h5", *RUN_OPTS), 1,
                 ["seq_len 100000", "too long"])
    expect_error("text: heads that do not divide the width", lowmem("plan", text_config(
        "t4.json", corpus, {"arch": "transformer", "depth": 1, "width": 8, "heads": 3})),
                 1, ["/model/heads", "3 heads", "width of 8"])
    expect_error("text: a vocabulary mismatch", lowmem("plan", text_config(
        "t5.json", corpus, {"arch": "transformer", "depth": 1, "width": 8, "heads": 2, "classes": 50})),
                 1, ["/model/classes", "50", "vocabulary"])
    expect_error("text: a reversible Transformer's heads divide half the width", lowmem("plan", text_config(
        "t4r.json", corpus, {"arch": "transformer", "depth": 1, "width": 8, "heads": 8, "reversible": True})),
                 1, ["/model/heads", "8 heads", "half width of 4"])
    expect_error("text: checkpoint over time needs a recurrent layer", lowmem("plan", config(
        "t4t.json", lambda c: c.update(technique={"type": "checkpoint", "over": "time"}))),
                 1, ["/technique", "over", "time", "lstm"])
    expect_error("text: an unknown initialisation", lowmem("plan", text_config(
        "t5i.json", corpus, {"arch": "transformer", "depth": 1, "width": 8, "heads": 2, "init": "xavier"})),
                 1, ["/model/init", "gpt2", "xavier"])
    expect_error("text: init_std without init gpt2", lowmem("plan", text_config(
        "t5s.json", corpus, {"arch": "transformer", "depth": 1, "width": 8, "heads": 2, "init_std": 0.1})),
                 1, ["/model/init_std", "gpt2"])
    expect_error("text: a window shift beyond seq_len", lowmem("plan", text_config(
        "t5w.json", corpus, augment={"shift": 9})), 1, ["/data/augment/shift", "9"])
    expect_error("images: a window shift", lowmem("plan", config(
        "t5x.json", lambda c: c["data"].update(augment={"shift": 2}))), 1, ["/data/augment/shift", "text"])
    expect_error("text: an image architecture on text", lowmem("plan", text_config(
        "t6.json", corpus, {"arch": "cnn", "channels": [4]})), 1, ["/model/arch", "image model"])
    expect_error("text: an image layer in a sequence model", lowmem("plan", text_config(
        "t7.json", corpus, {"layers": [{"type": "embedding", "out": 8}, {"type": "conv", "out": 4},
                                       {"type": "linear", "out": 30}]})), 1, ["/model/layers/1", "image layer"])
    expect_error("text: a text model without an embedding", lowmem("plan", text_config(
        "t8.json", corpus, {"layers": [{"type": "linear", "out": 30}]})), 1, ["/model/layers/0", "embedding"])
    expect_error("text: an embedding in an image model", lowmem("plan", config("t9.json", lambda c: c["model"].update(
        layers=[{"type": "embedding", "out": 4}] + c["model"]["layers"]))), 1, ["/model/layers/0", "token ids"])
    expect_error("text: a sequence layer in an image model", lowmem("plan", config("t10.json", lambda c: c["model"].update(
        layers=[{"type": "positional"}] + c["model"]["layers"]))), 1, ["/model/layers/0", "sequence"])
    expect_error("text: heads that do not divide the width of a dynamic_conv", lowmem("plan", text_config(
        "t13.json", corpus, {"layers": [{"type": "embedding", "out": 6}, {"type": "dynamic_conv", "heads": 4},
                                        {"type": "linear", "out": 30}]})), 1,
                 ["/model/layers/1", "dynamic_conv", "4 heads", "width of 6"])
    expect_error("text: heads that do not divide the width (arch dynamic_conv)", lowmem("plan", text_config(
        "t14.json", corpus, {"arch": "dynamic_conv", "depth": 1, "width": 8, "heads": 3})), 1,
                 ["/model/heads", "3 heads", "width of 8"])
    expect_error("text: a kernel of 0 taps", lowmem("plan", text_config(
        "t15.json", corpus, {"layers": [{"type": "embedding", "out": 6}, {"type": "lightweight_conv", "kernel": 0},
                                        {"type": "linear", "out": 30}]})), 1, ["/model/layers/1/kernel"])
    expect_error("text: a key a convolution does not have", lowmem("plan", text_config(
        "t16.json", corpus, {"layers": [{"type": "embedding", "out": 6}, {"type": "dynamic_conv", "mlp": 2},
                                        {"type": "linear", "out": 30}]})), 1, ["/model/layers/1/mlp", "unknown key"])
    expect_error("text: a dynamic_conv in an image model", lowmem("plan", config("t17.json", lambda c: c["model"].update(
        layers=[{"type": "dynamic_conv"}] + c["model"]["layers"]))), 1, ["/model/layers/0", "dynamic_conv", "sequence"])
    expect_error("text: the dynamic_conv architecture on images", lowmem("plan", config(
        "t18.json", lambda c: c.update(model={"arch": "dynamic_conv", "input": [1, 8, 8], "classes": 3}))), 1,
                 ["/model/arch", "sequence model"])
    (TMP / "latin1.txt").write_bytes(b"caf\xe9 " * 50)
    expect_error("text: not UTF-8 at char level", lowmem("plan", text_config("t11.json", TMP / "latin1.txt")), 1,
                 ["/data/path", "latin1.txt", "not UTF-8 at byte 3", "byte"])
    p = lowmem("plan", text_config("t12.json", TMP / "latin1.txt", level="byte"))
    check(p.returncode == 0, "text: byte level reads any bytes", describe(p))


def main():
    def with_scratch(tmp):
        global TMP
        TMP = tmp
        for section in (check_bad_input, check_determinism, check_plan, check_plan_timeline, check_results_file,
                        check_divergence, check_set, check_show, check_command_line, check_text):
            try:
                section()
            except Exception as e:  # a broken section must not hide the others
                check(False, f"{section.__name__} raised {type(e).__name__}: {e}")

    return run_sections([with_scratch])


if __name__ == "__main__":
    sys.exit(main())
