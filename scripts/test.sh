#!/usr/bin/env bash
# zcwrap test suite: install what is missing, build, run every test.
# Safe to run again and from any folder; CI runs it (.ci/run) on a fresh clone.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

section "Packages"
ensure_packages

section "Build"
build_all

section "Tests"
status=0
show meson test -C "$BUILD" --print-errorlogs --num-processes 2 || status=$?

# One closing line in the 'N passed, N failed' form, counted from Meson's log.
log=$BUILD/meson-logs/testlog.json
passed=$(grep -c '"result": "OK"' "$log" || true)
skipped=$(grep -c '"result": "SKIP"' "$log" || true)
total=$(grep -c '"result":' "$log" || true)
failed=$((total - passed - skipped))
echo "zcwrap: $passed passed, $failed failed, $skipped skipped"
exit "$status"
