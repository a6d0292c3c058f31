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
  # Inside a suite, doctest skips the cases that cannot run here (no GPU, no
  # tmpfs mount) and says so in its closing line: "... | 2 skipped".
  cases_skipped=$(grep -ao '| *[0-9]* skipped' "$dir/meson-logs/testlog.txt" | awk '{s += $2} END {print s + 0}')
  timings+=("lane $lane: build $((built - lane_started)) s, tests $((SECONDS - built)) s; $lane_passed passed, $((lane_total - lane_passed - lane_skipped)) failed, $lane_skipped skipped (suites); $cases_skipped test cases skipped")
done

# The Python package, as pip builds it (meson-python, -Dpython_only) into
# the torch2 lane's environment; installed into a folder of the clone
# (--target), not into the shared environment.
python_tests=()
if [[ " ${lanes[*]} " == *" torch2 "* ]]; then
  package_started=$SECONDS
  section "Python package: pip install . (torch2 lane)"
  if [[ $fresh == fresh ]]; then rm -rf "$PACKAGE_DIR"; fi
  if install_package; then
    # Every suite of tests/python but the cross-lane one (below).
    for suite in tests/python/test_*.py; do
      [[ $suite == */test_cross_version.py ]] || python_tests+=("$suite")
    done
  else
    echo "the Python package did not build"
    status=1
    failed=$((failed + 1))
  fi
  timings+=("python package: built in $((SECONDS - package_started)) s")
fi
# Blobs across versions: packed by one lane, read by the other.
if ((${#lanes[@]} == 2)); then python_tests+=(tests/python/test_cross_version.py); fi

if ((${#python_tests[@]} > 0)); then
  pytest_started=$SECONDS
  section "Python suites: ${python_tests[*]}"
  log=$(mktemp)
  env=(ZCWRAP_REQUIRE_PACKAGE=1 PYTHONPATH="$PWD/$PACKAGE_DIR/site" ZCWRAP_DEBIAN_PYTHON="$DEBIAN_PYTHON")
  for lane in "${lanes[@]}"; do env+=("ZCWRAP_${lane^^}_BUILD=$PWD/$(lane_build_dir "$lane")"); done
  show env "${env[@]}" "$TORCH2_PYTHON" -m pytest -p no:cacheprovider -q -W ignore::FutureWarning \
    "${python_tests[@]}" 2>&1 | tee "$log" || status=1
  # pytest's closing line: "3 passed, 1 skipped in 2.0s", "1 failed, 2 passed in ...".
  count() { grep -Eo "[0-9]+ $1" "$log" | tail -1 | cut -d' ' -f1 || true; }
  py_passed=$(count passed) py_failed=$(count failed) py_skipped=$(count skipped)
  py_failed=$((${py_failed:-0} + $(grep -Eo '[0-9]+ errors?' "$log" | tail -1 | cut -d' ' -f1 || echo 0)))
  passed=$((passed + ${py_passed:-0}))
  failed=$((failed + py_failed))
  skipped=$((skipped + ${py_skipped:-0}))
  timings+=("python suites: $((SECONDS - pytest_started)) s; ${py_passed:-0} passed, $py_failed failed, ${py_skipped:-0} skipped")
  rm -f "$log"
fi

section "Summary ($((SECONDS - started)) s)"
printf '%s\n' "${timings[@]}"
# One closing line in the 'N passed, N failed' form, over every lane.
echo "zcwrap: $passed passed, $failed failed, $skipped skipped"
exit "$status"
