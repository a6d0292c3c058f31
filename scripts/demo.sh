#!/usr/bin/env bash
# zcwrap demo: build, pack the sample models, inspect and run the blobs,
# check the results against torch.jit.load of the originals, then measure
# several worker processes sharing one copy of the weights (zcwrap bench)
# and run the sample driver/worker program.
#
# Safe to run again and from any folder. On a fresh Debian 12 machine run it
# as root: it installs the packages that are missing, and only those, and the
# pinned pip torch into a virtual environment outside the clone (first run:
# about 3.3 GB downloaded; see README).
#
# Usage: scripts/demo.sh [--lane torch2|debian]   (default: torch2, the pip torch)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# shellcheck source=scripts/common.sh
source scripts/common.sh
lane=torch2
if [[ ${1:-} == --lane ]]; then
  [[ $# -ge 2 ]] || die "--lane needs a value (${LANES[*]})"
  lane=$2
elif [[ $# -gt 0 ]]; then
  die "unknown argument '$1' (usage: scripts/demo.sh [--lane torch2|debian])"
fi
BUILD=$(lane_build_dir "$lane")
OUT=samples-out/$lane
WORKERS=4
ZCWRAP=$BUILD/cli/zcwrap
SAMPLE=$BUILD/samples/zcwrap-sample

section "Packages"
ensure_packages
if [[ $lane == torch2 ]]; then
  section "Python environment (pinned pip torch)"
  ensure_venv
fi
PYTHON=$(lane_python "$lane")

section "Build (lane $lane)"
build_lane "$lane"
[[ -x $SAMPLE ]] || die "$SAMPLE was not built; enable it with: meson configure $BUILD -Dsamples=enabled"

section "Sample models"
sample_files=(classifier.pt classifier_in.pt encoder.pt encoder_in.pt head.pt head_in.pt)
have_all=1
for f in "${sample_files[@]}"; do [[ -f $OUT/$f ]] || have_all=0; done
if ((have_all)); then
  echo "reusing $OUT/ (delete it to regenerate)"
else
  show "$PYTHON" samples/make_sample_models.py "$OUT"
fi

section "Pack: a classifier on its own, and a two-stage pipeline with a tied weight"
show "$ZCWRAP" pack "$OUT/classifier.pt" -o "$OUT/classifier.zcb"
show "$ZCWRAP" pack --model "encoder=$OUT/encoder.pt" --model "head=$OUT/head.pt" -o "$OUT/pipeline.zcb"

section "Inspect"
show "$ZCWRAP" inspect --brief "$OUT/classifier.zcb"
echo
show "$ZCWRAP" inspect --brief "$OUT/pipeline.zcb"

section "Run one batch straight from each blob"
show "$ZCWRAP" run "$OUT/classifier.zcb" -i "$OUT/classifier_in.pt" -o "$OUT/classifier_out.pt"
show "$ZCWRAP" run "$OUT/pipeline.zcb" --model encoder -i "$OUT/encoder_in.pt" -o "$OUT/encoder_out.pt"
show "$ZCWRAP" run "$OUT/pipeline.zcb" --model head -i "$OUT/head_in.pt" -o "$OUT/head_out.pt"

section "Compare those outputs with torch.jit.load of the original files (Python)"
"$PYTHON" - "$OUT" <<'EOF'
import sys

import torch

out = sys.argv[1]
failed = False
for name in ("classifier", "encoder", "head"):
    model = torch.jit.load(f"{out}/{name}.pt")
    inputs = torch.load(f"{out}/{name}_in.pt")
    with torch.no_grad():
        want = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    got = torch.load(f"{out}/{name}_out.pt")
    # Bit for bit: torch.equal alone would call 0.0 and -0.0 equal.
    same = (got.dtype == want.dtype and got.shape == want.shape
            and got.numpy().tobytes() == want.numpy().tobytes())
    verdict = "equal" if same else "DIFFERENT"
    print(f"{name:<10} {verdict}  {str(got.dtype)[6:]}{list(got.shape)}")
    failed |= not same
sys.exit(1 if failed else 0)
EOF

section "Measure: $WORKERS workers unwrap the classifier, then $WORKERS that torch::jit::load it"
show "$ZCWRAP" bench "$OUT/classifier.actor.json" --workers "$WORKERS" \
  --input "$OUT/classifier_in.pt" --baseline "$OUT/classifier.pt"

section "The same for the pipeline (encoder, then head on its output)"
show "$ZCWRAP" bench "$OUT/pipeline.actor.json" --workers "$WORKERS" \
  --input "$OUT/encoder_in.pt" --baseline "encoder=$OUT/encoder.pt" --baseline "head=$OUT/head.pt"

section "The actor pattern in a program of your own: samples/sample_driver.cpp, sample_worker.cpp"
show "$SAMPLE" drive --config "$OUT/pipeline.actor.json" --workers 2 --batches 5 --input "$OUT/encoder_in.pt"

section "Done"
echo "blobs and actor configs are in $OUT/; try: $ZCWRAP bench --help, $SAMPLE --help"
