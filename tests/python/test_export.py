"""torch.export programs (ExportedProgram) through zcwrap: skeleton kind torch_export.

Programs are exported here, at test time, from real architectures with random
weights: a transformer encoder layer, torchvision's resnet18, and a small net
with BatchNorm running statistics, a non-persistent buffer and a lifted
tensor constant. Every output is compared bit for bit with ``ep.module()`` of
the original program on the same inputs, and every tensor of what unwrap
returns must lie inside the blob's read-only shared mapping.
"""

import json
import os
import subprocess

import pytest
import torch
from torch import nn

from conftest import ZCWRAP_BIN, file_offset, import_or_skip, import_zcwrap, mapping_of, same_bytes

zcwrap = import_zcwrap()
if getattr(getattr(torch, "export", None), "ExportedProgram", None) is None:
    pytest.skip(f"torch {torch.__version__} has no torch.export (the Debian 1.13 lane): ExportedProgram support needs "
                "torch 2.1 or later", allow_module_level=True)

from zcwrap import _export  # noqa: E402  (after the skip: needs torch.export)

SKELETON_OF = _export.skeleton_of  # before any test replaces it


# Each test packs into its own store folder (conftest.py).
pytestmark = pytest.mark.usefixtures("store")


# --- models, exported here --------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)

    def forward(self, x):
        return self.layer(x)


class Stateful(nn.Module):
    """BatchNorm running statistics (buffers), a non-persistent buffer, and a
    plain tensor attribute, which export lifts as a tensor constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("offset", torch.linspace(-1, 1, 8), persistent=False)
        self.scale = torch.arange(1.0, 9.0)  # a lifted tensor constant
        with torch.no_grad():  # running statistics that differ at every position
            self.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 8))
            self.bn.running_var.copy_(torch.linspace(0.5, 2.0, 8))

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3)) * self.scale + self.offset


def _resnet18():
    torchvision = import_or_skip("torchvision", "torchvision is not installed (scripts/requirements.txt pins it)")
    return torchvision.models.resnet18(weights=None), (torch.randn(1, 3, 64, 64),)


MODELS = {
    "transformer": lambda: (Encoder(), (torch.randn(2, 10, 64),)),
    "resnet18": _resnet18,
    "stateful": lambda: (Stateful(), (torch.randn(2, 3, 16, 16),)),
}


@pytest.fixture(scope="module")
def exported():
    """name -> (original ExportedProgram, example args), exported once per module."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            model, args = MODELS[name]()
            made[name] = (torch.export.export(model.eval(), args), args)
        return made[name]

    return get


def reference(ep, args):
    with torch.no_grad():
        return ep.module()(*args)


def program_tensors(ep):
    """Every tensor an ExportedProgram holds, and those of its module()."""
    tensors = list(ep.state_dict.values()) + list(ep.constants.values())
    module = ep.module()
    tensors += list(module.parameters()) + list(module.buffers())
    for sub in module.modules():
        tensors += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
    return tensors, module


def assert_in_blob(tensors, blob_path):
    """Every tensor's bytes lie in one read-only shared mapping of the blob file."""
    real = os.path.realpath(blob_path)
    for t in tensors:
        if t.untyped_storage().nbytes() == 0:
            continue
        path, _, perms, _ = mapping_of(t.untyped_storage().data_ptr())
        assert path == real and perms == "r--s", (tuple(t.shape), path, perms)


# --- the skeleton on its own ------------------------------------------------------


def test_skeleton_is_torchs_json_without_the_weights(exported):
    ep, _ = exported("stateful")
    skeleton, tensors, unshared = _export.skeleton_of("model", ep)
    document = json.loads(skeleton)  # JSON, no pickle
    assert document["format"] == "zcwrap-torch-export" and unshared == 0
    program = json.loads(document["program"])
    assert set(program) >= {"graph_module", "schema_version", "opset_version"}
    # Every tensor of the program is taken out, with its manifest kind.
    kinds = {path: kind for path, kind, _ in tensors}
    assert kinds["conv.weight"] == "parameter" and kinds["bn.running_mean"] == "buffer"
    assert kinds["offset"] == "buffer"  # non-persistent
    assert kinds["scale"] == "constant"  # lifted tensor constant
    assert kinds["example_inputs[0]"] == "attribute"
    # ...and no tensor's bytes stay in the skeleton.
    assert len(skeleton) < 64 * 1024
    for _, _, t in tensors:
        if t.numel() > 4:
            assert t.numpy().tobytes() not in skeleton


@pytest.mark.parametrize("name", list(MODELS))
def test_the_faster_json_reading_equals_torchs(name, exported):
    """rebuild reads torch's JSON into torch's schema objects itself (type
    hints worked out once per class, not once per object): the result must
    equal what torch's own reader makes."""
    from torch._export.serde import schema
    from torch._export.serde import serialize as serde

    ep, _ = exported(name)
    text = json.loads(_export.skeleton_of("model", ep)[0])["program"]
    assert _export._Schema().convert(schema.ExportedProgram, json.loads(text)) == serde._bytes_to_dataclass(
        schema.ExportedProgram, text.encode())


# --- through the blob -------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_unwrap_is_the_program_zero_copy_and_bit_equal(name, exported):
    ep, args = exported(name)
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    assert wrapper._model_refs == {"model": "torch_export"}
    got = wrapper.unwrap()
    assert isinstance(got, torch.export.ExportedProgram)
    assert str(got.graph_signature) == str(ep.graph_signature)
    assert list(got.state_dict) == list(ep.state_dict) and list(got.constants) == list(ep.constants)
    assert all(same_bytes(got.state_dict[k], ep.state_dict[k]) for k in ep.state_dict)
    assert all(same_bytes(got.constants[k], ep.constants[k]) for k in ep.constants)
    assert all(isinstance(got.state_dict[k], nn.Parameter) for k in ep.graph_signature.parameters)
    tensors, module = program_tensors(got)
    assert len(tensors) >= len(ep.state_dict)
    assert_in_blob(tensors, wrapper.blob_path)
    with torch.no_grad():
        assert same_bytes(module(*args), reference(ep, args))


MEMORY_WORKER = """
import pickle, sys, torch, zcwrap
import torch._export.serde.serialize  # imported before the measure, as a server has it
torch.set_num_threads(1)

def anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

before = anon()
if sys.argv[1] == "zcwrap":
    with open(sys.argv[2], "rb") as f:
        ep = pickle.load(f).unwrap()
else:
    ep = torch.export.load(sys.argv[2])
with torch.no_grad():
    ep.module()(torch.randn(1, 4, 512))
print(anon() - before)
"""


def test_a_worker_holds_no_private_copy_of_the_weights(tmp_path):
    """The growth of a fresh process's private (anonymous) memory over
    unwrap, module() and the first call: under a quarter of the weights for
    zcwrap, at least the weights for torch.export.load (which reads them)."""
    import pickle
    import subprocess
    import sys

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True) for _ in range(4)]).eval()
    ep = torch.export.export(model, (torch.randn(1, 4, 512),))
    weights = sum(t.numel() * t.element_size() for t in ep.state_dict.values())
    with open(tmp_path / "wrapper.pkl", "wb") as f:
        pickle.dump(zcwrap.ModelWrapper.from_model(ep), f)
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    growth = {}
    for method, path in (("zcwrap", tmp_path / "wrapper.pkl"), ("torch", tmp_path / "m.pt2")):
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", MEMORY_WORKER, method, str(path)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        growth[method] = int(done.stdout.split()[-1])
    print(f"weights {weights / 2**20:.1f} MiB; private memory growth: {growth}")
    assert growth["zcwrap"] < weights / 4, (growth, weights)
    assert growth["torch"] >= weights, (growth, weights)


def test_weights_only_unwraps_a_program(exported):
    """The skeleton holds no pickle: weights_only has nothing to refuse."""
    ep, args = exported("stateful")
    got = zcwrap.ModelWrapper.from_model(ep).unwrap(weights_only=True)
    assert same_bytes(reference(got, args), reference(ep, args))


def test_a_dynamic_batch_dimension_survives(exported):
    """Range constraints, symbolic sizes and guards go through the skeleton
    (and through weights_only's checks of them)."""
    torch.manual_seed(0)
    model = Encoder().eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(model, (torch.randn(2, 10, 64),), dynamic_shapes=({0: batch},))
    got = zcwrap.ModelWrapper.from_model(ep).unwrap(weights_only=True)
    assert str(got.range_constraints) == str(ep.range_constraints)
    x = torch.randn(5, 10, 64)
    assert same_bytes(reference(got, (x,)), reference(ep, (x,)))
    with pytest.raises(AssertionError, match="Guard failed"):  # the guards still hold: at most 16
        reference(got, (torch.randn(17, 10, 64),))


class Pipeline:
    """A pipeline object: an exported program, an eager module sharing a
    weight with it, and plain attributes."""

    def __init__(self, ep, head):
        self.program = ep
        self.head = head
        self.labels = ["a", "b"]

    def __call__(self, x):
        return self.head(self.program.module()(x))


def test_pipeline_with_a_program_and_an_eager_module():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(16, 16), nn.ReLU()).eval()
    head = nn.Linear(16, 4).eval()
    head.weight = nn.Parameter(body[0].weight[:4].detach())  # a view of the program's weight
    x = torch.randn(3, 16)
    pipeline = Pipeline(torch.export.export(body, (x,)), head)
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    assert wrapper._model_refs == {"program": "torch_export", "head": "python_pickle"}
    got = wrapper.unwrap()
    assert type(got) is Pipeline and got.labels == ["a", "b"]
    assert isinstance(got.program, torch.export.ExportedProgram)
    tensors, _ = program_tensors(got.program)
    assert_in_blob(tensors + list(got.head.parameters()), wrapper.blob_path)
    # The head's weight is a view of the program's: stored once, in one place of the file.
    assert file_offset(got.head.weight.data_ptr()) == file_offset(got.program.state_dict["0.weight"].data_ptr())
    with torch.no_grad():
        assert same_bytes(got(x), pipeline(x))


def test_load_gives_the_runnable_module(exported):
    """ray-zerocopy's load() (and ActorWrapper.load()) give what a worker
    calls: the program's module(); unwrap() gives the program itself."""
    ep, args = exported("transformer")
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    loaded = wrapper.load()
    assert isinstance(loaded, torch.fx.GraphModule)
    assert_in_blob(list(loaded.parameters()) + list(loaded.buffers()), wrapper.blob_path)
    with torch.no_grad():
        assert same_bytes(loaded(*args), reference(ep, args))
        assert same_bytes(zcwrap.ActorWrapper(ep).load()(*args), reference(ep, args))


def test_unpack_writes_a_pt2_torch_export_loads(exported, tmp_path):
    ep, args = exported("stateful")
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    wrapper.unpack(tmp_path / "m.pt2")
    loaded = torch.export.load(str(tmp_path / "m.pt2"))
    assert str(loaded.graph_signature) == str(ep.graph_signature)
    assert same_bytes(reference(loaded, args), reference(ep, args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "store"]  # no temporary left beside it


def test_cli_inspects_a_program_and_names_the_python_call_for_unpack(exported, tmp_path):
    if not os.path.isfile(ZCWRAP_BIN):
        pytest.skip("needs the zcwrap command: set ZCWRAP_TORCH2_BUILD (scripts/test.sh does)")
    ep, _ = exported("stateful")
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    assert [m["skeleton"]["kind"] for m in zcwrap.describe(wrapper.blob_path)["models"]] == ["torch_export"]
    inspected = subprocess.run([ZCWRAP_BIN, "inspect", wrapper.blob_path], capture_output=True, text=True)
    assert inspected.returncode == 0 and "torch_export" in inspected.stdout, inspected.stderr
    verified = subprocess.run([ZCWRAP_BIN, "verify", wrapper.blob_path], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    unpacked = subprocess.run([ZCWRAP_BIN, "unpack", wrapper.blob_path, "-o", str(tmp_path / "m.pt2")],
                              capture_output=True, text=True)
    assert unpacked.returncode == 5, (unpacked.returncode, unpacked.stderr)
    assert unpacked.stderr.count("\n") == 1 and "ModelWrapper.open" in unpacked.stderr
    assert not (tmp_path / "m.pt2").exists()


# --- what unwrap evaluates: weights_only ------------------------------------------


def _tampered(monkeypatch, change):
    """Packs through the real path, with the skeleton's program changed by
    `change(program dict)` before it goes into the blob (under its checksums)."""
    def skeleton_of(name, ep):
        skeleton, tensors, unshared = SKELETON_OF(name, ep)
        document = json.loads(skeleton)
        program = json.loads(document["program"])
        change(program)
        document["program"] = json.dumps(program)
        return json.dumps(document).encode(), tensors, unshared

    monkeypatch.setattr(_export, "skeleton_of", skeleton_of)


def _replace(obj, key, old, new):
    """Every `key: old` in a parsed JSON document set to `new`; how many."""
    count = 0
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and v == old:
                obj[k] = new
                count += 1
            else:
                count += _replace(v, key, old, new)
    elif isinstance(obj, list):
        count += sum(_replace(v, key, old, new) for v in obj)
    return count


def test_weights_only_refuses_code_in_guards_and_shape_expressions(tmp_path, monkeypatch):
    """torch's deserializer evaluates a program's symbolic sizes with
    sympy.sympify (Python eval), and ep.module() exec()s its guards: a blob
    could run code through either. weights_only refuses both, before torch
    reads the program."""
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(Encoder().eval(), (torch.randn(2, 10, 64),), dynamic_shapes=({0: batch},))
    marker = tmp_path / "ran"
    payload = f"__import__('os').system('touch {marker}')"

    def evil_guard(program):
        program["guards_code"] = [payload]

    _tampered(monkeypatch, evil_guard)
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    with pytest.raises(zcwrap.BadModelError, match="weights_only refuses the exported program: its guard"):
        wrapper.unwrap(weights_only=True)

    def evil_size(program):
        # The batch size as torch wrote it, with code in front.
        symbol = next(str(s) for s in ep.range_constraints)
        written = f"Symbol('{symbol}', positive=True, integer=True)"
        assert _replace(program, "expr_str", written, f"{payload} or {written}") > 0

    _tampered(monkeypatch, evil_size)
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    with pytest.raises(zcwrap.BadModelError, match="symbolic shape expression"):
        wrapper.unwrap(weights_only=True)
    assert not marker.exists()


EXPRESSIONS = [  # (what, kind, text, accepted)
    ("a size as torch writes it", "expr_str", "Mul(Integer(10), Symbol('s28', positive=True, integer=True))", True),
    ("a size in str form", "expr_str", "FloorDiv(s0, 2) + Max(1, u3)", True),
    ("a comparison of sizes", "expr_str", "Eq(Mod(s0, 8), 0)", True),
    ("infinity", "expr_str", "-oo", True),
    ("an import", "expr_str", "__import__('os').system('true')", False),
    ("a builtin by name", "expr_str", "eval", False),
    ("a builtin called", "expr_str", "open('/etc/passwd')", False),
    ("an attribute", "expr_str", "Symbol('s0').func", False),
    ("a lambda", "expr_str", "(lambda: 0)()", False),
    ("not Python", "expr_str", "s0 +", False),
    ("a guard on a size", "guards_code", "L['x'].size()[0] <= 64", True),
    ("a guard with math", "guards_code", "math.floor(L['x'].size()[1] / 2) == 3", True),
    ("a guard with torch.sym_max", "guards_code", "torch.sym_max(L['x'].size()[0], 2) == 2", True),
    ("a guard importing", "guards_code", "__import__('os').system('true')", False),
    ("a guard reaching torch", "guards_code", "torch.load('x')", False),
    ("a guard writing an input", "guards_code", "L['x'].add_(1)", False),
    ("a dunder", "guards_code", "L['x'].__class__", False),
]


@pytest.mark.parametrize("what,kind,text,accepted", EXPRESSIONS, ids=[e[0] for e in EXPRESSIONS])
def test_weights_only_expression_rules(what, kind, text, accepted):
    """The grammar weights_only holds a program's sizes and guards to."""
    program = ({"guards_code": [text]} if kind == "guards_code"
               else {"graph_module": {"sym_int_values": {"s": {"as_expr": {"expr_str": text}}}}, "guards_code": []})
    if accepted:
        _export.check_program("blob", program)
    else:
        with pytest.raises(zcwrap.BadModelError, match="weights_only refuses the exported program"):
            _export.check_program("blob", program)


def test_an_operator_outside_aten_is_refused(exported, monkeypatch):
    """A graph node naming a Python function (here os.system, reached from
    torch) is refused by torch's export verifier when the program is rebuilt."""
    ep, _ = exported("stateful")

    def evil_target(program):
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"].startswith("torch.ops.aten"))
        node["target"] = "torch.serialization.os.system"

    _tampered(monkeypatch, evil_target)
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    for weights_only in (False, True):
        with pytest.raises(zcwrap.BadModelError, match="torch.export cannot rebuild the program"):
            wrapper.unwrap(weights_only=weights_only)


def test_a_damaged_skeleton_is_one_error(exported, monkeypatch):
    ep, _ = exported("stateful")
    monkeypatch.setattr(_export, "skeleton_of", lambda name, ep: (b"{not json",) + SKELETON_OF(name, ep)[1:])
    with pytest.raises(zcwrap.BadBlobError, match="skeleton is not JSON"):
        zcwrap.ModelWrapper.from_model(ep).unwrap()


# --- Ray --------------------------------------------------------------------------


def test_an_actor_unwraps_a_program_from_the_object_store(cluster, exported):
    ray = import_or_skip("ray", "Ray is not installed (scripts/requirements.txt pins it)")
    from test_ray import views_of_the_store

    @ray.remote(num_cpus=0)
    class ExportActor:
        def __init__(self, model_wrapper):
            self.wrapper = model_wrapper
            self.program = model_wrapper.unwrap()
            self.model = self.program.module()

        def report(self, x):
            buffer = ray.get(self.wrapper._ray_ref)
            tensors = [t for t in list(self.program.state_dict.values()) + list(self.model.parameters())
                       if t.numel() > 0]
            torch.set_num_threads(1)
            with torch.no_grad():
                out = self.model(x)
            return {"views": views_of_the_store(tensors, buffer), "mapping": mapping_of(tensors[0].data_ptr()),
                    "out": out}

    ep, args = exported("transformer")
    wrapper = zcwrap.ModelWrapper.from_model(ep)
    actor = ExportActor.options(resources={"node1": 0.1}).remote(wrapper)
    report = ray.get(actor.report.remote(args[0]), timeout=300)
    assert wrapper._ray_ref is not None
    assert report["views"] == "ok" and report["mapping"][2] == "r--s", report
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's workers run
    try:
        expected = reference(ep, args)
    finally:
        torch.set_num_threads(threads)
    assert same_bytes(report["out"], expected)
    ray.kill(actor)


def test_task_mode_runs_a_programs_module(cluster, exported):
    """for_tasks: a program's shim runs ep.module()(x) in a Ray task, and
    shim.module() is the shim, so a pipeline's ``self.program.module()(x)``
    runs in both modes."""
    import_or_skip("ray", "Ray is not installed (scripts/requirements.txt pins it)")
    ep, args = exported("stateful")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's workers run
    try:
        expected = reference(ep, args)
        shim = zcwrap.ModelWrapper.for_tasks(ep)
        assert same_bytes(shim(*args), expected)
        assert shim.module() is shim
        torch.manual_seed(0)
        head = nn.Linear(4, 2).eval()
        body = nn.Sequential(nn.Linear(16, 4), nn.ReLU()).eval()
        x = torch.randn(3, 16)
        pipeline = Pipeline(torch.export.export(body, (x,)), head)
        with torch.no_grad():
            want = pipeline(x)
        tasks = zcwrap.ModelWrapper.for_tasks(pipeline)
        assert type(tasks) is Pipeline and same_bytes(tasks(x), want)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: none on this machine")
@pytest.mark.parametrize("fast", [False, True])
def test_cuda_unwrap_of_a_program(exported, fast):
    """On a GPU every tensor of the program is on the device, and the outputs
    equal the original program moved there by torch's own pass."""
    from torch.export.passes import move_to_device_pass

    ep, args = exported("stateful")
    got = zcwrap.ModelWrapper.from_model(ep).unwrap(device="cuda:0", use_fast_load=fast)
    tensors, module = program_tensors(got)
    assert all(t.device.type == "cuda" for t in tensors)
    on_gpu = tuple(a.cuda() for a in args)
    with torch.no_grad():
        assert same_bytes(module(*on_gpu).cpu(), move_to_device_pass(ep, "cuda:0").module()(*on_gpu).cpu())
