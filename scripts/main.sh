#!/usr/bin/env bash
# The main job: installs what is missing, builds, runs configs/default.json on Fashion-MNIST and draws its plots.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
mkdir -p results
# lowmem never overwrites a results file: if results/default.h5 exists it writes beside it and says where.
out=$(./build/lowmem run configs/default.json --out results/default.h5 | tee /dev/stderr | sed -n 's/^results: \([^ ]*\) .*/\1/p')
stem=$(basename "$out" .h5)
/usr/bin/python3 plots/plot_results.py "$out" --out "plots/out/$stem"
echo
echo "results: $out   (inspect with: ./build/lowmem show $out)"
echo "plots:   plots/out/$stem/"
