#!/usr/bin/env python3
"""Draw memory timelines: memory against events, stacked by ledger category, with the peak marked and the phases
of the step shaded, one figure (PNG and PDF) per run.

usage: ./build/lowmem plan CONFIG.json --timeline --json > timeline.json
       /usr/bin/python3 plots/plot_timeline.py timeline.json [--out DIR]

DIR defaults to plots/out/timeline-<stem of the JSON file>. The timeline is the dry step's (what `lowmem plan`
predicts; a real step records the same events): setup (model, gradients, optimizer state), one training step and,
for the train study, one evaluation batch. Prints the path of every file written.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PHASE_SHADE = {"setup": "#f2f2f2", "forward": "#ffffff", "backward": "#eef4fb", "recompute": "#fbefe6",
               "optimizer": "#eef8ee", "evaluation": "#f6eefa"}


def replay(run):
    """Bytes per category after each event: an array (events + 1, categories), row 0 the empty ledger."""
    ev = run["events"]
    n, k = len(ev["kind"]), len(run["categories"])
    current = np.zeros(k)
    rows = np.zeros((n + 1, k))
    for i in range(n):
        kind, bytes_ = run["kinds"][ev["kind"][i]], ev["bytes"][i]
        if kind == "allocate":
            current[ev["category"][i]] += bytes_
        elif kind == "release":
            current[ev["category"][i]] -= bytes_
        else:  # move: the buffer changes category
            current[ev["from"][i]] -= bytes_
            current[ev["category"][i]] += bytes_
        rows[i + 1] = current
    return rows


def draw(run, out_dir):
    rows = replay(run) / 2**20
    peak = run["peak"]
    x = np.arange(rows.shape[0])
    fig, ax = plt.subplots(figsize=(9, 4.2))
    phases = run["events"]["phase"]
    start = 0
    for i in range(1, len(phases) + 1):  # shade runs of equal phase
        if i == len(phases) or phases[i] != phases[start]:
            name = run["phases"][phases[start]]
            ax.axvspan(start + 0.5, i + 0.5, color=PHASE_SHADE.get(name, "#ffffff"), lw=0, zorder=0)
            if i - start > len(phases) / 25:
                ax.text((start + i) / 2 + 0.5, 1.0, name, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=7, color="#555555")
            start = i
    ax.stackplot(x, rows.T, labels=run["categories"], step="post", alpha=0.85, zorder=2)
    ax.axvline(peak["after_event"], color="black", lw=0.8, ls="--", zorder=3)
    right = peak["after_event"] > 0.6 * rows.shape[0]  # the note goes on the side with room
    ax.annotate(f"peak {peak['bytes'] / 2**20:.3f} MiB\n{peak['phase']}, {peak['owner']}",
                xy=(peak["after_event"], peak["bytes"] / 2**20), xytext=(-8 if right else 8, -4),
                textcoords="offset points", fontsize=7, va="top", ha="right" if right else "left", zorder=4,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xlim(0, rows.shape[0] - 1)
    ax.set_xlabel("ledger event (allocation, release or change of category), in order")
    ax.set_ylabel("MiB held")
    ax.set_title(f"{run['model']} {run['precision']} {run['technique']} ({run['study']}, run {run['run_id']})",
                 fontsize=9, pad=14)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    written = []
    for ext in ("png", "pdf"):
        path = out_dir / f"timeline-{run['position'] + 1:03d}-{run['run_id']}.{ext}"
        fig.savefig(path, dpi=130)
        written.append(path)
    plt.close(fig)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timeline", help="output of lowmem plan CONFIG --timeline --json")
    parser.add_argument("--out", help="directory for the figures")
    args = parser.parse_args()
    path = Path(args.timeline)
    try:
        runs = json.loads(path.read_text())
        if not isinstance(runs, list) or not all(isinstance(r, dict) and "events" in r for r in runs):
            raise ValueError("not a list of timelines")
    except (OSError, ValueError) as e:
        print(f"plot_timeline: {path}: not the output of `lowmem plan --timeline --json` ({e})", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "out" / f"timeline-{path.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        for written in draw(run, out_dir):
            print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
