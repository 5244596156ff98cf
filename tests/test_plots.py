#!/usr/bin/env python3
"""Smoke test of plots/plot_results.py on small results files built here with h5py.

usage: test_plots.py [LOWMEM_BINARY]
The reversible-network figures are drawn from a real results file: a tiny sweep run with LOWMEM_BINARY (default
build/lowmem). Exits non-zero on the first failed check.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "plots" / "plot_results.py"
FIGURES = ["train_loss", "drift_from_f64", "test_accuracy", "gradient_error"]


def add_run(f, index, run_id, study, precision, curves=None, scalars=None):
    """One run group laid out as lib/io/results_file.cpp writes it."""
    g = f.create_group(f"runs/{run_id}")
    g.attrs["config"] = json.dumps({"study": study, "precision": precision, "seed": 0})
    g.attrs["status"] = "complete"
    g.attrs["message"] = ""
    g.attrs["index"] = np.int64(index)
    g.attrs["label_keys"] = ["precision", "study"]
    g.attrs["study"] = study
    g.attrs["precision"] = precision
    for key, value in (scalars or {}).items():
        g.attrs[key] = float(value)
    for key, values in (curves or {}).items():
        g[f"curves/{key}"] = np.asarray(values, dtype=float)


def add_summary(f):
    runs = sorted(f["runs"].values(), key=lambda g: g.attrs["index"])
    dtype = [("run_id", "S32"), ("status", "S16"), ("message", "S1"), ("precision", "S8"), ("study", "S16")]
    f["summary"] = np.array([(g.name.split("/")[-1], "complete", "", g.attrs["precision"], g.attrs["study"])
                             for g in runs], dtype=dtype)


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def run_sweep(binary, config, tmp):
    """Runs a config with lowmem (one thread) into tmp/<name>.h5 and returns that path."""
    path, results = tmp / f"{config['name']}.json", tmp / f"{config['name']}.h5"
    path.write_text(json.dumps(config))
    run = subprocess.run([binary, "run", path, "--out", results, "--threads", "1", "--quiet"], capture_output=True,
                         text=True)
    check(run.returncode == 0, f"lowmem runs the {config['name']} sweep ({run.stderr.strip()[-300:]})")
    return results


REVERSIBLE_FIGURES = ["snr_vs_depth", "alpha_vs_slope", "gradient_angle_vs_depth", "pixel_memory"]


def check_reversible_figures(binary, tmp):
    """A tiny sweep with every study the reversible figures read, run by lowmem itself, then plotted."""
    model = {"arch": "flat", "stages": 1, "blocks": 1, "width": 4, "slope": 0.2, "input": [1, 8, 8], "classes": 3}
    config = {"name": "reversible", "model": model, "technique": {"type": "store_all"},
              "data": {"dataset": "synthetic", "synthetic": {"count": 16, "test_count": 8, "shape": [1, 8, 8],
                                                             "classes": 3}},
              "train": {"batch": 4, "steps": 2, "optimizer": {"lr": 0.05}},
              "sweep": [{"study": ["reconstruction"], "model.arch": ["flat", "hybrid"], "model.blocks": [1, 2],
                         "model.slope": [0.2, 0.5], "precision": ["f32", "f16"]},
                        {"study": ["gradient"], "technique.type": ["reversible"], "model.blocks": [1, 2],
                         "precision": ["f32", "bf16"]},
                        {"study": ["train"], "model.arch": ["flat", "revnet"],
                         "technique.type": ["store_all", "reversible"]}]}
    results = run_sweep(binary, config, tmp)
    result = run_script(results, "--out", tmp / "reversible_out")
    check(result.returncode == 0, f"plot script exits 0 on it ({result.stderr.strip()})")
    for name in REVERSIBLE_FIGURES:
        path = tmp / "reversible_out" / f"{name}.png"
        check(path.is_file() and path.stat().st_size > 0, f"{name}.png written from lowmem's own results")


def check_timeline_figures(binary, tmp):
    """plots/plot_timeline.py on lowmem plan --timeline --json of a two-run sweep: one figure per run; a file that
    is not such output: one line, exit 1."""
    config = {"name": "timeline", "model": {"arch": "cnn", "channels": [4], "input": [1, 8, 8], "classes": 3},
              "data": {"dataset": "synthetic", "synthetic": {"shape": [1, 8, 8], "classes": 3}},
              "train": {"batch": 4, "optimizer": {"lr": 0.05}},
              "sweep": {"technique": [{"type": "store_all"}, {"type": "checkpoint"}]}}
    path, timeline = tmp / "timeline.json", tmp / "timeline-out.json"
    path.write_text(json.dumps(config))
    plan = subprocess.run([binary, "plan", path, "--timeline", "--json", "--threads", "1"], capture_output=True,
                          text=True)
    check(plan.returncode == 0, f"lowmem plan --timeline --json ({plan.stderr.strip()[-300:]})")
    timeline.write_text(plan.stdout)
    runs = json.loads(plan.stdout)
    script = SCRIPT.parent / "plot_timeline.py"
    result = subprocess.run([sys.executable, str(script), timeline, "--out", tmp / "timeline_out"],
                            capture_output=True, text=True)
    check(result.returncode == 0, f"plot_timeline exits 0 ({result.stderr.strip()})")
    for run in runs:
        png = tmp / "timeline_out" / f"timeline-{run['position'] + 1:03d}-{run['run_id']}.png"
        check(png.is_file() and png.stat().st_size > 0 and str(png) in result.stdout,
              f"{png.name} written and printed")
    results = tmp / "timeline.h5"
    run = subprocess.run([binary, "run", path, "--timeline", "--out", results, "--threads", "1", "--quiet"],
                         capture_output=True, text=True)
    check(run.returncode == 0, f"lowmem run --timeline ({run.stderr.strip()[-300:]})")
    result = subprocess.run([sys.executable, str(script), results, "--out", tmp / "timeline_h5"],
                            capture_output=True, text=True)
    pngs = sorted((tmp / "timeline_h5").glob("*.png"))
    check(result.returncode == 0 and len(pngs) == len(runs) and all(p.stat().st_size > 0 for p in pngs),
          f"plot_timeline draws each run's measured timeline from a results file ({result.stderr.strip()})")
    without = tmp / "without-timelines.h5"
    run = subprocess.run([binary, "run", path, "--out", without, "--threads", "1", "--quiet"], capture_output=True,
                         text=True)
    result = subprocess.run([sys.executable, str(script), without], capture_output=True, text=True)
    check(run.returncode == 0 and result.returncode == 1 and "recorded a timeline" in result.stderr and
          len(result.stderr.strip().splitlines()) == 1,
          "plot_timeline on a results file without timelines: one line, exit 1")
    bad = tmp / "not-a-timeline.json"
    bad.write_text("{}")
    result = subprocess.run([sys.executable, str(script), bad], capture_output=True, text=True)
    check(result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and str(bad) in result.stderr,
          "plot_timeline on a file that is not a timeline: one line naming it, exit 1")


def runs_in_order(results):
    """Each run's attributes (numbers as floats), in sweep order."""
    with h5py.File(results, "r") as f:
        runs = sorted(f["runs"].values(), key=lambda g: int(g.attrs["sweep_index"]))
        return [{k: (float(v) if isinstance(v, (int, float, np.number)) else v) for k, v in g.attrs.items()}
                for g in runs]


def check_normalisation_figure(binary, tmp):
    """A tiny normalisation sweep (two norms, two microbatch sizes, two seeds) run by lowmem, then plotted; the
    figure's table holds each run's accuracy under its norm and microbatch size."""
    config = {"name": "norms", "model": {"arch": "cnn", "channels": [4], "input": [1, 8, 8], "classes": 3},
              "technique": {"type": "microbatch", "count": 1},
              "data": {"dataset": "synthetic", "synthetic": {"count": 16, "test_count": 8, "shape": [1, 8, 8],
                                                             "classes": 3}},
              "train": {"batch": 4, "steps": 2, "optimizer": {"lr": 0.05}},
              "sweep": [{"model.norm": ["batchnorm", "layernorm"], "technique.count": [1, 4], "seed": [0, 1]},
                        {"model.norm": ["groupnorm"], "model.groups": [2], "model.proxy": [True],
                         "technique.count": [1, 4], "seed": [0, 1]},
                        {"model.norm": ["layernorm"], "precision": ["f64"], "technique.count": [1, 4],
                         "seed": [0, 1]}]}
    results = run_sweep(binary, config, tmp)
    result = run_script(results, "--out", tmp / "norms_out")
    png = tmp / "norms_out" / "accuracy_vs_microbatch.png"
    check(result.returncode == 0 and png.is_file() and png.stat().st_size > 0, "accuracy_vs_microbatch.png written")
    sys.path.insert(0, str(SCRIPT.parent))
    import plot_results
    with h5py.File(results, "r") as f:
        runs = plot_results.load_runs(f)
        table = plot_results.accuracy_by_microbatch(runs)
        expected = {}
        for r in runs:
            c = json.loads(r["attrs"]["config"])
            label = {"batchnorm": "BN", "layernorm": "LN", "groupnorm": "GN(2)+PN"}[c["model"]["norm"]]
            if label == "LN":  # two LN lines: f32 and f64, told apart by technique and precision
                label += f" store_all {c.get('precision', 'f32')}"
            size = 4 // c["technique"]["count"]
            expected.setdefault(("cnn", label), {}).setdefault(size, []).append(float(r["attrs"]["test_accuracy"]))
    check(table == expected and sorted(table) == [("cnn", "BN"), ("cnn", "GN(2)+PN"), ("cnn", "LN store_all f32"),
                                                  ("cnn", "LN store_all f64")] and
          all(sorted(v) == [1, 4] and all(len(a) == 2 for a in v.values()) for v in table.values()),
          "the figure's table: one line per norm, two seeds at microbatch sizes 1 and 4")
    markdown = (tmp / "norms_out" / "accuracy_vs_microbatch.md").read_text().splitlines()
    bn = expected[("cnn", "BN")][1]
    check(len(markdown) == 6 and markdown[2].startswith(f"| cnn | BN | {np.mean(expected[('cnn', 'BN')][4]):.4f}")
          and f"{np.mean(bn):.4f} ({min(bn):.4f}-{max(bn):.4f}, n=2)" in markdown[2],
          "accuracy_vs_microbatch.md: one row per norm, mean and range over seeds at each microbatch size")
    lines = (tmp / "norms_out" / "techniques.md").read_text().splitlines()
    rows, first = lines[4:], runs_in_order(results)
    check(lines[0] == "Reduction: against BN microbatch(1) seed 0 f32." and len(rows) == len(first) == 16
          and all(row.startswith(f"| {label} | f32 |") and f"| {run['test_accuracy']:.4f} |" in row
                  for row, label, run in zip(rows[:2], ["BN microbatch(1) seed 0", "BN microbatch(4) seed 0"], first))
          and "| 1.0x |" in rows[0] and f"| {first[0]['peak_bytes'] / first[1]['peak_bytes']:.1f}x |" in rows[1],
          "techniques.md: one row per run in sweep order, reductions against the first run (no f32 store_all here)")


def main():
    binary = Path(sys.argv[1]) if len(sys.argv) > 1 else SCRIPT.parent.parent / "build" / "lowmem"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        check_reversible_figures(binary, tmp)
        check_timeline_figures(binary, tmp)
        check_normalisation_figure(binary, tmp)
        steps = np.arange(50)
        full = tmp / "full.h5"
        with h5py.File(full, "w") as f:
            f.attrs["format"] = "lowmem results 1"
            for i, precision in enumerate(["f32", "bf16", "f16", "f64"]):
                loss = 2.3 * np.exp(-steps / 20.0) + 0.1 + (0 if precision == "f64" else 1e-3 * (i + 1))
                add_run(f, i, f"train-{precision}", "train", precision,
                        curves={"train_loss": loss, "step": steps, "test_accuracy": [0.8, 0.85 + 0.01 * i]})
            for i, (precision, err) in enumerate([("f16", 1e-3), ("bf16", 8e-3), ("f32", 1e-7), ("f64", 1e-15)]):
                add_run(f, 10 + i, f"grad-{precision}", "gradient", precision, scalars={"grad_max_rel_error": err})
            add_summary(f)
        out = tmp / "out"
        result = run_script(full, "--out", out)
        check(result.returncode == 0, f"plot script exits 0 on a full file ({result.stderr.strip()})")
        for name in FIGURES:
            for ext in ("png", "pdf"):
                path = out / f"{name}.{ext}"
                check(path.is_file() and path.stat().st_size > 0, f"{path.name} written and non-empty")
                check(str(path) in result.stdout, f"{path.name} path printed")

        # Only one train run, no f64 and no gradient study: the missing figures are skipped, not fatal.
        partial = tmp / "partial.h5"
        with h5py.File(partial, "w") as f:
            add_run(f, 0, "only", "train", "f32", curves={"train_loss": [2.0, 1.0, 0.5]})
            add_summary(f)
        result = run_script(partial, "--out", tmp / "partial_out")
        check(result.returncode == 0, "plot script exits 0 on a partial file")
        check((tmp / "partial_out" / "train_loss.png").stat().st_size > 0, "partial: train_loss.png written")
        for name in ("drift_from_f64", "test_accuracy", "gradient_error"):
            check(f"skipped: {name}:" in result.stdout, f"partial: {name} reported as skipped")

        garbage = tmp / "garbage.h5"
        garbage.write_bytes(b"not an HDF5 file at all")
        result = run_script(garbage, "--out", tmp / "garbage_out")
        check(result.returncode != 0 and "is not an HDF5 file" in result.stderr, "non-HDF5 file: clear error, exit != 0")
        result = run_script(tmp / "missing.h5")
        check(result.returncode != 0 and "does not exist" in result.stderr, "missing file: clear error, exit != 0")
    print("test_plots: all checks passed")


if __name__ == "__main__":
    main()
