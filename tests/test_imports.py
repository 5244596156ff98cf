"""Imports run one way: numerics <- tensor <- layers <- techniques <- training <- studies <- harness.
io (config reading, sweeps, results files) and data (datasets) are side libraries that use numerics only; io may be
used from techniques up, data from training up. bench/ uses the library, never studies/ or harness/.
Fails naming every #include that points the wrong way."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = ["numerics", "tensor", "layers", "techniques", "training", "studies", "harness"]
# folder -> the folders its files may include (besides its own)
ALLOWED = {name: set(STACK[:i]) for i, name in enumerate(STACK)}
ALLOWED["io"] = {"numerics"}
ALLOWED["data"] = {"numerics"}
for upper in ("techniques", "training", "studies", "harness"):
    ALLOWED[upper].add("io")
for upper in ("training", "studies", "harness"):
    ALLOWED[upper].add("data")
ALLOWED["bench"] = set(ALLOWED["training"]) | {"training"}
# files of studies/ and harness/ are included by bare name ("study.hpp", "runner.hpp")
BARE = {p.name: p.parent.name for d in ("studies", "harness") for p in (ROOT / d).glob("*.hpp")}


def folder_of(path):
    rel = path.relative_to(ROOT).parts
    return rel[1] if rel[0] == "lib" else rel[0]


def main():
    wrong, files = [], 0
    for path in sorted(list((ROOT / "lib").rglob("*.[ch]pp")) + list((ROOT / "studies").glob("*.[ch]pp")) +
                       list((ROOT / "harness").glob("*.[ch]pp")) + list((ROOT / "bench").glob("*.[ch]pp"))):
        files += 1
        here = folder_of(path)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r'\s*#include "([^"]+)"', line)
            if not m:
                continue
            target = m.group(1)
            there = target.split("/")[0] if "/" in target else BARE.get(target, here)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{n}: {here} includes {target} ({there})")
    if wrong:
        print("FAILED: includes against the stack numerics <- tensor <- layers <- techniques <- training <- "
              "studies <- harness:")
        for w in wrong:
            print("  " + w)
        return 1
    print(f"ok: the includes of {files} files run one way down the stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
