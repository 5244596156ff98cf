#!/usr/bin/env python3
"""The README's figure tables, regenerated from results files so that a rerun cannot leave them behind.

A generated table in README.md sits right under a marker naming its file and the commands that make it:

    <!-- table: plots/out/hascoet-snr-depth/snr_vs_depth.md
         from: ./build/lowmem run configs/paper/hascoet-snr-depth.json --threads 1 &&
               python3 plots/plot_results.py results/hascoet-snr-depth.h5 -->
    | blocks | arch | mp | ... |

usage: readme_tables.py [--write] [--only PLOTS_OUT_FILE] [--readme README.md]
  (default) check: for every marker whose table file exists, the README's table must equal it (exit 1 if not);
            markers whose file is missing are listed (run their commands first); a table with neither a marker nor
            a <!-- not generated: why --> line before it is an error (exit 1)
  --write   put each existing table file under its marker in the README
  --only    just that table file
"""
import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- table: (\S+)\s+from: (.*?)-->", re.S)


def blocks(lines):
    """(marker line index, table file, command, first table line, end) for every marker in the README."""
    text = "\n".join(lines)
    found = []
    for m in MARKER.finditer(text):
        end_line = text[:m.end()].count("\n")
        first = end_line + 1
        end = first
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        found.append((end_line, m.group(1), " ".join(m.group(2).split()), first, end))
    return found


def unmarked_tables(lines, marked):
    """First lines of Markdown tables (a header row, then a | --- | row) that no marker covers and that are not
    declared hand-written (`<!-- not generated: why -->` on the line before, for reference tables such as a
    list of fuzz targets, or a log whose every row names its own command and commit)."""
    covered = {i for _, _, _, first, end in marked for i in range(first, end)}
    return [i for i in range(len(lines) - 1)
            if lines[i].startswith("|") and re.match(r"^\|( ?:?-+:? ?\|)+$", lines[i + 1].strip()) and i not in covered
            and not (i > 0 and lines[i - 1].startswith("<!-- not generated:"))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args()
    readme = Path(args.readme)
    lines = readme.read_text().split("\n")
    marked = blocks(lines)
    differ, missing = [], []
    for _, name, command, first, end in reversed(marked):  # from the end: replacing keeps earlier indices
        if args.only and name != args.only:
            continue
        source = ROOT / name
        if not source.exists():
            missing.append((name, command))
            continue
        # The table's lines (a file may say something before it, such as what a reduction is against).
        table = [line for line in source.read_text().split("\n") if line.startswith("|")]
        if lines[first:end] != table:
            differ.append(name)
            if args.write:
                lines[first:end] = table
    if args.write:
        readme.write_text("\n".join(lines))
    for name, command in reversed(missing):
        print(f"not regenerated here: {name} (from: {command})")
    unmarked = unmarked_tables(lines, blocks(lines))
    for i in unmarked:
        print(f"TABLE WITHOUT A GENERATING COMMAND: README line {i + 1}: {lines[i][:80]}")
    for name in reversed(differ):
        print(("rewritten: " if args.write else "DIFFERS: ") + name)
    if differ and not args.write:
        print("run scripts/readme_tables.py --write to put the regenerated tables in the README")
    if unmarked:
        print("put a <!-- table: FILE from: COMMANDS --> marker (or <!-- not generated: why -->) before each")
    return 1 if (differ and not args.write) or unmarked else 0


if __name__ == "__main__":
    sys.exit(main())
