#!/usr/bin/env python3
"""Pixel-wise memory cost of a config's runs as a Markdown table, from `lowmem plan --json` (the dry step, equal to
the byte to what `lowmem run` measures), so that the README's pixel-memory tables are regenerated, not typed.

usage: plan_tables.py CONFIG.json [--lowmem build/lowmem] [--threads N] [--out DIR]
  writes DIR/pixel_memory.md (default plots/out/<config file stem>/) and prints its path.

One row per run in sweep order, bytes per input pixel (batch x H x W):
  total       the peak of the step (model state, saved activations and workspace together)
  activation  the peak less the model state (weights, gradients, optimizer state: they do not grow with the batch)
  saved act.  the saved-activation peak
  own need    what the techniques themselves require, as `plan` states it
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ("weights", "gradients", "optimizer_state")


def row_label(run):
    """The swept values other than precision and technique (which have their own columns), as path=value."""
    return " ".join(f"{path}={value}" for path, value in run.get("swept", {}).items()
                    if path != "precision" and not path.startswith("technique"))


def pixel_table(runs):
    labelled = any(row_label(r) for r in runs)
    header = (["run"] if labelled else []) + ["technique", "precision", "total", "activation", "saved act.", "own need"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for r in runs:
        peak = r["predicted_peak_bytes"]
        pixels = peak / r["pixel_memory_bytes"]  # batch x H x W
        per_pixel = lambda b: f"{b / pixels:.0f}"
        state = sum(r["predicted_bytes"][c] for c in STATE)
        cells = ([row_label(r)] if labelled else []) + [
            r["technique_label"], r["precision"], per_pixel(peak), per_pixel(peak - state),
            per_pixel(r["predicted_bytes"]["saved_activations"]), per_pixel(r["own_need_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--lowmem", default=str(ROOT / "build" / "lowmem"))
    parser.add_argument("--threads", default="1", help="threads per run (the convolution workspace depends on it)")
    parser.add_argument("--out")
    args = parser.parse_args()
    p = subprocess.run([args.lowmem, "plan", args.config, "--json", "--threads", args.threads],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"plan_tables.py: lowmem plan {args.config} failed (exit {p.returncode}): {p.stderr.strip()}")
    runs = [r for r in json.loads(p.stdout) if "pixel_memory_bytes" in r]
    if not runs:
        sys.exit(f"plan_tables.py: {args.config} has no run with a pixel-wise cost (image models only)")
    out = Path(args.out) if args.out else ROOT / "plots" / "out" / Path(args.config).stem
    out.mkdir(parents=True, exist_ok=True)
    target = out / "pixel_memory.md"
    target.write_text(pixel_table(runs))
    print(target)


if __name__ == "__main__":
    main()
