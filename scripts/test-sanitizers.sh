#!/usr/bin/env bash
# CI's sanitizer job: builds lowmem with AddressSanitizer and UndefinedBehaviorSanitizer (clang, build-asan/),
# runs the GoogleTest suite there, then fuzzes each fuzz target briefly from its committed corpus with the same
# build. The script tests (tests/*.py) stay in the normal build (scripts/test.sh): under ASan they would take
# several times their 4 minutes. Usage: scripts/test-sanitizers.sh [FUZZ_SECONDS_PER_TARGET (default 20)]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=build-asan
SECONDS=0
CC=clang CXX=clang++ cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release -DLOWMEM_SANITIZE=ON -DLOWMEM_FUZZ=ON \
  -DLOWMEM_BENCHMARKS=OFF >/dev/null
cmake --build $build -j"$(nproc)"
echo "sanitizers: build took ${SECONDS} s"

SECONDS=0
# UBSan stops at its first report (-fno-sanitize-recover) and prints the stack; leaks are reported at exit.
export UBSAN_OPTIONS=print_stacktrace=1
ctest --test-dir $build --output-on-failure -j"$(nproc)" --timeout 1200 -E '^test_'  # test_*: the script tests
echo "sanitizers: GoogleTest suite took ${SECONDS} s"

SECONDS=0
LOWMEM_FUZZ_BUILD=$build bash scripts/fuzz.sh "${1:-20}"
echo "sanitizers: fuzz pass took ${SECONDS} s"
