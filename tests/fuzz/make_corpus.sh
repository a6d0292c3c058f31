#!/usr/bin/env bash
# Regenerates tests/fuzz/corpus/ (real blobs packed by the zcwrap CLI from the
# test fixtures; tests/fixtures/make_fixtures.py, fixed seeds) and
# tests/fuzz/corpus-input/ (the pickles of run inputs from the same fixtures).
# Usage: tests/fuzz/make_corpus.sh [ZCWRAP_BIN]   (default: build/cli/zcwrap)
# Packing is deterministic: with the same zcwrap and LibTorch the files come
# out byte for byte the same; commit them only when the format changes.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.."
zcwrap=$(readlink -f "${1:-build/cli/zcwrap}")
[[ -x $zcwrap ]] || { echo "make_corpus.sh: error: no zcwrap binary at $zcwrap; build it first" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Debian's python3-torch; a python3 earlier on PATH may have no torch.
/usr/bin/python3 tests/fixtures/make_fixtures.py "$scratch/fx" >/dev/null

out=tests/fuzz/corpus
rm -f "$out"/*.zcb
mkdir -p "$out"
pack() {
  local name=$1
  shift
  "$zcwrap" pack -q -o "$out/$name.zcb" --config "$scratch/$name.actor.json" "$@"
}
fx=$scratch/fx
# A standalone model with one of every tensor kind, views, ties, 0-d and empty tensors.
pack edge --name edge "$fx/edge.pt"
pack edge_align64 --name edge --align 64 "$fx/edge.pt"
# A two-model pipeline whose models share a storage.
pack pipeline --model a="$fx/pipeline_a.pt" --model b="$fx/pipeline_b.pt"
pack pipeline_align64 --align 64 --model a="$fx/pipeline_a.pt" --model b="$fx/pipeline_b.pt"
# Storages larger than the 4 KiB alignment, on page boundaries.
pack lstm --name lstm "$fx/lstm.pt"
ls -l "$out"

# fuzz_input's seeds: the data.pkl of real run inputs (a tensor, a tuple of
# tensors, a strided view, several dtypes) and of the crafted bad inputs.
inputs=tests/fuzz/corpus-input
rm -f "$inputs"/*.pkl
mkdir -p "$inputs"
/usr/bin/python3 - "$fx" "$inputs" <<'PY'
import os, sys, zipfile
fx, out = sys.argv[1:]
names = ["lstm_in.pt", "edge_in.pt", "edge_strided_in.pt", "pipeline_a_in.pt", "resnet18_scripted_in.pt", "three_methods_in.pt",
         "input_past_storage.pt", "input_global.pt", "input_persid.pt", "input_memo.pt"]
for name in names:
    with zipfile.ZipFile(os.path.join(fx, name)) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        with open(os.path.join(out, name[:-3] + ".pkl"), "wb") as f:
            f.write(z.read(pkl))
PY
ls -l "$inputs"
