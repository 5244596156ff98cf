#!/usr/bin/env bash
# Fuzzes lowmem's input readers (fuzz/*.cpp) with libFuzzer, SECONDS per target (default 60; 0 only replays the
# committed corpus), starting from fuzz/corpus/<target>/. Builds them with clang, ASan and UBSan into build-fuzz
# (or $LOWMEM_FUZZ_BUILD). Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (targets: see below)
#
# Fails if any target crashes, hangs (10 s on one input) or needs more than 2 GB in lowmem's code. Crashes inside
# libhdf5 (1.10 cannot survive some corrupt files) are listed but do not fail. Inputs that fail are kept in a
# scratch directory (printed at the end); replay one with: build-fuzz/fuzz/fuzz_<target> FILE
# The repository is not modified: new corpus entries and temporary files go to the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
all_targets=(config set idx cifar results)
seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2; }
shift $(($# > 0 ? 1 : 0))
targets=("${@:-${all_targets[@]}}")
for t in "${targets[@]}"; do
  [[ -d fuzz/corpus/$t ]] || { echo "fuzz: unknown target $t (targets: ${all_targets[*]})" >&2; exit 2; }
done

build=${LOWMEM_FUZZ_BUILD:-build-fuzz}
bash scripts/install-deps.sh  # clang, its sanitizer and libFuzzer runtimes
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLOWMEM_FUZZ=ON -DLOWMEM_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/lowmem-fuzz.XXXXXX")
limits=(-rss_limit_mb=2048 -timeout=10)
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/fuzz/lsan.supp}  # leaks inside libhdf5 only

# The frames of a replay's log, innermost first, as "function file:line" or "(module+offset)".
frames() { grep -E '^ *#[0-9]+ 0x[0-9a-f]+ ' "$1" | sed -E 's/^ *#[0-9]+ 0x[0-9a-f]+ +(in )?//; s/ \(BuildId: [0-9a-f]+\)//'; }
# The innermost frame that is not the sanitizers', libFuzzer's, libc's or libstdc++'s: where it went wrong.
stack_top() {
  frames "$1" | grep -vE '^(__asan|__interceptor|__sanitizer|__ubsan|__cxa|__gnu_cxx|fuzzer::|std::terminate|abort|raise|malloc|calloc|realloc|operator new|fuzz::unexpected_exception)|libc\.so|libstdc\+\+|libclang_rt|compiler-rt' | head -1
}
# The innermost frame in lowmem's own sources.
lowmem_top() { frames "$1" | grep -E "$PWD/(lib|harness|studies)/" | head -1; }
# A hang or OOM is lowmem's when its stack shows lowmem recursing (a frame of its sources twice); otherwise it is
# the code at the top of the stack that looped or allocated.
lowmem_recursion() { frames "$1" | grep -E "$PWD/(lib|harness|studies)/" | sort | uniq -d | grep -q .; }

failed=0
for t in "${targets[@]}"; do
  bin=$build/fuzz/fuzz_$t
  dir=$scratch/$t
  mkdir -p "$dir/new" "$dir/findings" "$dir/tmp"
  echo "fuzz: $t: $seconds s over fuzz/corpus/$t ($(ls "fuzz/corpus/$t" | wc -l) seeds)"
  if ((seconds == 0)); then
    # Replay: each committed seed once; a failing seed is copied to the findings.
    for f in "fuzz/corpus/$t"/*; do
      TMPDIR=$dir/tmp "$bin" "${limits[@]}" "$f" >"$dir/replay.log" 2>&1 || cp "$f" "$dir/findings/crash-$(basename "$f")"
    done
  else
    # Fork mode keeps fuzzing past a finding, so one run lists every kind of failure it meets (artifacts in
    # findings/); new corpus entries go to new/, the committed corpus is only read.
    # config: inputs up to 64 KB, so that nesting can get deep enough to matter.
    extra=()
    [[ -f fuzz/$t.dict ]] && extra+=(-dict="fuzz/$t.dict")
    [[ $t == config ]] && extra+=(-max_len=65536)
    TMPDIR=$dir/tmp "$bin" "${limits[@]}" "${extra[@]}" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
      -max_total_time="$seconds" -artifact_prefix="$dir/findings/" "$dir/new" "fuzz/corpus/$t" >"$dir/fuzz.log" 2>&1 || true
    grep -E '^#[0-9]+: cov: ' "$dir/fuzz.log" | tail -1 | sed "s/^/fuzz: $t: /" || true
  fi
  # Each finding replayed on its own, and told apart by where it stopped: in lowmem or inside libhdf5. Findings of
  # one kind at one place are listed once, with their count.
  declare -A seen=()
  for f in "$dir/findings"/*; do
    [[ -e $f && $f != *.log ]] || continue
    log=$f.log
    if TMPDIR=$dir/tmp timeout 120 "$bin" "${limits[@]}" "$f" >"$log" 2>&1; then
      echo "fuzz: $t: $(basename "$f") does not fail when replayed alone (not counted)"
      continue
    fi
    kind=$(grep -m1 -oE 'ERROR: (AddressSanitizer|libFuzzer): [A-Za-z-]+|runtime error: .{0,80}|exception other than lowmem::Error escaped: .{0,120}' "$log" || echo "failure (see log)")
    top=$(stack_top "$log")
    where="in lowmem"
    if [[ $top == *libhdf5* ]] && ! { [[ $kind == *timeout* || $kind == *out-of-memory* ]] && lowmem_recursion "$log"; }; then
      where="inside libhdf5"
    else
      failed=1
    fi
    key="$where: $kind at ${top:-?}"
    if [[ -z ${seen[$key]:-} ]]; then
      echo "fuzz: $t: FINDING $where: $kind"
      echo "        at: ${top:-?}"
      if [[ $where == "inside libhdf5" ]]; then echo "        called from: $(lowmem_top "$log")"; fi
      echo "        input: $f   (report: $log)"
    fi
    seen[$key]=$((${seen[$key]:-0} + 1))
  done
  for key in "${!seen[@]}"; do
    if ((seen[$key] > 1)); then echo "fuzz: $t: ${seen[$key]} inputs: $key"; fi
  done
  unset seen
done
if ((failed)); then
  echo "fuzz: crashes, hangs or OOMs in lowmem's code; inputs and logs in $scratch"
  exit 1
fi
if compgen -G "$scratch/*/findings/*" >/dev/null; then
  echo "fuzz: no finding in lowmem's code; findings inside libhdf5 kept in $scratch"
else
  rm -rf "$scratch"
  echo "fuzz: no findings"
fi
