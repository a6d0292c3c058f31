"""Blobs across LibTorch versions: packed by one lane's zcwrap, read by the other's.

scripts/test.sh runs this with the torch2 lane's Python after building both
lanes, and names the two builds in the environment:

    ZCWRAP_TORCH2_BUILD   build folder of the pip torch 2.x lane
    ZCWRAP_DEBIAN_BUILD   build folder of Debian's LibTorch 1.13 lane
    ZCWRAP_DEBIAN_PYTHON  Debian's python3 (torch 1.13)

Every output is compared, bit for bit, with torch.jit.load of the original
file under the torch of the zcwrap that ran it.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

TORCH2 = os.environ.get("ZCWRAP_TORCH2_BUILD", "")
DEBIAN = os.environ.get("ZCWRAP_DEBIAN_BUILD", "")
DEBIAN_PYTHON = os.environ.get("ZCWRAP_DEBIAN_PYTHON", "/usr/bin/python3")

pytestmark = pytest.mark.skipif(
    not (os.path.isfile(os.path.join(TORCH2, "cli/zcwrap")) and os.path.isfile(os.path.join(DEBIAN, "cli/zcwrap"))),
    reason="needs both lanes built: set ZCWRAP_TORCH2_BUILD and ZCWRAP_DEBIAN_BUILD (scripts/test.sh does)",
)

# Computes a fixture's reference output under the running torch and saves it.
REFERENCE = """
import sys, torch
model = torch.jit.load(sys.argv[1]).eval()
args = torch.load(sys.argv[2])
args = args if isinstance(args, tuple) else (args,)
with torch.no_grad():
    out = getattr(model, sys.argv[3])(*args)
torch.save(out, sys.argv[4])
"""

# Prints True when two torch.save'd results hold the same dtypes, shapes and bytes.
COMPARE = """
import sys, torch
def flat(x):
    return [t for v in x for t in flat(v)] if isinstance(x, (tuple, list)) else [x]
a = flat(torch.load(sys.argv[1])); b = flat(torch.load(sys.argv[2]))
same = len(a) == len(b) and all(
    x.dtype == y.dtype and x.shape == y.shape
    and x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
    == y.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
    for x, y in zip(a, b))
print(same)
"""


def zcwrap(build, *args):
    return subprocess.run([os.path.join(build, "cli/zcwrap"), *args], capture_output=True, text=True)


def fixtures(build):
    folder = os.path.join(build, "tests/fixtures")
    with open(os.path.join(folder, "fixtures.json")) as f:
        index = json.load(f)
    # One entry per model file and method; the large modern ones keep this quick.
    return folder, [m for m in index["models"] if os.path.getsize(os.path.join(folder, m["file"])) < 64 << 20]


def lane_params(build):
    if not os.path.isdir(os.path.join(build, "tests/fixtures")):
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures in {build or '(unset)'}"))]
    folder, models = fixtures(build)
    return [pytest.param(m, id=m["name"]) for m in models]


def reference(python, folder, model, path):
    done = subprocess.run([python, "-c", REFERENCE, os.path.join(folder, model["file"]),
                           os.path.join(folder, model["input"]), model["method"], path],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def same_result(python, a, b):
    done = subprocess.run([python, "-c", COMPARE, a, b], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def pack_then_run(packer, runner, model, tmp_path):
    """Packs a fixture of `packer`'s lane with its zcwrap, runs the blob with
    `runner`'s into tmp_path/out.pt: (fixtures folder, blob, run's result)."""
    folder = os.path.join(packer, "tests/fixtures")
    blob = str(tmp_path / "m.zcb")
    packed = zcwrap(packer, "pack", "-q", os.path.join(folder, model["file"]), "-o", blob)
    assert packed.returncode == 0, packed.stderr
    ran = zcwrap(runner, "run", blob, "-i", os.path.join(folder, model["input"]),
                 "--method", model["method"], "-o", str(tmp_path / "out.pt"))
    return folder, blob, ran


@pytest.mark.parametrize("model", lane_params(DEBIAN))
def test_blob_packed_under_1_13_runs_bit_equal_under_2_x(model, tmp_path):
    folder, blob, ran = pack_then_run(DEBIAN, TORCH2, model, tmp_path)
    info = json.loads(zcwrap(TORCH2, "inspect", "--json", blob).stdout)
    assert "libtorch 1.13" in info["producer"]
    assert ran.returncode == 0, ran.stderr
    # The reference: the same original file, loaded by this (2.x) torch.
    reference(sys.executable, folder, model, str(tmp_path / "want.pt"))
    assert same_result(sys.executable, str(tmp_path / "want.pt"), str(tmp_path / "out.pt"))


@pytest.mark.parametrize("model", lane_params(TORCH2))
def test_blob_packed_under_2_x_runs_under_1_13_or_names_both_versions(model, tmp_path):
    folder, _, ran = pack_then_run(TORCH2, DEBIAN, model, tmp_path)
    if ran.returncode == 0:
        # 1.13 read the skeleton: then its result must be what 1.13 makes of
        # the original file.
        reference(DEBIAN_PYTHON, folder, model, str(tmp_path / "want.pt"))
        assert same_result(DEBIAN_PYTHON, str(tmp_path / "want.pt"), str(tmp_path / "out.pt"))
        return
    # Otherwise: one line, the bad-blob status, both versions named.
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 4, ran.stderr
    assert len(lines) == 1 and lines[0].startswith("zcwrap: error: "), ran.stderr
    assert "libtorch 1.13" in lines[0] and f"libtorch {torch.__version__.split('+')[0]}" in lines[0], lines[0]
