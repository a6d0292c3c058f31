#!/usr/bin/env bash
# Prepares .deps/ (ignored by git) for scripts/gpu-check.sh: what a GPU
# machine without Debian's -dev packages needs to build zcwrap against its
# own pip torch. Runs here, on the Debian machine (apt-get download needs no
# root); carry .deps to the GPU machine with the sources.
#
#   .deps/usr/             CLI11, nlohmann/json, doctest, zstd, xxhash: headers
#                          and the zstd/xxhash shared libraries (gpu-check.sh
#                          passes them as -isystem and -L; no pkg-config needed)
#   .deps/cuda/include/    CUDA runtime headers (of /usr/local/cuda here), used
#                          only when the GPU machine has none of its own
#   .deps/fixtures/        the test fixtures up to 16 MiB each, from the torch2
#                          lane's build here (or made with that lane's Python)
#
# Usage: scripts/fetch-gpu-deps.sh [BUILD_DIR_WITH_FIXTURES]
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

DEPS=.deps
PACKAGES=(libcli11-dev nlohmann-json3-dev doctest-dev libzstd-dev libzstd1 libxxhash-dev libxxhash0)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

rm -rf "$DEPS"
mkdir -p "$DEPS"

section "Debian packages"
# apt-get download writes into the current folder as the _apt user when it
# can; a private temporary folder keeps that quiet and out of the tree.
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
chmod 755 "$debs"
(cd "$debs" && show apt-get download "${PACKAGES[@]}")
for deb in "$debs"/*.deb; do
  show dpkg -x "$deb" "$DEPS"
done
rm -rf "$DEPS/usr/share/doc" "$DEPS/usr/share/lintian"

section "CUDA runtime headers"
if [[ -f $CUDA_HOME/include/cuda_runtime_api.h ]]; then
  mkdir -p "$DEPS/cuda/include"
  # The top-level headers and what they include; not the libraries' (cccl,
  # cublas, ...), which zcwrap does not use.
  find "$CUDA_HOME/include/" -maxdepth 1 -type f -name '*.h*' -exec cp {} "$DEPS/cuda/include/" \;
  for sub in crt nv nvtx3; do
    if [[ -d $CUDA_HOME/include/$sub ]]; then cp -r "$CUDA_HOME/include/$sub" "$DEPS/cuda/include/"; fi
  done
  if [[ -f $CUDA_HOME/version.json ]]; then cp "$CUDA_HOME/version.json" "$DEPS/cuda/"; fi
  echo "copied from $CUDA_HOME ($(du -sh "$DEPS/cuda" | cut -f1))"
else
  echo "no CUDA toolkit at $CUDA_HOME: gpu-check.sh will need the GPU machine's own CUDA headers"
fi

section "Fixtures"
from=""
for dir in "${1:-}" "$(lane_build_dir torch2)"; do
  if [[ -n $dir && -f $dir/tests/fixtures/fixtures.json ]]; then
    from=$dir/tests/fixtures
    break
  fi
done
if [[ -z $from ]]; then
  from=$(mktemp -d)
  ensure_venv
  show "$TORCH2_PYTHON" tests/fixtures/make_fixtures.py "$from"
fi
mkdir -p "$DEPS/fixtures"
# The GPU machine gets at most 64 MiB carried: fixtures over 16 MiB (the
# resnet18 ones, the truncated one) stay here; the GPU tests skip the models
# whose files are missing, with a message.
for f in "$from"/*; do
  if [[ $(basename "$f") != stamp ]] && (($(stat -c %s "$f") <= 16 << 20)); then
    cp "$f" "$DEPS/fixtures/"
  else
    echo "left out: $(basename "$f")"
  fi
done
echo "from $from"

section "Done"
du -sh "$DEPS" "$DEPS"/*
echo "carry .deps to the GPU machine and run: bash scripts/gpu-check.sh"
