#!/usr/bin/env bash
# Installs the Debian packages lowmem needs, only those that are missing. Run as root on Debian 12.
set -euo pipefail
packages=(
  g++ cmake make pkg-config
  libeigen3-dev libboost-dev libmpfr-dev libhdf5-dev hdf5-tools nlohmann-json3-dev
  libbenchmark-dev libgtest-dev libgmock-dev zlib1g-dev libcli11-dev
  dataset-fashion-mnist fortunes
  python3 python3-h5py python3-matplotlib python3-numpy python3-pandas python3-torch
  # an optimised BLAS for PyTorch's matrix products (without it Debian's torch uses the reference BLAS, some 10x
  # slower: bench/compare_pytorch.py's sequence models would be measured against a crippled PyTorch)
  libopenblas0-pthread
  # the sanitizer and fuzz builds (scripts/test-sanitizers.sh, scripts/fuzz.sh): clang, its OpenMP runtime, the
  # sanitizer and libFuzzer runtimes (libclang_rt.*, only recommended by clang) and llvm-symbolizer for stacks
  clang libomp-dev libclang-rt-14-dev llvm
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "lowmem: installing missing packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "lowmem: need root to install packages (run as root, or install them: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
