#!/usr/bin/env python3
"""Draw memory timelines: memory against events, stacked by ledger category, with the peak marked and the phases
of the step shaded, one figure (PNG and PDF) per run.

usage: ./build/lowmem plan CONFIG.json --timeline --json > timeline.json
       /usr/bin/python3 plots/plot_timeline.py timeline.json [--out DIR]
   or: ./build/lowmem run CONFIG.json --timeline --out results.h5
       /usr/bin/python3 plots/plot_timeline.py results.h5 [--out DIR]

DIR defaults to plots/out/timeline-<stem of the input>. From plan: the dry step's timeline (what `lowmem plan`
predicts; a real step records the same events): setup (model, gradients, optimizer state), one training step and,
for the train study, one evaluation batch. From a results file: what each run that recorded a timeline measured
(setup and its first training step). Prints the path of every file written.
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


def from_results(path):
    """The runs of a results file that recorded a timeline, in the form plan --timeline --json gives."""
    import h5py
    runs = []
    with h5py.File(path, "r") as f:
        for run_id, g in f["runs"].items():
            if "memory/timeline/events" not in g:
                continue
            t = g["memory/timeline"]
            names = lambda d: [x.decode() if isinstance(x, bytes) else str(x) for x in d[()]]  # noqa: E731
            columns, events = names(t["columns"]), np.array(t["events"]).astype(np.int64)
            attr = lambda k: (g.attrs[k].decode() if isinstance(g.attrs[k], bytes) else str(g.attrs[k])) \
                if k in g.attrs else ""  # noqa: E731
            position = attr("sweep_index") or attr("index") or str(len(runs))  # the sweep's order, as plan's
            setup = int(np.array(t["setup_events"]).ravel()[0]) if "setup_events" in t else 0
            run = {"run_id": run_id, "position": int(position), "study": attr("study"), "setup_events": setup,
                   "precision": attr("precision"), "model": attr("model"), "technique": attr("technique"),
                   "kinds": names(t["kinds"]), "phases": names(t["phases"]), "owners": names(t["owners"]),
                   "categories": names(g["memory/categories"]),
                   "events": {c: events[:, i].tolist() for i, c in enumerate(columns)}}
            run["peak"] = peak_of(run)
            runs.append(run)
    runs.sort(key=lambda r: r["position"])
    return runs


def peak_of(run):
    """The first moment after setup at which the total is highest, as plan reports it."""
    ev, total, best, at = run["events"], 0, None, 0
    setup = run["setup_events"]
    for i, kind in enumerate(ev["kind"]):
        if i == setup:
            best, at = total, i
        name = run["kinds"][kind]
        total += ev["bytes"][i] if name == "allocate" else -ev["bytes"][i] if name == "release" else 0
        if i >= setup and total > best:
            best, at = total, i + 1
    if best is None:  # no event after setup
        best, at = total, len(ev["kind"])
    if at == 0:
        return {"after_event": 0, "bytes": 0, "phase": "setup", "owner": ""}
    return {"after_event": at, "bytes": best, "phase": run["phases"][ev["phase"][at - 1]],
            "owner": run["owners"][ev["owner"][at - 1]]}


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
    keys = {"run_id", "position", "study", "precision", "model", "technique", "peak", "kinds", "categories", "phases",
            "owners", "events"}
    try:
        with open(path, "rb") as f:
            hdf5 = f.read(8) == b"\x89HDF\r\n\x1a\n"
        if hdf5:
            runs = from_results(path)
            if not runs:
                print(f"plot_timeline: {path}: no run in this results file recorded a timeline (run it with "
                      "lowmem run --timeline)", file=sys.stderr)
                return 1
        else:
            runs = json.loads(path.read_text())
            if not isinstance(runs, list) or not all(isinstance(r, dict) and keys <= set(r) for r in runs):
                raise ValueError("not a list of timelines with " + ", ".join(sorted(keys)))
    except (OSError, ValueError, KeyError) as e:
        print(f"plot_timeline: {path}: neither the output of `lowmem plan --timeline --json` nor a results file "
              f"of `lowmem run --timeline` ({e})", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "out" / f"timeline-{path.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        for written in draw(run, out_dir):
            print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
