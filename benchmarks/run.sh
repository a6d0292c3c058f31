#!/usr/bin/env bash
# zcwrap benchmarks: P1 unwrap latency, P2 sharing, P3 pack speed, cold
# start, the cost of large manifests (manifest_bench)
# (docs/BENCHMARKS.md says what each measures and the goals); with the
# torch2 lane also the Python package (python_bench.py), torch.export
# programs (export_bench.py), Ray (ray_bench.py, against ray-zerocopy 0.2.0)
# and AOTInductor packages (aoti_bench.py, against AOTIModelPackageLoader;
# actor_start_bench.py, fresh Ray actors). The AOTInductor models are
# compiled once into benchmarks/out/aoti (10 to 25 minutes on 2 cores).
#
# Usage: benchmarks/run.sh [--lane torch2|debian] [--no-python] [run.py options, e.g. --runs 3 --only p1 p2]
#
# For each LibTorch lane (both unless --lane; scripts/common.sh), one after
# the other in one run: builds zcwrap in the lane's build folder, generates
# the models with the lane's torch into benchmarks/out/LANE/ (about 1.3 GiB,
# reused by later runs), packs them, and measures; about 10 minutes a lane
# on 2 cores. Writes benchmarks/out/LANE/results.json and results.md, then
# benchmarks/out/lanes.md with the lanes side by side. Needs about 4 GiB
# free on disk a lane and 10 GiB of memory (8 torch::jit::load workers of a
# 1 GiB model). The cold-start part empties the page cache of the model files
# with POSIX_FADV_DONTNEED (unprivileged); as root it also measures after
# `echo 3 > /proc/sys/vm/drop_caches`. Put benchmarks/out on a disk, not a
# tmpfs: a tmpfs cannot be evicted.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# shellcheck source=scripts/common.sh
source scripts/common.sh
lanes=("${LANES[@]}")
if [[ ${1:-} == --lane ]]; then
  [[ $# -ge 2 ]] || die "--lane needs a value (${LANES[*]})"
  lane_build_dir "$2" >/dev/null
  lanes=("$2")
  shift 2
fi
python_benches=yes
if [[ ${1:-} == --no-python ]]; then
  python_benches=""
  shift
fi

section "Packages"
ensure_packages
[[ " ${lanes[*]} " != *" torch2 "* ]] || ensure_venv

results=()
for lane in "${lanes[@]}"; do
  out=benchmarks/out/$lane
  python=$(lane_python "$lane")
  section "Lane $lane: build"
  build_lane "$lane"
  section "Lane $lane: models"
  show "$python" benchmarks/make_models.py "$out"
  section "Lane $lane: measure"
  show "$DEBIAN_PYTHON" benchmarks/run.py --zcwrap "$(lane_build_dir "$lane")/cli/zcwrap" --out "$out" "$@"
  results+=("$lane=$out/results.json")
done

section "Manifest size: open and inspect of manifests up to the 256 MiB cap"
show "$DEBIAN_PYTHON" benchmarks/manifest_bench.py "$(lane_build_dir "${lanes[0]}")" benchmarks/out/manifest |
  tee benchmarks/out/manifest/manifest.md

section "Side by side"
show "$DEBIAN_PYTHON" benchmarks/lanes.py "${results[@]}" | tee benchmarks/out/lanes.md

if [[ -n $python_benches && " ${lanes[*]} " == *" torch2 "* ]]; then
  section "Python package (pip install .) and ray-zerocopy 0.2.0, for comparison only"
  install_package
  # The peer goes into a folder of its own, never into the project's environment.
  show "$TORCH2_PYTHON" -m pip install --disable-pip-version-check --no-deps --upgrade --target build-bench/peers \
    ray-zerocopy==0.2.0
  export PYTHONPATH=$PWD/$PACKAGE_DIR/site:$PWD/build-bench/peers
  section "Python: load time and memory against torch.load / load_state_dict / torch.jit.load"
  show "$TORCH2_PYTHON" benchmarks/python_bench.py benchmarks/out/python
  section "Python: torch.export programs against torch.export.load"
  show "$TORCH2_PYTHON" benchmarks/export_bench.py benchmarks/out/export --models resnet50,resnet18
  section "Ray: N actors, plain loads vs ray-zerocopy vs zcwrap"
  show "$TORCH2_PYTHON" benchmarks/ray_bench.py benchmarks/out/ray
  section "AOTInductor: compile the models (once), then zcwrap against AOTIModelPackageLoader"
  show "$TORCH2_PYTHON" benchmarks/make_aoti_models.py benchmarks/out/aoti
  ZCWRAP_STORE=/dev/shm/zcwrap-aoti-bench-$UID show "$TORCH2_PYTHON" benchmarks/aoti_bench.py \
    --build "$(lane_build_dir torch2)" --models benchmarks/out/aoti --runs 5 --workers 8
  section "Ray: time to the first result in fresh actors (resnet50: eager, ExportedProgram, AOTInductor)"
  show "$TORCH2_PYTHON" benchmarks/actor_start_bench.py benchmarks/out/aoti benchmarks/out/aoti/actor_start.json
fi
