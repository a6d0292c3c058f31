#!/usr/bin/env bash
# zcwrap benchmarks: P1 unwrap latency, P2 sharing, P3 pack speed, cold
# start (docs/BENCHMARKS.md says what each measures and the goals).
#
# Usage: benchmarks/run.sh [run.py options, e.g. --runs 3 --only p1 p2]
#
# Builds zcwrap (in $ZCWRAP_BUILD, default build/), generates the models into
# benchmarks/out/ (about 1.3 GiB, reused by later runs), packs them, and
# measures; about 10 minutes on 2 cores. Writes benchmarks/out/results.json
# and results.md. Needs about 4 GiB free on disk and 10 GiB of memory (8
# torch::jit::load workers of a 1 GiB model). The cold-start part empties
# the page cache of the model files with POSIX_FADV_DONTNEED (unprivileged);
# as root it also measures after `echo 3 > /proc/sys/vm/drop_caches`.
# Put benchmarks/out on a disk, not a tmpfs: a tmpfs cannot be evicted.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# shellcheck source=scripts/common.sh
source scripts/common.sh
OUT=benchmarks/out

section "Build"
build_all

section "Models"
show "$PYTHON" benchmarks/make_models.py "$OUT"

section "Measure"
show "$PYTHON" benchmarks/run.py --zcwrap "$BUILD/cli/zcwrap" --out "$OUT" "$@"
