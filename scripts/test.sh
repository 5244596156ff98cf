#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test (GoogleTest and script tests) with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 1200
