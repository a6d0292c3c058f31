"""AOTInductor packages from Python: pack (ModelWrapper.from_model of the
.pt2's path), unwrap in a fresh process that did not make torch global, call
the result like torch's own loader's model, bit for bit.

The packages are the C++ suites' fixtures (tests/fixtures/make_aoti_fixtures.py),
which `meson test` links into the torch2 build as tests/aoti-fixtures."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REQUIRE_PACKAGE, import_zcwrap

zcwrap = import_zcwrap()


def fixtures():
    build = os.environ.get("ZCWRAP_TORCH2_BUILD")
    folder = os.path.join(build, "tests", "aoti-fixtures") if build else None
    if folder is None or not os.path.isfile(os.path.join(folder, "fixtures.json")):
        if REQUIRE_PACKAGE:
            raise RuntimeError(f"no AOTInductor fixtures in {folder} (meson test links them there)")
        pytest.skip("no AOTInductor fixtures: set ZCWRAP_TORCH2_BUILD to a torch2 build where meson test ran",
                    allow_module_level=True)
    with open(os.path.join(folder, "fixtures.json")) as f:
        index = json.load(f)
    if "skip" in index:
        pytest.skip(index["skip"], allow_module_level=True)
    return folder, index["models"]


FOLDER, MODELS = fixtures()

# Run in a fresh interpreter: torch imported the usual way (RTLD_LOCAL), so
# this is the process where torch's own aoti_load_package fails with
# "undefined symbol: aoti_torch_dtype_float32".
CHILD = r"""
import os, sys, torch, zcwrap
blob, inp, out = sys.argv[1:4]
assert not (sys.getdlopenflags() & os.RTLD_GLOBAL)
model = zcwrap.ModelWrapper.open(blob).unwrap()
assert isinstance(model, zcwrap._aoti.CompiledModel), type(model)
with torch.no_grad():
    result = model(*torch.load(inp))
torch.save(tuple(result) if isinstance(result, (list, tuple)) else (result,), out)
for t in model.tensors:
    assert not t.untyped_storage().resizable()
# torch's own AOTInductor runner (torch.export.pt2_archive) imports
# torch._inductor, 2 s in a fresh worker: unwrap and the call do without it.
assert "torch._inductor" not in sys.modules, "unwrap or the call imported torch._inductor"
print("ok", len(model.tensors))
"""


@pytest.mark.parametrize("entry", MODELS, ids=[m["name"] for m in MODELS])
def test_pack_and_call_bit_equal_to_torch(entry, tmp_path, monkeypatch):
    monkeypatch.setenv("ZCWRAP_STORE", str(tmp_path / "store"))
    wrapper = zcwrap.ModelWrapper.from_model(os.path.join(FOLDER, entry["file"]))
    assert wrapper._model_refs == {"model": "aot_inductor"}
    compiled = zcwrap.describe(wrapper.blob_path)["models"][0]["compiled"]
    assert compiled["device"] == "cpu" and compiled["kernel_files"] == 0 and compiled["library_bytes"] > 0
    out = tmp_path / "out.pt"
    env = dict(os.environ, ZCWRAP_STORE=str(tmp_path / "store"))
    r = subprocess.run([sys.executable, "-c", CHILD, wrapper.blob_path, os.path.join(FOLDER, entry["input"]), str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")
    got = torch.load(out)
    want = torch.load(os.path.join(FOLDER, entry["reference"]))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.numpy().tobytes() == b.numpy().tobytes()


def test_unwrapped_weights_are_the_blobs_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("ZCWRAP_STORE", str(tmp_path / "store"))
    wrapper = zcwrap.ModelWrapper.from_model(os.path.join(FOLDER, "cnn_so.pt2"))
    model = wrapper.unwrap()
    from conftest import mapping_of
    for t in model.tensors:
        path, _, perms, _ = mapping_of(t.data_ptr())
        assert os.path.realpath(path) == os.path.realpath(wrapper.blob_path)
        assert perms.startswith("r-") and perms[3] == "s"  # read-only, shared
    # Called as the exported model is: a keyword it was not exported with is refused.
    inputs = torch.load(os.path.join(FOLDER, "cnn_in.pt"))
    with pytest.raises(zcwrap.BadModelError, match="keyword arguments"):
        model(*inputs, bogus=inputs[0])


def test_a_package_of_several_models_unwraps_to_a_dict_of_them(tmp_path, monkeypatch):
    # torch._inductor.package.package_aoti's package of several compiled
    # models: each is a model of the blob, by its name in the package.
    monkeypatch.setenv("ZCWRAP_STORE", str(tmp_path / "store"))
    index = json.load(open(os.path.join(FOLDER, "fixtures.json")))["multi"]
    wrapper = zcwrap.ModelWrapper.from_model(os.path.join(FOLDER, index["file"]))
    assert not wrapper.is_standalone_module
    assert wrapper._model_refs == {m["name"]: "aot_inductor" for m in index["models"]}
    models = wrapper.unwrap()
    assert sorted(models) == sorted(m["name"] for m in index["models"])
    for m in index["models"]:
        with torch.no_grad():
            got = models[m["name"]](*torch.load(os.path.join(FOLDER, m["input"])))
        got = tuple(got) if isinstance(got, (list, tuple)) else (got,)
        want = torch.load(os.path.join(FOLDER, m["reference"]))
        assert len(got) == len(want)
        assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(got, want)), m["name"]


def test_exported_program_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ZCWRAP_STORE", str(tmp_path / "store"))
    with pytest.raises(zcwrap.BadModelError, match="ExportedProgram archive"):
        zcwrap.ModelWrapper.from_model(os.path.join(FOLDER, "bad_exported_program.pt2"))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: packages compiled for CUDA are compiled, packed and run on a GPU only")
def test_cuda_packages_pack_run_and_unpack_bit_equal_to_torch(tmp_path):
    # The CNN and the transformer block compiled for cuda:0 in both weight
    # settings, through the CLI (scripts/aoti_cuda_check.py, which
    # scripts/gpu-check.sh runs too).
    from conftest import ZCWRAP_BIN
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "aoti_cuda_check.py")
    r = subprocess.run([sys.executable, script, ZCWRAP_BIN, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
