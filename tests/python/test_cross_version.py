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


# The skeleton kinds of torch 2.x alone. A 1.13 zcwrap reads their blobs'
# format (inspect, verify) and refuses to run or unpack them with one line
# that says what to use instead; nothing is written.

def one_line_refusal(done, status, *words):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, done.stderr
    assert len(lines) == 1 and lines[0].startswith("zcwrap: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def aoti_fixture(build):
    folder = os.path.join(build, "tests/aoti-fixtures")
    index_path = os.path.join(folder, "fixtures.json")
    if not os.path.isfile(index_path):
        pytest.fail(f"no AOTInductor fixtures in {folder} (meson test of the torch2 lane links them there)")
    with open(index_path) as f:
        index = json.load(f)
    if "skip" in index:
        pytest.skip(index["skip"])
    return folder, index["models"][0]


def test_aot_inductor_blob_is_described_under_1_13_and_refused_to_run(tmp_path):
    folder, model = aoti_fixture(TORCH2)
    blob = str(tmp_path / "m.zcb")
    packed = zcwrap(TORCH2, "pack", "-q", os.path.join(folder, model["file"]), "-o", blob)
    assert packed.returncode == 0, packed.stderr

    info = zcwrap(DEBIAN, "inspect", "--json", blob)
    assert info.returncode == 0, info.stderr
    models = json.loads(info.stdout)["models"]
    assert [m["skeleton"]["kind"] for m in models] == ["aot_inductor"]
    # What the package was compiled for reads the same from either build.
    assert models[0]["compiled"] == json.loads(zcwrap(TORCH2, "inspect", "--json", blob).stdout)["models"][0]["compiled"]
    assert models[0]["compiled"]["device"] == "cpu" and models[0]["compiled"]["library_bytes"] > 0
    verified = zcwrap(DEBIAN, "verify", blob)
    assert verified.returncode == 0, verified.stderr

    ran = zcwrap(DEBIAN, "run", blob, "-i", os.path.join(folder, model["input"]), "-o", str(tmp_path / "out.pt"))
    one_line_refusal(ran, 5, "AOTInductor", "libtorch 1.13", "torch 2.6 or later")
    unpacked = zcwrap(DEBIAN, "unpack", blob, "-o", str(tmp_path / "back.pt2"))
    one_line_refusal(unpacked, 5, "AOTInductor", "libtorch 1.13")
    assert sorted(os.listdir(tmp_path)) == ["m.actor.json", "m.zcb"]  # what pack wrote, nothing more


def test_torch_export_blob_is_described_under_1_13_and_refused_to_run(tmp_path):
    zcwrap_package = pytest.importorskip("zcwrap", reason="the Python package packs torch.export programs")
    if not hasattr(torch, "export"):
        pytest.skip(f"torch {torch.__version__} has no torch.export")
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 8)
    torch.save(x, str(tmp_path / "x.pt"))
    store = tmp_path / "store"
    wrapper = zcwrap_package.ModelWrapper.from_model(torch.export.export(model, (x,)), store_dir=str(store))
    blob = wrapper.blob_path

    info = zcwrap(DEBIAN, "inspect", "--json", blob)
    assert info.returncode == 0, info.stderr
    assert [m["skeleton"]["kind"] for m in json.loads(info.stdout)["models"]] == ["torch_export"]
    ran = zcwrap(DEBIAN, "run", blob, "-i", str(tmp_path / "x.pt"), "-o", str(tmp_path / "out.pt"))
    one_line_refusal(ran, 5, "Python")
    assert not os.path.exists(tmp_path / "out.pt")
