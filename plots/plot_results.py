#!/usr/bin/env python3
"""Render every figure a lowmem results file supports, as PNG and PDF.

usage: /usr/bin/python3 plots/plot_results.py RESULTS.h5 [--out DIR]

DIR defaults to plots/out/<stem of RESULTS.h5>. Prints the path of every file written, and
"skipped: <figure>: <reason>" for each figure the file has no data for.
Layout read (written by lib/io/results_file.cpp): /runs/<run_id> groups with string attributes config, study,
precision, status, numeric attributes such as grad_max_rel_error, and datasets curves/train_loss,
curves/step, curves/test_accuracy.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and in CI
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Unit roundoff of each precision, drawn beside measured errors as the scale they should be read against.
UNIT_ROUNDOFF = {"f16": 2.0**-11, "bf16": 2.0**-8, "f32": 2.0**-24, "f64": 2.0**-53}


class Skip(Exception):
    """A figure has no data in this file; not an error."""


def text(value):
    """Attribute value as str: h5py gives str for variable-length strings, bytes for fixed-length ones."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    return str(value)


def load_runs(f):
    """Run groups in creation order (attribute "index"), each as a dict of attributes plus the group."""
    runs = []
    for run_id, group in f["runs"].items():
        if not isinstance(group, h5py.Group):
            continue
        attrs = dict(group.attrs)
        runs.append({"id": run_id, "group": group, "attrs": attrs,
                     "study": text(attrs.get("study", "")), "precision": text(attrs.get("precision", ""))})
    runs.sort(key=lambda r: (int(r["attrs"].get("index", sys.maxsize)), r["id"]))
    return runs


def legend_labels(runs):
    """Precision, or precision and run id where several runs share a precision."""
    counts = {}
    for r in runs:
        counts[r["precision"]] = counts.get(r["precision"], 0) + 1
    return [r["precision"] or r["id"] if counts[r["precision"]] == 1 else f"{r['precision']} ({r['id']})"
            for r in runs]


def loss_curve(run):
    """(steps, losses) of a run, or None; steps from curves/step when it matches, else 0, 1, 2, ..."""
    group = run["group"]
    if "curves/train_loss" not in group:
        return None
    loss = np.asarray(group["curves/train_loss"][()], dtype=float).ravel()
    step = np.arange(loss.size, dtype=float)
    if "curves/step" in group:
        given = np.asarray(group["curves/step"][()], dtype=float).ravel()
        if given.size == loss.size:
            step = given
    return step, loss


def positive(y):
    """Non-positive values cannot be drawn on a log axis: blank them rather than fail."""
    y = np.array(y, dtype=float)
    y[~(y > 0)] = np.nan
    return y


def config_without_precision(run):
    try:
        config = json.loads(text(run["attrs"].get("config", "")))
    except ValueError:
        return None
    if isinstance(config, dict):
        config.pop("precision", None)
    return config


def train_runs_with_loss(runs):
    found = [(r, loss_curve(r)) for r in runs if r["study"] == "train"]
    found = [(r, c) for r, c in found if c is not None and c[1].size > 0]
    if not found:
        raise Skip("no run with study 'train' and a curves/train_loss dataset")
    return found


def fig_loss(runs, ax):
    found = train_runs_with_loss(runs)
    for label, (run, (step, loss)) in zip(legend_labels([r for r, _ in found]), found):
        ax.plot(step, positive(loss), label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.set_title("Training loss per step")


def fig_drift(runs, ax):
    found = train_runs_with_loss(runs)
    references = [(r, c) for r, c in found if r["precision"] == "f64"]
    if not references:
        raise Skip("no f64 run with study 'train' to compare against")
    others = [(r, c) for r, c in found if r["precision"] != "f64"]
    drawn = []
    for run, (step, loss) in others:
        config = config_without_precision(run)
        match = next((c for ref, c in references if config is not None and config_without_precision(ref) == config),
                     None)
        if match is None:
            continue
        # Compare the losses at the steps both runs recorded.
        common, mine, theirs = np.intersect1d(step, match[0], return_indices=True)
        if common.size:
            drawn.append((run, common, np.abs(loss[mine] - match[1][theirs])))
    if not drawn:
        raise Skip("no train run whose config matches an f64 run's apart from precision")
    for label, (run, step, drift) in zip(legend_labels([d[0] for d in drawn]), drawn):
        ax.plot(step, positive(drift), label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("|loss - loss(f64)| (nats)")
    ax.set_title("Drift of the training loss from the f64 run")


def fig_accuracy(runs, ax):
    found = [r for r in runs if "curves/test_accuracy" in r["group"]]
    found = [(r, np.asarray(r["group"]["curves/test_accuracy"][()], dtype=float).ravel()) for r in found]
    found = [(r, acc) for r, acc in found if acc.size > 0]
    if not found:
        raise Skip("no run with a curves/test_accuracy dataset")
    for label, (run, acc) in zip(legend_labels([r for r, _ in found]), found):
        ax.plot(np.arange(1, acc.size + 1), acc, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_title("Test accuracy per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)


def fig_gradient(runs, ax):
    found = [r for r in runs if r["study"] == "gradient" and "grad_max_rel_error" in r["attrs"]]
    found = [(r, float(r["attrs"]["grad_max_rel_error"])) for r in found]
    found = [(r, e) for r, e in found if np.isfinite(e) and e > 0]  # 0 or NaN has no place on a log axis
    if not found:
        raise Skip("no run with study 'gradient' and a positive grad_max_rel_error attribute")
    labels = legend_labels([r for r, _ in found])
    x = np.arange(len(found))
    ax.bar(x, [e for _, e in found], color="tab:blue", label="max relative error")
    roundoff = [UNIT_ROUNDOFF.get(r["precision"], np.nan) for r, _ in found]
    ax.scatter(x, roundoff, marker="_", s=600, color="black", label="unit roundoff")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_xlabel("precision")
    ax.set_ylabel("max relative gradient error vs mp (dimensionless)")
    ax.set_title("Gradient error against the multiprecision reference")


def fig_gradient_by_layer(runs, ax):
    """Relative error of each layer's gradients against the reference, per precision, in forward order."""
    found = [r for r in runs if r["study"] == "gradient" and "gradient_error" in r["group"]]
    if not found:
        raise Skip("no run with study 'gradient' and gradient_error/relative")
    for r, label in zip(found, legend_labels(found)):
        errors = np.asarray(r["group"]["gradient_error/relative"][()], dtype=float)
        ax.plot(np.arange(len(errors)), positive(errors), marker="o", label=label)
        names = [text(n) for n in r["group"]["gradient_error/layers"][()]]
    ax.set_xticks(np.arange(len(names)), [n.replace("layers/", "") for n in names])
    ax.set_yscale("log")
    ax.set_xlabel("layer (index in model.layers, forward order)")
    ax.set_ylabel("||g - g_ref|| / ||g_ref|| (dimensionless)")
    ax.set_title("Gradient error per layer against the reference")


FIGURES = [("train_loss", fig_loss), ("drift_from_f64", fig_drift), ("test_accuracy", fig_accuracy),
           ("gradient_error", fig_gradient), ("gradient_error_by_layer", fig_gradient_by_layer)]


def main():
    parser = argparse.ArgumentParser(description="Render every figure a lowmem results file supports.")
    parser.add_argument("results", help="results file written by lowmem run (.h5)")
    parser.add_argument("--out", help="output directory (default: plots/out/<stem of the results file>)")
    args = parser.parse_args()

    path = Path(args.results)
    if not path.is_file():
        sys.exit(f"plot_results.py: {path} does not exist (expected a lowmem results .h5 file)")
    if not h5py.is_hdf5(path):
        sys.exit(f"plot_results.py: {path} is not an HDF5 file (expected a lowmem results .h5 file)")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "out" / path.stem
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        sys.exit(f"plot_results.py: {path} cannot be read, it may be corrupt or truncated ({e})")
    with f:
        if not isinstance(f.get("runs"), h5py.Group):
            sys.exit(f"plot_results.py: {path} has no /runs group (expected a lowmem results file)")
        runs = load_runs(f)
        out.mkdir(parents=True, exist_ok=True)
        for name, draw in FIGURES:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            try:
                draw(runs, ax)
            except Skip as why:
                print(f"skipped: {name}: {why}")
                plt.close(fig)
                continue
            ax.grid(True, which="major", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            for ext in ("png", "pdf"):
                target = out / f"{name}.{ext}"
                fig.savefig(target, dpi=150)
                print(target)
            plt.close(fig)


if __name__ == "__main__":
    main()
