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
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and in CI
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lowmem_results import load_runs, text  # noqa: E402  the reader shipped beside the plots

# Unit roundoff of each precision, drawn beside measured errors as the scale they should be read against.
UNIT_ROUNDOFF = {"f16": 2.0**-11, "bf16": 2.0**-8, "f32": 2.0**-24, "f64": 2.0**-53, "dd": 2.0**-106}


class Skip(Exception):
    """A figure has no data in this file; not an error."""




def legend_labels(runs):
    """What tells the runs apart among model, technique (its readable label, technique_label, where the file has
    it), precision and the swept values (attributes named by dotted config paths, shown as path=value); the run
    id where that is not enough."""
    def value(r, k):
        v = r["attrs"].get(k, "")
        return f"{float(v):g}" if isinstance(v, (float, np.floating)) else text(v)
    technique = "technique_label" if all("technique_label" in r["attrs"] for r in runs) else "technique"
    swept = sorted({k for r in runs for k in r["attrs"] if "." in k})
    keys = [k for k in ("model", technique, "precision", *swept) if len({value(r, k) for r in runs}) > 1]
    labels = [" ".join(f"{k}={value(r, k)}" if k in swept else value(r, k) for k in keys) or r["precision"] or r["id"]
              for r in runs]
    return [label if labels.count(label) == 1 else f"{label} ({r['id']})" for label, r in zip(labels, runs)]


def config_of(run):
    try:
        config = json.loads(text(run["attrs"].get("config", "")))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def model_key(run, key):
    """A number from the run's model config (blocks, slope, ...), or None."""
    value = config_of(run).get("model", {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def depth_of(run):
    """A model's depth in blocks: the reversible networks' model.blocks, a Transformer's model.depth."""
    blocks = model_key(run, "blocks")
    return blocks if blocks is not None else model_key(run, "depth")


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
    """The run's config without its precision; None if the config attribute does not parse."""
    config = dict(config_of(run))
    config.pop("precision", None)
    return config or None


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


PRECISION_COLORS = {"mp": "black", "dd": "tab:purple", "f64": "tab:blue", "f32": "tab:green", "bf16": "tab:orange",
                    "f16": "tab:red"}
ARCH_STYLES = {"flat": "-", "hybrid": "--", "revnet": ":"}


def lines_by_arch_and_precision(ax, points, ylabel):
    """points: {(arch, precision, extra): [(x, y), ...]} drawn as one line each, color by precision, style by arch."""
    for (arch, precision, extra), xy in sorted(points.items()):
        xy.sort()
        ax.plot([x for x, _ in xy], positive([y for _, y in xy]), ARCH_STYLES.get(arch, "-"), marker="o",
                color=PRECISION_COLORS.get(precision), label=f"{arch} {precision}{extra}")
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)


# Config values besides depth that may vary in a sweep: runs that differ in one are separate lines.
LINE_KEYS = [("model", "slope"), ("model", "width"), ("model", "stages"), ("reconstruction", "weights"), ("seed",)]


def config_value(run, path):
    value = config_of(run)
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def points_by_depth(runs, value):
    """{line label: [(model.blocks, value(run)), ...]} over runs for which value(run) is not None; one line per
    architecture and precision, and per value of any other config key (LINE_KEYS) that varies among them."""
    selected = [(r, depth_of(r), value(r)) for r in runs]
    selected = [(r, b, y) for r, b, y in selected if b is not None and y is not None]
    varying = [p for p in LINE_KEYS if len({json.dumps(config_value(r, p)) for r, _, _ in selected}) > 1]
    points = {}
    for r, blocks, y in selected:
        extra = "".join(f" {p[-1]}={config_value(r, p)}" for p in varying)
        key = (text(r["attrs"].get("model", "")), r["precision"], extra)
        points.setdefault(key, []).append((blocks, y))
    return points


def fig_snr_vs_depth(runs, ax):
    """Hascoet et al.'s measurement, per precision: SNR of the network input rebuilt through every block."""
    points = points_by_depth(runs, lambda r: float(r["attrs"]["input_snr"])
                             if r["study"] == "reconstruction" and "input_snr" in r["attrs"] else None)
    if not any(len(xy) > 1 for xy in points.values()):
        raise Skip("no reconstruction runs at two or more depths (sweep model.blocks)")
    lines_by_arch_and_precision(ax, points, "SNR of the rebuilt input, mean(x^2) / mean((x - x^)^2)")
    ax.axhline(1, color="gray", linewidth=0.8)
    ax.set_xlabel("reversible blocks (model.blocks, or model.depth)")
    ax.set_title("Reconstruction SNR against depth (NaN/overflow not drawn)")


def alpha_by_slope(runs):
    """{precision: [(model.slope, alphas of the run's leaky ReLU layers), ...]} over reconstruction runs."""
    found = {}
    for r in runs:
        slope = model_key(r, "slope")
        group = r["group"]
        if r["study"] != "reconstruction" or slope is None or "reconstruction/alpha" not in group:
            continue
        names = [text(n) for n in group["reconstruction/layer_names"][()]]
        alpha = np.asarray(group["reconstruction/alpha"][()], dtype=float)
        values = [a for n, a in zip(names, alpha) if "leaky_relu" in n and np.isfinite(a) and a > 0]
        if values:
            found.setdefault(r["precision"], []).append((slope, values))
    if not found:
        raise Skip("no reconstruction runs with leaky ReLU layers and a model.slope")
    return found


def fig_alpha_vs_slope(runs, ax):
    """Measured per-operation amplification of invertible leaky ReLU layers against the closed form."""
    found = {p: [(s, np.median(v), np.min(v), np.max(v)) for s, v in rows] for p, rows in alpha_by_slope(runs).items()}
    phi = np.linspace(0.02, 1.0, 200)
    ax.plot(phi, 4 / ((1 + phi**2) * (1 + 1 / phi**2)), color="black",
            label="closed form 4 / ((1+phi^2)(1+1/phi^2))")
    for precision, rows in sorted(found.items()):
        rows.sort()
        x, med, lo, hi = (np.array(c) for c in zip(*rows))
        ax.errorbar(x, med, yerr=[med - lo, hi - med], fmt="o", capsize=3, color=PRECISION_COLORS.get(precision),
                    label=f"measured, {precision} (median, range over layers)")
    ax.set_yscale("log")
    ax.set_xlabel("leaky ReLU slope phi")
    ax.set_ylabel("alpha = SNR_in / SNR_out (dimensionless)")
    ax.set_title("Error amplification of one leaky ReLU inversion")


def fig_gradient_angle_vs_depth(runs, ax):
    """Angle between reversible-backprop gradients and the mp reference (stored activations), worst layer."""
    def worst_angle(r):
        if (r["study"] != "gradient" or text(r["attrs"].get("technique", "")) != "reversible"
                or "gradient_error/angle_degrees" not in r["group"]):
            return None
        angles = np.asarray(r["group"]["gradient_error/angle_degrees"][()], dtype=float)
        return np.nanmax(angles) if np.isfinite(angles).any() else np.nan

    points = points_by_depth(runs, worst_angle)
    if not any(len(xy) > 1 for xy in points.values()):
        raise Skip("no reversible gradient runs at two or more depths")
    lines_by_arch_and_precision(ax, points, "largest angle over layers (degrees)")
    ax.set_xlabel("reversible blocks (model.blocks, or model.depth)")
    ax.set_title("Reversible-backprop gradients against mp gradients (stored activations)")


def fig_pixel_memory(runs, ax):
    """Peak training memory per input pixel (Hascoet et al.), per architecture, one bar per technique and
    precision (the smallest over runs that differ otherwise)."""
    found = [r for r in runs if r["study"] == "train" and "pixel_memory_bytes" in r["attrs"]
             and text(r["attrs"].get("model", "")) in ARCH_STYLES]
    if not found:
        raise Skip("no train runs of revnet, hybrid or flat with pixel_memory_bytes")
    archs = sorted({text(r["attrs"]["model"]) for r in found})
    bars = sorted({(text(r["attrs"].get("technique", "")), r["precision"]) for r in found})
    width = 0.8 / len(bars)
    for k, (technique, precision) in enumerate(bars):
        values = []
        for arch in archs:
            match = [float(r["attrs"]["pixel_memory_bytes"]) for r in found if text(r["attrs"]["model"]) == arch
                     and text(r["attrs"].get("technique", "")) == technique and r["precision"] == precision]
            values.append(min(match) if match else np.nan)
        ax.bar(np.arange(len(archs)) + k * width, values, width, label=f"{technique} {precision}")
    ax.axhline(352, color="black", linestyle="--", label="Hascoet et al. (paper): 352 B/pixel")
    ax.set_xticks(np.arange(len(archs)) + width * (len(bars) - 1) / 2, archs)
    ax.set_yscale("log")
    ax.set_xlabel("architecture")
    ax.set_ylabel("peak training memory / (batch x H x W) (bytes per pixel)")
    ax.set_title("Pixel-wise memory cost")


def technique_runs(runs):
    """Completed train runs of a sweep over techniques (two or more distinct technique labels)."""
    found = [r for r in runs if r["study"] == "train" and text(r["attrs"].get("status", "")) == "complete"
             and "memory/at_total_peak_bytes" in r["group"]]
    if len({(text(r["attrs"].get("technique", "")), r["precision"]) for r in found}) < 2:
        raise Skip("no train runs of two or more techniques or precisions")
    # In the sweep's order (the config's), not the order the runs finished in (--jobs).
    return sorted(found, key=lambda r: int(r["attrs"].get("sweep_index", 0)))


def fig_memory_by_category(runs, ax):
    """What the peak is made of, per technique: the ledger's categories at the moment of the total peak."""
    found = technique_runs(runs)
    labels = legend_labels(found)
    categories = [text(c) for c in found[0]["group"]["memory/categories"][()]]
    bottom = np.zeros(len(found))
    for k, category in enumerate(categories):
        values = np.array([float(r["group"]["memory/at_total_peak_bytes"][()][k]) for r in found]) / 2**20
        ax.bar(np.arange(len(found)), values, bottom=bottom, label=category)
        bottom += values
    ax.set_xticks(np.arange(len(found)), labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("peak training memory (MiB), by ledger category")
    ax.set_title("Memory at the peak, per technique")


def numbered_points(ax, xs, ys, labels):
    """One numbered marker per run; the legend (right of the axes) says which number is which technique."""
    markers = "osD^v<>pP*Xh"
    for k, (x, y, label) in enumerate(zip(xs, ys, labels)):
        ax.scatter(x, y, marker=markers[k % len(markers)], label=f"{k + 1}: {label}", zorder=3)
        ax.annotate(str(k + 1), (x, y), fontsize="x-small", xytext=(4, 3), textcoords="offset points")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.figure.set_size_inches(13, 5)  # room for the legend beside the axes


def fig_memory_vs_time(runs, ax):
    """Peak memory against time per step, with the Pareto front (no other run is both smaller and faster)."""
    found = [r for r in technique_runs(runs) if "step_seconds" in r["attrs"]]
    points = [(float(r["attrs"]["step_seconds"]), float(r["attrs"]["peak_bytes"]) / 2**20) for r in found]
    front = sorted(p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points))
    ax.plot([t for t, _ in front], [m for _, m in front], "k--", linewidth=0.8, label="Pareto front")
    numbered_points(ax, [t for t, _ in points], [m for _, m in points], legend_labels(found))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per training step (s, median)")
    ax.set_ylabel("peak training memory (MiB)")
    ax.set_title("Memory against compute")


def fig_accuracy_vs_memory(runs, ax):
    found = [r for r in technique_runs(runs) if np.isfinite(float(r["attrs"].get("test_accuracy", np.nan)))]
    if not found:
        raise Skip("no technique runs with a test accuracy")
    # The techniques study's goal (Sohoni et al.): 50x less memory than f32 store_all, at most 1 point less accuracy.
    baseline = [r for r in found if text(r["attrs"].get("technique", "")) == "store_all" and r["precision"] == "f32"]
    if baseline:
        peak, accuracy = float(baseline[0]["attrs"]["peak_bytes"]) / 2**20, float(baseline[0]["attrs"]["test_accuracy"])
        ax.axhline(accuracy - 0.01, color="gray", linestyle=":", label="store_all f32 accuracy - 1 point")
        ax.axvline(peak / 50, color="gray", linestyle="--", label="store_all f32 peak / 50")
    numbered_points(ax, [float(r["attrs"]["peak_bytes"]) / 2**20 for r in found],
                    [float(r["attrs"]["test_accuracy"]) for r in found], legend_labels(found))
    ax.set_xscale("log")
    ax.set_xlabel("peak training memory (MiB)")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_title("Accuracy against memory")


def microbatch_count(config):
    """Microbatches per batch in a run's config (1 without the microbatch technique)."""
    technique = config.get("technique", {})
    for t in technique if isinstance(technique, list) else [technique]:
        if isinstance(t, dict) and t.get("type") == "microbatch":
            return int(t.get("count", 1))
    return 1


def norm_label(model):
    """The normalisation a cnn or resnet model config names: BN, GN(8), LN, IN, with +PN for Proxy Norm."""
    norm = model.get("norm")
    if norm is None:  # the cnn's older keys
        norm = "groupnorm" if model.get("groupnorm", 0) else "batchnorm" if model.get("batchnorm", True) else "none"
    short = {"batchnorm": "BN", "groupnorm": "GN", "layernorm": "LN", "instancenorm": "IN", "none": "no norm"}[norm]
    if norm == "groupnorm":
        short += f"({model.get('groups', model.get('groupnorm'))})"
    return short + ("+PN" if model.get("proxy") else "")


def without_microbatching(config):
    """The config with what a line of accuracy_vs_microbatch runs over taken out: seed, evaluation batch and the
    microbatch count (the runs of one line differ in these only)."""
    config = json.loads(json.dumps(config))
    config.pop("seed", None)
    config.get("train", {}).pop("eval_batch", None)
    technique = config.get("technique", {})
    for t in technique if isinstance(technique, list) else [technique]:
        if isinstance(t, dict) and t.get("type") == "microbatch":
            t.pop("count", None)
    return json.dumps(config, sort_keys=True)


def accuracy_by_microbatch(runs, value=lambda r: float(r["attrs"].get("test_accuracy", np.nan))):
    """{(arch, norm label): {microbatch size: [value(run) per seed]}} (by default the test accuracy)."""
    return values_of(runs_by_microbatch(runs), value)


def values_of(grouped, value):
    """runs_by_microbatch's grouping with each run replaced by value(run)."""
    return {key: {size: [value(r) for r in members] for size, members in by_size.items()}
            for key, by_size in grouped.items()}


def runs_by_microbatch(runs):
    """{(arch, norm label): {microbatch size: [run per seed]}} over completed train runs of cnn and resnet models;
    Skip unless some normalisation was run at two or more microbatch sizes.
    Runs whose configs differ in more than seed, evaluation batch and microbatch count are separate lines: the label
    then also names the run's technique and precision."""
    groups = {}
    for r in runs:
        config = config_of(r)
        model = config.get("model", {})
        accuracy = float(r["attrs"].get("test_accuracy", np.nan))
        if (r["study"] != "train" or text(r["attrs"].get("status", "")) != "complete" or not np.isfinite(accuracy)
                or model.get("arch") not in ("cnn", "resnet")):
            continue
        size = int(config.get("train", {}).get("batch", 0)) // microbatch_count(config)
        groups.setdefault(without_microbatching(config), []).append((r, size))
    labels = {key: (members[0][0]["attrs"], config_of(members[0][0])["model"]) for key, members in groups.items()}
    short = {key: (model["arch"], norm_label(model)) for key, (_, model) in labels.items()}
    table = {}
    for key, members in groups.items():
        name = short[key]
        if list(short.values()).count(name) > 1:  # the same model and norm under other techniques or precisions
            attrs = labels[key][0]
            technique = re.sub(r"\+?microbatch-\d+", "", text(attrs.get("technique", ""))).strip("+")
            name = (name[0], f"{name[1]} {technique or 'store_all'} {text(attrs.get('precision', ''))}")
        for r, size in members:
            table.setdefault(name, {}).setdefault(size, []).append(r)
    if not any(len(sizes) > 1 for sizes in table.values()):
        raise Skip("no normalisation of a cnn or resnet run at two or more microbatch sizes")
    return table


def fig_accuracy_vs_microbatch(runs, ax):
    """Labatie et al.'s comparison: test accuracy against microbatch size, one line per model and normalisation,
    the mean over seeds with error bars from the lowest to the highest seed."""
    all_sizes = set()
    for (arch, norm), by_size in sorted(accuracy_by_microbatch(runs).items()):
        sizes = sorted(by_size)
        all_sizes.update(sizes)
        mean = np.array([np.mean(by_size[s]) for s in sizes])
        low = mean - np.array([min(by_size[s]) for s in sizes])
        high = np.array([max(by_size[s]) for s in sizes]) - mean
        ax.errorbar(sizes, mean, yerr=[low, high], marker="o", capsize=3, linewidth=1,
                    linestyle="-" if arch == "cnn" else "--", label=f"{arch} {norm}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_sizes), [str(s) for s in sorted(all_sizes)])
    ax.set_xlabel("microbatch size (images; gradients accumulated to the batch)")
    ax.set_ylabel("test accuracy (mean over seeds; bars: min to max)")
    ax.set_title("Accuracy against microbatch size, per normalisation")


def table_accuracy_vs_microbatch(runs):
    """The figure's numbers as a Markdown table: per model and normalisation, at each microbatch size, the test
    accuracy's mean over seeds and its range (min-max), the peak memory (MiB) and the median time per step (s)."""
    grouped = runs_by_microbatch(runs)
    accuracy = values_of(grouped, lambda r: float(r["attrs"].get("test_accuracy", np.nan)))
    peak = values_of(grouped, lambda r: float(r["attrs"].get("peak_bytes", np.nan)) / 2**20)
    step = values_of(grouped, lambda r: float(r["attrs"].get("step_seconds", np.nan)))
    sizes = sorted({s for by_size in accuracy.values() for s in by_size}, reverse=True)
    lines = ["| model | norm | " + " | ".join(f"microbatch {s}" for s in sizes) + " |",
             "| --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
    for key in sorted(accuracy):
        cells = []
        for s in sizes:
            a = accuracy[key].get(s)
            cells.append("" if not a else f"{np.mean(a):.4f} ({min(a):.4f}-{max(a):.4f}, n={len(a)}); "
                                          f"{np.mean(peak[key][s]):.2f} MiB; {np.median(step[key][s]):.3f} s")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_label(run, varying):
    """A train run's model normalisation (cnn and resnet) and technique (its readable label where the file has
    one), and the config values in `varying` (dotted paths) that differ among the runs of the table."""
    config = config_of(run)
    model = config.get("model", {})
    parts = [norm_label(model)] if model.get("arch") in ("cnn", "resnet") else []
    if model.get("arch") in SEQUENCE_ARCHS:
        parts.append(model["arch"] + (" (reversible)" if model.get("reversible") else ""))
    parts.append(text(run["attrs"].get("technique_label", run["attrs"].get("technique", ""))))
    for path in varying:
        value = config_value(run, path.split("."))
        if value is not None:
            parts.append(f"{path.split('.')[-1]} {value}")
    return " ".join(p for p in parts if p)


def table_techniques(runs):
    """A techniques study as a Markdown table, one row per completed train run in sweep order: its peak and the
    reduction against the first f32 store_all run of the same architecture (else its first run), model state
    (weights, gradients, optimizer state), saved activations and workspace at their peaks (MiB), median step time,
    recomputed layer evaluations per step and test accuracy (text models: validation bits per character)."""
    found = technique_runs(runs)
    varying = [p for p in ("seed", "conv_band_columns") if len({json.dumps(config_value(r, [p])) for r in found}) > 1]
    model = lambda r: str(config_value(r, ["model", "arch"]))  # norms compare against one baseline, archs not
    baselines = {}
    for r in found:
        store_all = text(r["attrs"].get("technique", "")) == "store_all" and r["precision"] == "f32"
        if model(r) not in baselines or (store_all and not baselines[model(r)][1]):
            baselines[model(r)] = (r, store_all)
    text_model = all("val_bits_per_char" in r["attrs"] for r in found)
    mib = lambda r, *keys: sum(float(r["attrs"].get(k, np.nan)) for k in keys) / 2**20
    against = "; ".join(f"{run_label(b, varying)} {b['precision']}" for b, _ in baselines.values())
    lines = [f"Reduction: against {against}.", "",
             "| run | precision | peak (MiB) | reduction | state (MiB) | saved act. (MiB) | workspace (MiB) | step (s) | "
             f"recomputed / step | {'val bits/char' if text_model else 'test accuracy'} |", "| --- " * 10 + "|"]
    for r in found:
        a = r["attrs"]
        base = float(baselines[model(r)][0]["attrs"]["peak_bytes"])
        quality = float(a.get("val_bits_per_char" if text_model else "test_accuracy", np.nan))
        lines.append(f"| {run_label(r, varying)} | {r['precision']} | {mib(r, 'peak_bytes'):.2f} | "
                     f"{base / float(a['peak_bytes']):.1f}x | "
                     f"{mib(r, 'weights_bytes', 'gradients_bytes', 'optimizer_state_bytes'):.2f} | "
                     f"{mib(r, 'activation_peak_bytes'):.2f} | {mib(r, 'workspace_peak_bytes'):.2f} | "
                     f"{float(a.get('step_seconds', np.nan)):.3f} | {int(a.get('recomputed_evaluations_per_step', 0))} | "
                     f"{quality:.4f} |")
    return "\n".join(lines) + "\n"


def table_bptt_memory(runs):
    """Backpropagation through time with checkpoints: per sequence length (data.seq_len) and technique, the saved
    activations at their peak (MiB) / time-step evaluations recomputed per training step."""
    cells, techniques = {}, []
    for r in runs:
        if r["study"] != "train" or text(r["attrs"].get("status", "")) != "complete":
            continue
        if config_value(r, ["model", "arch"]) != "lstm" and not any(
                l.get("type") == "lstm" for l in config_value(r, ["model", "layers"]) or []):
            continue
        label = text(r["attrs"].get("technique_label", r["attrs"].get("technique", "")))
        if label not in techniques:
            techniques.append(label)
        a = r["attrs"]
        cells.setdefault(int(config_value(r, ["data", "seq_len"])), {})[label] = (
            f"{float(a['activation_peak_bytes']) / 2**20:.2f} / {int(a.get('recomputed_evaluations_per_step', 0))}")
    if len(cells) < 2 or len(techniques) < 2:
        raise Skip("no LSTM train runs of two or more sequence lengths and techniques")
    return markdown(["seq_len", *techniques], [[str(t), *(row.get(k, "") for k in techniques)]
                                                for t, row in sorted(cells.items())])


# Tables written beside the figures (Markdown), from the same numbers.
def sig2(x):
    """Two significant digits, as the README's error and SNR tables print them; "-" for Inf/NaN (overflow)."""
    if x is None or not np.isfinite(x):
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e3:
        short = f"{x:.2g}"
        if "e" not in short:
            return short
    return f"{x:.1e}".replace("e+", "e").replace("e-0", "e-").replace("e0", "e")


PRECISION_ORDER = ["mp", "dd", "f64", "f32", "bf16", "f16"]
ARCH_ORDER = ["flat", "hybrid", "revnet"]
SEQUENCE_ARCHS = ("transformer", "dynamic_conv", "lstm")


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def by_arch_and_depth(runs, value):
    """{(arch, blocks): {precision: value(run)}} over runs where value(run) is not None, and the precisions met,
    in PRECISION_ORDER."""
    cells, precisions = {}, set()
    for r in runs:
        blocks, v = depth_of(r), value(r)
        if blocks is None or v is None:
            continue
        cells.setdefault((str(config_value(r, ["model", "arch"])), int(blocks)), {})[r["precision"]] = v
        precisions.add(r["precision"])
    if len({blocks for _, blocks in cells}) < 2 or len(cells) * len(precisions) < sum(1 for r in runs if value(r) is not None):
        raise Skip("not one run per architecture, depth and precision over two or more depths")
    order = lambda key: (ARCH_ORDER.index(key[0]) if key[0] in ARCH_ORDER else 99, key[0], key[1])
    return dict(sorted(cells.items(), key=lambda kv: order(kv[0]))), [p for p in PRECISION_ORDER if p in precisions]


def table_snr_vs_depth(runs):
    """The SNR of the rebuilt network input (input_snr) per architecture and depth, one column per precision."""
    cells, precisions = by_arch_and_depth(runs, lambda r: float(r["attrs"]["input_snr"])
                                          if r["study"] == "reconstruction" and "input_snr" in r["attrs"] else None)
    return markdown(["blocks", "arch", *precisions],
                    [[str(blocks), arch, *(sig2(row.get(p)) for p in precisions)] for (arch, blocks), row in cells.items()])


def table_alpha_vs_slope(runs):
    """The measured amplification of one leaky ReLU inversion (median over the chain's leaky ReLUs) per slope and
    precision, and the closed form 4 / ((1 + phi^2)(1 + 1/phi^2))."""
    found = {p: {s: float(np.median(v)) for s, v in rows} for p, rows in alpha_by_slope(runs).items()}
    slopes = sorted({s for row in found.values() for s in row})
    rows = [[f"measured alpha, {p}", *(f"{found[p][s]:.3g}" if s in found[p] else "" for s in slopes)]
            for p in PRECISION_ORDER if p in found]
    rows.append(["closed form", *(f"{4 / ((1 + s**2) * (1 + 1 / s**2)):.3g}" for s in slopes)])
    return markdown(["slope phi", *(f"{s:g}" for s in slopes)], rows)


def table_gradient_vs_depth(runs):
    """Gradient studies against the mp reference: largest angle over layers (degrees) / largest relative error over
    layers, per architecture, depth and technique, one column per precision."""
    def worst(r):
        g = r["group"]
        if r["study"] != "gradient" or "gradient_error/angle_degrees" not in g or "gradient_error/relative" not in g:
            return None
        angle = np.asarray(g["gradient_error/angle_degrees"][()], dtype=float)
        error = np.asarray(g["gradient_error/relative"][()], dtype=float)
        worst_of = lambda v: float(np.max(v)) if np.all(np.isfinite(v)) else float("inf")
        return f"{sig2(worst_of(angle))} / {sig2(worst_of(error))}".replace("- /", "inf /").replace("/ -", "/ inf")
    cells = {}
    precisions = set()
    for r in runs:
        blocks, v = depth_of(r), worst(r)
        if blocks is None or v is None:
            continue
        key = (str(config_value(r, ["model", "arch"])), int(blocks), text(r["attrs"].get("technique", "")))
        cells.setdefault(key, {})[r["precision"]] = v
        precisions.add(r["precision"])
    if not cells:
        raise Skip("no gradient runs over model.blocks")
    cols = [p for p in PRECISION_ORDER if p in precisions]
    order = lambda k: (ARCH_ORDER.index(k[0]) if k[0] in ARCH_ORDER else 99, k[1], k[2] != "store_all", k[2])
    return markdown(["arch", "blocks", "technique", *cols],
                    [[a, str(b), t, *(cells[(a, b, t)].get(p, "") for p in cols)] for a, b, t in sorted(cells, key=order)])


def table_accuracy_by_bits(runs):
    """Approximate activations (Chakrabarti & Moseley): test accuracy per bit count and method, beside exact training
    (store_all), with the saved activations' peak (MiB) of each."""
    cells, exact = {}, None
    for r in runs:
        if r["study"] != "train" or text(r["attrs"].get("status", "")) != "complete":
            continue
        technique = config_of(r).get("technique", {})
        figures = (float(r["attrs"].get("test_accuracy", np.nan)), float(r["attrs"].get("activation_peak_bytes", np.nan)) / 2**20)
        if isinstance(technique, dict) and technique.get("type") == "store_all":
            exact = figures
        elif isinstance(technique, dict) and technique.get("type") == "approx_activations":
            cells.setdefault(int(technique.get("bits", 8)), {})[technique.get("method", "blpa")] = figures
    if not cells or exact is None:
        raise Skip("no approx_activations runs beside a store_all run")
    methods = [m for m in ("blpa", "naive", "actnn") if any(m in row for row in cells.values())]
    cell = lambda f: f"{f[0]:.4f} ({f[1]:.1f} MiB)"
    return markdown(["bits", *methods, "exact (store_all)"],
                    [[str(bits), *(cell(row[m]) if m in row else "" for m in methods), cell(exact)]
                     for bits, row in sorted(cells.items())])


def table_reversible_training(runs):
    """Training with stored against rebuilt activations (technique reversible), per architecture and precision: test
    accuracy of each (or how it diverged), their difference and the saved activations' peak of each (MiB)."""
    cells = {}
    for r in runs:
        technique = text(r["attrs"].get("technique", ""))
        if r["study"] != "train" or technique not in ("store_all", "reversible"):
            continue
        key = (str(config_value(r, ["model", "arch"])), r["precision"])
        cells.setdefault(key, {})[technique] = r
    pairs = {k: v for k, v in cells.items() if len(v) == 2}
    if not pairs:
        raise Skip("no pairs of store_all and reversible train runs")

    def accuracy(r):
        status = text(r["attrs"].get("status", ""))
        return float(r["attrs"].get("test_accuracy", np.nan)) if status == "complete" else None

    def shown(r):
        a = accuracy(r)
        if a is not None:
            return f"{a:.4f}"
        status, message = text(r["attrs"].get("status", "")), text(r["attrs"].get("message", ""))
        m = re.search(r"loss became (\S+) at step (\d+)", message)
        return f"{status} ({m.group(1)} loss at step {m.group(2)})" if m else f"{status}: {message[:60]}"

    mib = lambda r: float(r["attrs"].get("activation_peak_bytes", np.nan)) / 2**20
    order = lambda k: (ARCH_ORDER.index(k[0]) if k[0] in ARCH_ORDER else 99, PRECISION_ORDER.index(k[1]) if k[1] in PRECISION_ORDER else 99)
    rows = []
    for arch, precision in sorted(pairs, key=order):
        a, b = pairs[(arch, precision)]["store_all"], pairs[(arch, precision)]["reversible"]
        diff = f"{100 * (accuracy(b) - accuracy(a)):+.2f} pt" if accuracy(a) is not None and accuracy(b) is not None else ""
        rows.append([arch, precision, shown(a), shown(b), diff, f"{mib(a):.1f} MiB -> {mib(b):.1f} MiB"])
    return markdown(["arch", "precision", "store_all", "reversible", "difference",
                     "saved activations, store_all -> reversible"], rows)


TABLES = [("accuracy_vs_microbatch", table_accuracy_vs_microbatch), ("techniques", table_techniques),
          ("accuracy_by_bits", table_accuracy_by_bits), ("reversible_training", table_reversible_training),
          ("snr_vs_depth", table_snr_vs_depth), ("alpha_vs_slope", table_alpha_vs_slope),
          ("gradient_vs_depth", table_gradient_vs_depth), ("bptt_memory", table_bptt_memory)]

FIGURES = [("train_loss", fig_loss), ("drift_from_f64", fig_drift), ("test_accuracy", fig_accuracy),
           ("gradient_error", fig_gradient), ("gradient_error_by_layer", fig_gradient_by_layer),
           ("snr_vs_depth", fig_snr_vs_depth), ("alpha_vs_slope", fig_alpha_vs_slope),
           ("gradient_angle_vs_depth", fig_gradient_angle_vs_depth), ("pixel_memory", fig_pixel_memory),
           ("memory_by_category", fig_memory_by_category), ("memory_vs_time", fig_memory_vs_time),
           ("accuracy_vs_memory", fig_accuracy_vs_memory), ("accuracy_vs_microbatch", fig_accuracy_vs_microbatch)]


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
            lines = len(ax.get_legend_handles_labels()[0])
            if lines and ax.get_legend() is None:  # figures that place their own legend keep it
                ax.legend(fontsize="small" if lines > 6 else None, ncol=3 if lines > 9 else 1)
            fig.tight_layout()
            for ext in ("png", "pdf"):
                target = out / f"{name}.{ext}"
                fig.savefig(target, dpi=150, bbox_inches="tight")
                print(target)
            plt.close(fig)
        for name, table in TABLES:
            try:
                markdown = table(runs)
            except Skip:
                continue  # its figure said why
            target = out / f"{name}.md"
            target.write_text(markdown)
            print(target)


if __name__ == "__main__":
    main()
