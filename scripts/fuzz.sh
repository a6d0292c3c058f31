#!/usr/bin/env bash
# Fuzzes the blob container parser, the check of run's input pickles and the
# pickle scanner: installs clang and libFuzzer if missing, builds
# tests/fuzz/fuzz_blob, fuzz_input and fuzz_pickle (ASan + UBSan) in
# build-fuzz/, and runs each for RUNS executions (default 1000000) from a
# scratch copy of its seed corpus.
# Usage: scripts/fuzz.sh [RUNS] [-- LIBFUZZER_FLAGS...]
# Exits 0 when the run ends with no finding, 1 on a finding (the reproducer
# is kept as build-fuzz/findings/TARGET/crash-*, leak-*, timeout-* or oom-*).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

RUNS=${1:-1000000}
[[ $RUNS =~ ^[0-9]+$ ]] || die "RUNS must be a number of executions, not '$RUNS'"
shift $(($# > 0 ? 1 : 0))
[[ ${1:-} == -- ]] && shift
EXTRA_FLAGS=("$@")

# The root meson.build finds LibTorch and CLI11 even when only the fuzz
# target is built; Debian 12's libFuzzer runtime (-fsanitize=fuzzer) is
# libclang-rt-14-dev, only a Recommends of clang.
PACKAGES=(libtorch-dev libcli11-dev nlohmann-json3-dev libzstd-dev libxxhash-dev
          meson ninja-build pkg-config clang libclang-rt-14-dev)
BUILD=build-fuzz

section "Packages"
ensure_packages

section "Build"
if [[ -f $BUILD/meson-private/coredata.dat ]]; then
  echo "reusing $BUILD/ (configured before)"
else
  show env CXX=clang++ meson setup "$BUILD" -Dfuzz=enabled -Dtests=disabled -Dsamples=disabled
fi
show ninja -C "$BUILD" tests/fuzz/fuzz_blob tests/fuzz/fuzz_input tests/fuzz/fuzz_pickle

# Runs one target for RUNS executions from a scratch copy of its seeds
# (libFuzzer adds what it finds to its first corpus folder; the committed
# seeds stay as they are). Returns 1 on a finding.
fuzz() {
  local target=$1 seeds=$2 dict=$3
  section "Fuzz: $target"
  local scratch
  scratch=$(mktemp -d)
  cp "$seeds"/* "$scratch/"
  # Room to grow a little past the largest seed.
  local largest max_len
  largest=$(stat -c %s "$seeds"/* | sort -n | tail -1)
  max_len=$((largest + 4096))
  local findings=$BUILD/findings/$target log=$BUILD/$target.log status=0
  mkdir -p "$findings"
  show "$BUILD/tests/fuzz/$target" "$scratch" -runs="$RUNS" -max_len="$max_len" \
    ${dict:+-dict="$dict"} -artifact_prefix="$findings/" -print_final_stats=1 \
    ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"} 2>&1 | tee "$log" || status=$?
  rm -rf "$scratch"
  # libFuzzer's last status line ("#N DONE cov: ... exec/s: ...") and its
  # final stats give the figures; a finding ends the run early instead.
  local done_line executed per_second
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  echo
  if ((status == 0)) && [[ -n $done_line ]]; then
    echo "$target: ${executed:-?} executions (${per_second:-?} exec/s), no finding"
    echo "$target: $done_line"
    return 0
  fi
  echo "$target: FINDING after ${executed:-?} executions (libFuzzer exit status $status); see $log" >&2
  ls -1 "$findings" >&2 || true
  return 1
}

status=0
fuzz fuzz_blob tests/fuzz/corpus tests/fuzz/blob.dict || status=1
fuzz fuzz_input tests/fuzz/corpus-input tests/fuzz/input.dict || status=1
fuzz fuzz_pickle tests/fuzz/corpus-input tests/fuzz/input.dict || status=1
exit $status
