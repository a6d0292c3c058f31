#!/usr/bin/env bash
# zcwrap test suite: install what is missing, then build and run every test
# in both LibTorch lanes (see scripts/common.sh), each from a clean build
# folder. Safe to run again and from any folder; CI runs it (.ci/run) on a
# fresh clone.
#
# Usage: scripts/test.sh [--lane torch2|debian] [--keep-build]
#   --lane        one lane only (default: both)
#   --keep-build  reuse the lanes' build folders instead of starting clean
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

lanes=("${LANES[@]}")
fresh=fresh
while (($#)); do
  case $1 in
    --lane)
      [[ $# -ge 2 ]] || die "--lane needs a value (${LANES[*]})"
      lane_build_dir "$2" >/dev/null
      lanes=("$2")
      shift 2
      ;;
    --keep-build) fresh="" && shift ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

started=$SECONDS
section "Packages"
ensure_packages
if [[ " ${lanes[*]} " == *" torch2 "* ]]; then
  section "Python environment for the torch2 lane"
  ensure_venv
fi

status=0
passed=0 failed=0 skipped=0
timings=()
for lane in "${lanes[@]}"; do
  lane_started=$SECONDS
  dir=$(lane_build_dir "$lane")
  section "Lane $lane: build ($dir)"
  if ! build_lane "$lane" "$fresh"; then
    echo "lane $lane: the build failed"
    status=1
    failed=$((failed + 1))
    continue
  fi
  built=$SECONDS
  section "Lane $lane: tests"
  show meson test -C "$dir" --print-errorlogs --num-processes 2 || status=$?
  # Counted from Meson's log: one result per suite.
  log=$dir/meson-logs/testlog.json
  lane_passed=$(grep -c '"result": "OK"' "$log" || true)
  lane_skipped=$(grep -c '"result": "SKIP"' "$log" || true)
  lane_total=$(grep -c '"result":' "$log" || true)
  passed=$((passed + lane_passed))
  skipped=$((skipped + lane_skipped))
  failed=$((failed + lane_total - lane_passed - lane_skipped))
  timings+=("lane $lane: build $((built - lane_started)) s, tests $((SECONDS - built)) s; $lane_passed passed, $((lane_total - lane_passed - lane_skipped)) failed, $lane_skipped skipped")
done

# Blobs across versions: packed by one lane, read by the other (pytest, in
# the torch2 lane's Python).
if ((${#lanes[@]} == 2)); then
  cross_started=$SECONDS
  section "Across lanes: blobs packed under one LibTorch, read under the other"
  log=$(mktemp)
  ZCWRAP_TORCH2_BUILD=$(lane_build_dir torch2) ZCWRAP_DEBIAN_BUILD=$(lane_build_dir debian) \
    ZCWRAP_DEBIAN_PYTHON=$DEBIAN_PYTHON show "$TORCH2_PYTHON" -m pytest -p no:cacheprovider -q tests/python \
    2>&1 | tee "$log" || status=1
  # pytest's closing line: "3 passed, 1 skipped in 2.0s", "1 failed, 2 passed in ...".
  count() { grep -Eo "[0-9]+ $1" "$log" | tail -1 | cut -d' ' -f1 || true; }
  cross_passed=$(count passed) cross_failed=$(count failed) cross_skipped=$(count skipped)
  cross_failed=$((${cross_failed:-0} + $(grep -Eo '[0-9]+ errors?' "$log" | tail -1 | cut -d' ' -f1 || echo 0)))
  passed=$((passed + ${cross_passed:-0}))
  failed=$((failed + cross_failed))
  skipped=$((skipped + ${cross_skipped:-0}))
  timings+=("across lanes: $((SECONDS - cross_started)) s; ${cross_passed:-0} passed, $cross_failed failed, ${cross_skipped:-0} skipped")
  rm -f "$log"
fi

section "Summary ($((SECONDS - started)) s)"
printf '%s\n' "${timings[@]}"
# One closing line in the 'N passed, N failed' form, over every lane.
echo "zcwrap: $passed passed, $failed failed, $skipped skipped"
exit "$status"
