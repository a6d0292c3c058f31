#!/usr/bin/env bash
# zcwrap on a GPU machine: builds against this machine's pip torch (CUDA),
# runs the fast-load GPU tests, checks `zcwrap run --device cuda:0 --fast-load`
# against the CPU, packs and runs AOTInductor packages compiled for CUDA
# (scripts/aoti_cuda_check.py), and runs the fast-load benchmark (~1 GiB and ~8 GiB blobs:
# fast path vs pinned cudaMemcpy vs the per-storage path). A few minutes on
# 16 cores.
#
# Needs .deps/ from scripts/fetch-gpu-deps.sh (run on the Debian machine),
# python3 with a CUDA torch, meson, ninja and a C++ compiler. Writes
# everything it prints, the test log and the benchmark tables (Markdown and
# JSON) to $OUT (default: ./gpu-check-out).
#
# Usage: bash scripts/gpu-check.sh [--quick]     --quick: the 1 GiB blob only
# Environment: PYTHON (python3), ZCWRAP_GPU_BUILD (build-gpu), and for a dry
# run without a pip torch: ZCWRAP_TORCH_DIR, ZCWRAP_CUDART, ZCWRAP_CUDA_INCLUDE.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1

PY=${PYTHON:-python3}
DEPS=$ROOT/.deps
# Made on each run: library links and the CUDA prefix. Outside the source
# tree, where Meson refuses include folders given by absolute path.
LOCAL=${ZCWRAP_GPU_LOCAL:-${TMPDIR:-/tmp}/zcwrap-gpu-check}
BUILD=${ZCWRAP_GPU_BUILD:-build-gpu}
SIZES=1,8
if [[ ${1:-} == --quick ]]; then SIZES=1; fi
STARTED=$SECONDS

# show and die; section is this script's own (it prints the time so far).
# shellcheck source=scripts/common.sh
source scripts/common.sh
section() { printf '\n== %s (%ds) ==\n' "$*" $((SECONDS - STARTED)); }

[[ -d $DEPS/usr/include ]] || die ".deps/ is missing: run scripts/fetch-gpu-deps.sh on the Debian machine and carry .deps"
if [[ -z ${CXX:-} ]] && ! command -v c++ >/dev/null && command -v g++ >/dev/null; then export CXX=g++; fi
for tool in meson ninja "${CXX:-c++}" "$PY"; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

section "Machine"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv 2>&1 | tee "$OUT/gpu.csv" || echo "nvidia-smi failed"
uname -a
echo "cores: $(nproc), memory: $(free -g | awk '/Mem:/ {print $2}') GiB, /dev/shm free: $(df -h /dev/shm | awk 'NR==2 {print $4}')"
"${CXX:-c++}" --version | head -1
meson --version
# What the build needs to know about this torch: what meson reads from it,
# plus, with --cuda, the libcudart it loads once CUDA starts (the one zcwrap
# must link) and the folders of the libraries it loaded.
"$PY" scripts/torch_probe.py --cuda >"$OUT/torch.env"
eval "$(grep -E '^(version|prefix|cxx11_abi|cuda|cuda_ok|cudart|loaded_libdirs)=' "$OUT/torch.env")"
TORCH_VERSION=$version TORCH_ABI=$cxx11_abi TORCH_CUDA=$cuda CUDA_OK=$cuda_ok LIB_DIRS=$loaded_libdirs
TORCH_DIR=${ZCWRAP_TORCH_DIR:-$prefix}
CUDART=${ZCWRAP_CUDART:-$cudart}
cat "$OUT/torch.env"
[[ -f $TORCH_DIR/lib/libtorch_cuda.so ]] || die "$TORCH_DIR/lib has no libtorch_cuda.so: this torch has no CUDA"
# When torch does not load libcudart itself (statically linked), the toolkit's.
if [[ -z $CUDART ]]; then
  for f in /usr/local/cuda/lib64/libcudart.so.[0-9]*; do
    if [[ -f $f ]]; then
      CUDART=$f
      break
    fi
  done
fi
[[ -n $CUDART ]] || die "cannot tell which libcudart torch uses; set ZCWRAP_CUDART=/path/to/libcudart.so.N"

section "Local prefix ($LOCAL)"
rm -rf "$LOCAL"
mkdir -p "$LOCAL/lib" "$LOCAL/cuda/lib"
# CUDA: the runtime torch loaded, and headers of the same major version:
# beside it (nvidia pip packages), the toolkit's, or the ones carried.
ln -s "$CUDART" "$LOCAL/cuda/lib/libcudart.so"
if [[ $(basename "$CUDART") != libcudart.so ]]; then ln -s "$CUDART" "$LOCAL/cuda/lib/$(basename "$CUDART")"; fi
cudart_major=$(basename "$CUDART" | sed -n 's/^libcudart\.so\.\([0-9]*\).*/\1/p')
cuda_include=${ZCWRAP_CUDA_INCLUDE:-}
if [[ -z $cuda_include ]]; then
  for dir in "$(dirname "$CUDART")/../include" /usr/local/cuda/include "$DEPS/cuda/include"; do
    [[ -f $dir/cuda_runtime_api.h && -f $dir/cuda.h ]] || continue
    version=$(sed -n 's/^#define CUDART_VERSION *\([0-9]*\).*/\1/p' "$dir/cuda_runtime_api.h")
    # Headers of the runtime's major version; else the first complete set.
    if [[ -z $cuda_include ]]; then cuda_include=$(cd "$dir" && pwd); fi
    if ((${version:-0} / 1000 == ${cudart_major:-0})); then
      cuda_include=$(cd "$dir" && pwd)
      break
    fi
  done
fi
[[ -n $cuda_include ]] || die "no cuda_runtime_api.h and cuda.h beside $CUDART, in /usr/local/cuda or in .deps/cuda"
cp -rL "$cuda_include" "$LOCAL/cuda/include"
echo "libcudart: $CUDART"
echo "CUDA headers: $cuda_include ($(grep -m1 -o 'CUDART_VERSION *[0-9]*' "$cuda_include/cuda_runtime_api.h" || true))"
# zstd and xxhash: the system's shared libraries when it has them, else the
# carried Debian ones (they need glibc >= 2.34).
debian_lib=$DEPS/usr/lib/x86_64-linux-gnu
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
for soname in libzstd.so.1 libxxhash.so.0; do
  lib=$("$ldconfig" -p 2>/dev/null | awk -v n="$soname" '$1 == n && /x86-64/ {print $NF; exit}' || true)
  [[ -n $lib ]] || lib=$(readlink -f "$debian_lib/$soname")
  ln -s "$lib" "$LOCAL/lib/$soname"
  ln -s "$lib" "$LOCAL/lib/${soname%.*}"
  echo "$soname: $lib"
done
inc=$DEPS/usr/include

section "Configure and build ($BUILD)"
# -Dpython picks this torch (meson.build reads its folder, version and C++
# ABI flag from it, and the nvidia-* library folders it loads from). The
# carried headers and the library links are on the compiler's search path,
# where meson.build looks for what pkg-config does not find.
cpp_args="-isystem $inc"
link_args="-L$LOCAL/lib -Wl,-rpath,$LOCAL/lib"
for dir in $LIB_DIRS; do link_args+=" -Wl,-rpath-link,$dir"; done
setup=(setup "$BUILD" -Dpython="$(command -v "$PY")" -Dcuda=enabled -Dcudart_prefix="$LOCAL/cuda"
       -Dsamples=disabled -Dpython_package=disabled -Dcpp_args="$cpp_args" -Dcpp_link_args="$link_args")
if [[ -n ${ZCWRAP_TORCH_DIR:-} ]]; then setup+=(-Dtorch_prefix="$ZCWRAP_TORCH_DIR"); fi
if [[ -f $BUILD/meson-private/coredata.dat ]]; then
  # Dependencies found before may point into an older $LOCAL.
  show meson configure "$BUILD" --clearcache
  show meson "${setup[@]}" --reconfigure
else
  show meson "${setup[@]}"
fi
show ninja -C "$BUILD" tests/test_fast_load benchmarks/fast_load_bench cli/zcwrap

status=0
section "GPU tests"
export ZCWRAP_FIXTURES=$DEPS/fixtures ZCWRAP_BIN=$ROOT/$BUILD/cli/zcwrap
timeout 300 "$BUILD/tests/test_fast_load" --no-intro 2>&1 | tee "$OUT/test_fast_load.log" || status=1

section "CLI: zcwrap run --device cuda:0 --fast-load"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
zcwrap=$BUILD/cli/zcwrap
fixture=$DEPS/fixtures/mobilenet_traced
if show "$zcwrap" pack "$fixture.pt" -o "$tmp/m.zcb" &&
  show "$zcwrap" run "$tmp/m.zcb" -i "${fixture}_in.pt" -o "$tmp/cpu.pt" &&
  show "$zcwrap" run "$tmp/m.zcb" -i "${fixture}_in.pt" -o "$tmp/fast.pt" --device cuda:0 --fast-load &&
  show "$zcwrap" run "$tmp/m.zcb" -i "${fixture}_in.pt" -o "$tmp/plain.pt" --device cuda:0; then
  "$PY" - "$tmp" <<'EOF' || status=1
import sys, torch
d = sys.argv[1]
load = lambda n: torch.load(f"{d}/{n}.pt", weights_only=False)
cpu, fast, plain = load("cpu"), load("fast"), load("plain")
print("fast == plain (bitwise):", torch.equal(fast, plain))
print("fast vs cpu: max abs diff %.3g, allclose(rtol=1e-3, atol=1e-4): %s"
      % ((fast - cpu).abs().max().item(), torch.allclose(fast, cpu, rtol=1e-3, atol=1e-4)))
sys.exit(0 if torch.equal(fast, plain) and torch.allclose(fast, cpu, rtol=1e-3, atol=1e-4) else 1)
EOF
else
  status=1
fi

section "AOTInductor: CUDA packages through the CLI (pack, inspect, run, unpack)"
aoti_status=0
timeout 900 "$PY" scripts/aoti_cuda_check.py "$(readlink -f "$zcwrap")" "$tmp/aoti" 2>&1 | tee "$OUT/aoti_cuda_check.log" ||
  aoti_status=$?
if ((aoti_status == 77)); then
  echo "no CUDA device: AOTInductor CUDA check skipped"
elif ((aoti_status != 0)); then
  status=1
fi

section "Benchmark: fast load, ${SIZES//,/ and } GiB"
bench_status=0
timeout 420 "$BUILD/benchmarks/fast_load_bench" --sizes-gib "$SIZES" --sweep --json "$OUT/fast_load_bench.json" \
  | tee "$OUT/fast_load_bench.md" || bench_status=$?
if ((bench_status == 77)); then
  echo "no CUDA device: benchmark skipped"
elif ((bench_status != 0)); then
  status=1
fi

section "Summary"
{
  echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo "torch $TORCH_VERSION (CUDA $TORCH_CUDA), cxx11 ABI $TORCH_ABI, $("${CXX:-c++}" --version | head -1)"
  echo "command: bash scripts/gpu-check.sh${1:+ $1}"
  grep -E '^\[doctest\] (test cases|assertions)' "$OUT/test_fast_load.log" || true
  grep -E '^aoti_cuda_check:' "$OUT/aoti_cuda_check.log" || true
  echo
  cat "$OUT/fast_load_bench.md" 2>/dev/null || true
} | tee "$OUT/summary.md"
echo "gpu-check: $( ((status == 0)) && echo passed || echo FAILED ) in $((SECONDS - STARTED)) s; results in $OUT"
exit "$status"
