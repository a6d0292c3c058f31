"""Pickled code: pinned inside the blob, visible in describe(), refusable with weights_only.

A crafted pickle here runs `touch MARKER` when unpickled (os.system, as an
attacker's would run anything). Each test that says something is not run
checks that the marker file was not created; where the point is that a
pickle is live, a control shows that unpickling it does create the marker.
"""

import base64
import io
import mmap
import os
import pickle
import shlex
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import import_zcwrap, run, same_bytes

zcwrap = import_zcwrap()


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    """Each test packs into its own store folder; the weights_only default is not inherited."""
    folder = tmp_path / "store"
    monkeypatch.setenv("ZCWRAP_STORE", str(folder))
    monkeypatch.delenv("ZCWRAP_WEIGHTS_ONLY", raising=False)
    return folder


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "marker"


@pytest.fixture
def user_globals():
    """torch's user allowlist, as it was before the test."""
    saved = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def touch(path):
    return f"touch {shlex.quote(str(path))}"


class Payload:
    """An object whose unpickling runs `touch PATH` through os.system."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (touch(self.path),))


class Evil(nn.Module):
    """A module whose pickle is os.system("touch PATH"), as a crafted model's would be."""

    def __init__(self, path):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (touch(self.path),))


class MyNet(nn.Module):
    """A user's own module class: not torch.nn, so weights_only needs it allowed."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.scale = 2.0

    def forward(self, x):
        return self.fc(x) * self.scale


class Pipeline:
    """A pipeline object: modules, and plain attributes that travel pickled in the blob."""

    def __init__(self, **modules):
        self.labels = ["cat", "dog"]
        self.threshold = 0.25
        self.options = {"top_k": 3, "tags": ("a", "b"), "flags": {1, 2}}
        self.__dict__.update(modules)


def encoder():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def lstm():
    return nn.LSTM(input_size=6, hidden_size=8, num_layers=2, batch_first=True).eval()


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Dropout(0.1), nn.Linear(16, 3)).eval()


def resnet():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed in this lane")
    return torchvision.models.resnet18(num_classes=10).eval()


# name: (make the model, an input, the classes beyond torch.nn the user must allow)
REAL = {
    "transformer_encoder": (encoder, lambda: (torch.randn(2, 5, 16),), []),
    "lstm": (lstm, lambda: (torch.randn(2, 4, 6),), []),
    "mlp": (mlp, lambda: (torch.randn(3, 6),), []),
    "resnet18": (resnet, lambda: (torch.randn(1, 3, 32, 32),), ["torchvision.models.resnet.ResNet",
                                                                  "torchvision.models.resnet.BasicBlock"]),
}


def user_classes(names):
    import importlib

    return [getattr(importlib.import_module(n.rsplit(".", 1)[0]), n.rsplit(".", 1)[1]) for n in names]


# --- 1. every pickle unwrap runs is inside the blob -----------------------------


def test_pipeline_object_is_in_the_blob_and_round_trips():
    pipeline = Pipeline(encoder=encoder(), head=mlp())
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    config = wrapper.to_actor()
    assert "pipeline" not in config  # the config names and pins the blob, nothing more
    info = zcwrap.describe(wrapper.blob_path)
    assert info["pipeline_object"]["imports"] == [f"{__name__}.Pipeline"]
    rebuilt = zcwrap.ModelWrapper.from_actor(**config).unwrap()
    assert type(rebuilt) is Pipeline
    for key in ("labels", "threshold", "options"):
        assert getattr(rebuilt, key) == getattr(pipeline, key), key
    assert pickle.dumps(rebuilt.options) == pickle.dumps(pipeline.options)  # bit-equal, not just equal
    x = torch.randn(2, 5, 16)
    assert same_bytes(run(rebuilt.encoder, x), run(pipeline.encoder, x))
    y = torch.randn(3, 6)
    assert same_bytes(run(rebuilt.head, y), run(pipeline.head, y))


def test_a_pipeline_object_comes_from_a_blob_in_memory_too():
    """The memory path (Ray's object store, from_buffer) reads the pipeline object from the blob as well."""
    pipeline = Pipeline(head=mlp())
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    data = open(wrapper.blob_path, "rb").read()
    region = mmap.mmap(-1, len(data))  # page-aligned, as from_buffer needs
    region[:] = data
    memory = zcwrap.ModelWrapper.from_buffer(region, name="in memory")
    with torch.serialization.safe_globals([Pipeline]):
        rebuilt = memory.unwrap(weights_only=True)
    assert type(rebuilt) is Pipeline and rebuilt.options == pipeline.options
    y = torch.randn(3, 6)
    assert same_bytes(run(rebuilt.head, y), run(pipeline.head, y))


@pytest.mark.parametrize("via", ["ModelWrapper", "ActorWrapper", "pickled wrapper"])
def test_a_swapped_pipeline_field_in_the_config_is_never_run(via, marker, tmp_path):
    pipeline = Pipeline(head=mlp())
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    crafted = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    # The control: the field is live code, as zcwrap 0.2's unwrap read it.
    control = tmp_path / "control"
    pickle.loads(base64.b64decode(base64.b64encode(pickle.dumps(Payload(control)))))
    assert control.exists()

    if via == "ActorWrapper":
        config = zcwrap.ActorWrapper(wrapper).to_actor()
        config["pipeline"] = crafted
        rebuilt = zcwrap.ActorWrapper.from_actor(**config).load()
    elif via == "pickled wrapper":
        restored = pickle.loads(pickle.dumps(wrapper))
        restored._config["pipeline"] = crafted
        rebuilt = pickle.loads(pickle.dumps(restored)).unwrap()
    else:
        config = wrapper.to_actor()
        config["pipeline"] = crafted
        rebuilt = zcwrap.ModelWrapper.from_actor(**config).unwrap()
    assert not marker.exists()
    assert type(rebuilt) is Pipeline and rebuilt.labels == pipeline.labels  # from the blob


def test_the_pipeline_pickle_is_covered_by_the_blobs_checksum(marker):
    wrapper = zcwrap.ModelWrapper.from_model(Pipeline(head=mlp()))
    info = zcwrap.describe(wrapper.blob_path)
    data = bytearray(open(wrapper.blob_path, "rb").read())
    header = info["header"]
    # The last byte of the skeletons section is the pipeline object's record's.
    data[header["skeletons_offset"] + header["skeletons_length"] - 1] ^= 0x01
    with open(wrapper.blob_path, "wb") as f:
        f.write(data)
    with pytest.raises(zcwrap.BadBlobError, match="checksum mismatch"):
        zcwrap.describe(wrapper.blob_path)


# --- 2. what a pickle imports ----------------------------------------------------


def test_describe_lists_os_system_for_a_crafted_module_without_running_it(marker):
    wrapper = zcwrap.ModelWrapper.from_model(Evil(marker))
    info = zcwrap.describe(wrapper.blob_path)
    assert not marker.exists()
    imports = info["models"][0]["imports"]
    assert f"{os.system.__module__}.system" in imports  # posix.system on Linux
    report = zcwrap.verify(wrapper.blob_path)
    assert report["ok"] and f"model 'model': {os.system.__module__}.system" in report["foreign_imports"]
    assert not marker.exists()
    wrapper.unwrap()  # the control: without weights_only the pickle runs
    assert marker.exists()


@pytest.mark.parametrize("name", sorted(REAL))
def test_describe_lists_what_pythons_own_unpickler_imports(name):
    make, _, _ = REAL[name]
    model = make()
    from zcwrap import _eager

    skeleton, _, _ = _eager.skeleton_of("model", model)
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, qualname):
            seen.add(f"{module}.{qualname}")
            return super().find_class(module, qualname)

        def persistent_load(self, pid):
            return torch.empty(0)

    Recorder(io.BytesIO(skeleton)).load()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    assert zcwrap.describe(wrapper.blob_path)["models"][0]["imports"] == sorted(seen)


def test_torchscript_models_list_no_python_imports():
    wrapper = zcwrap.ModelWrapper.from_model(torch.jit.script(mlp()))
    model = zcwrap.describe(wrapper.blob_path)["models"][0]
    assert model["skeleton"]["kind"] == "torchscript" and model["imports"] == []


# --- 3. weights_only --------------------------------------------------------------


@pytest.mark.parametrize("how", ["unwrap", "load", "ActorWrapper", "ActorWrapper.from_actor", "environment"])
def test_weights_only_refuses_os_system_naming_it_before_anything_runs(how, marker, monkeypatch):
    model = Evil(marker)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    with pytest.raises(zcwrap.BadModelError) as raised:
        if how == "unwrap":
            wrapper.unwrap(weights_only=True)
        elif how == "load":
            wrapper.load(weights_only=True)
        elif how == "ActorWrapper":
            zcwrap.ActorWrapper(wrapper, weights_only=True).load()
        elif how == "ActorWrapper.from_actor":
            zcwrap.ActorWrapper.from_actor(**zcwrap.ActorWrapper(wrapper, weights_only=True).to_actor()).load()
        else:
            monkeypatch.setenv("ZCWRAP_WEIGHTS_ONLY", "1")
            wrapper.unwrap()
    assert f"{os.system.__module__}.system" in str(raised.value) and "weights_only" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not marker.exists()


def test_weights_only_refuses_a_pipeline_object_that_runs_code(marker, monkeypatch):
    pipeline = Pipeline(head=mlp())
    pipeline.post = Payload(marker)
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    from zcwrap import _eager

    # Every pickle is checked before any is read: the model's (allowed) is not
    # unpickled either when the pipeline object's is refused.
    rebuilt = []
    rebuild = _eager.rebuild
    monkeypatch.setattr(_eager, "rebuild", lambda *args: rebuilt.append(args[0]) or rebuild(*args))
    with torch.serialization.safe_globals([Pipeline]):  # the class itself is allowed: the payload is not
        with pytest.raises(zcwrap.BadModelError, match=f"{os.system.__module__}.system"):
            wrapper.unwrap(weights_only=True)
    assert not marker.exists() and rebuilt == []
    wrapper.unwrap()  # the control
    assert marker.exists()


def test_the_environment_default_and_what_overrides_it(marker, monkeypatch):
    wrapper = zcwrap.ModelWrapper.from_model(Evil(marker))
    monkeypatch.setenv("ZCWRAP_WEIGHTS_ONLY", "1")
    # A config cannot loosen what the deployment set.
    loose = zcwrap.ActorWrapper(wrapper, weights_only=False).to_actor()
    assert loose["weights_only"] is False
    with pytest.raises(zcwrap.BadModelError):
        zcwrap.ActorWrapper.from_actor(**loose).load()
    assert not marker.exists()
    # The worker's own explicit argument does.
    wrapper.unwrap(weights_only=False)
    assert marker.exists()
    monkeypatch.setenv("ZCWRAP_WEIGHTS_ONLY", "maybe")
    with pytest.raises(zcwrap.UsageError, match="ZCWRAP_WEIGHTS_ONLY"):
        wrapper.unwrap()


def test_the_environment_default_in_a_fresh_process(marker):
    wrapper = zcwrap.ModelWrapper.from_model(Evil(marker))
    script = ("import sys, zcwrap\n"
              "try:\n"
              "    zcwrap.ModelWrapper.open(sys.argv[1]).unwrap()\n"
              "except zcwrap.BadModelError as e:\n"
              "    print('refused:', e)\n")
    env = {**os.environ, "ZCWRAP_WEIGHTS_ONLY": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script, wrapper.blob_path], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "system" in done.stdout
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(REAL))
def test_weights_only_accepts_real_models(name, user_globals):
    make, inputs, beyond_nn = REAL[name]
    model = make()
    x = inputs()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    if beyond_nn:
        with pytest.raises(zcwrap.BadModelError, match=beyond_nn[0].replace(".", r"\.")):
            wrapper.unwrap(weights_only=True)
        torch.serialization.add_safe_globals(user_classes(beyond_nn))
    rebuilt = wrapper.unwrap(weights_only=True)
    assert type(rebuilt) is type(model)
    assert same_bytes(run(rebuilt, *x), run(model, *x))


def test_weights_only_accepts_a_pipeline_of_real_models_whose_class_is_allowed():
    pipeline = Pipeline(encoder=encoder(), rnn=lstm(), head=mlp(), scripted=torch.jit.script(mlp()))
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    with pytest.raises(zcwrap.BadModelError, match=f"{__name__}.Pipeline"):
        wrapper.unwrap(weights_only=True)
    with torch.serialization.safe_globals([Pipeline]):
        rebuilt = wrapper.unwrap(weights_only=True)
    assert type(rebuilt) is Pipeline and rebuilt.options == pipeline.options
    x, s, y = torch.randn(2, 5, 16), torch.randn(2, 4, 6), torch.randn(3, 6)
    assert same_bytes(run(rebuilt.encoder, x), run(pipeline.encoder, x))
    assert same_bytes(run(rebuilt.rnn, s), run(pipeline.rnn, s))
    assert same_bytes(run(rebuilt.head, y), run(pipeline.head, y))
    assert same_bytes(run(rebuilt.scripted, y), run(pipeline.scripted, y))


@pytest.mark.parametrize("allow", ["add_safe_globals", "safe_globals"])
def test_a_users_class_is_accepted_once_allowed_through_torch(allow, user_globals):
    model = MyNet().eval()
    x = torch.randn(4, 6)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    with pytest.raises(zcwrap.BadModelError, match=f"{__name__}.MyNet"):
        wrapper.unwrap(weights_only=True)
    if allow == "add_safe_globals":
        torch.serialization.add_safe_globals([MyNet])
        rebuilt = wrapper.unwrap(weights_only=True)
    else:
        with torch.serialization.safe_globals([MyNet]):
            rebuilt = wrapper.unwrap(weights_only=True)
        with pytest.raises(zcwrap.BadModelError):  # only inside the block
            wrapper.unwrap(weights_only=True)
    assert type(rebuilt) is MyNet and same_bytes(run(rebuilt, x), run(model, x))


def test_weights_only_refuses_torch_loaders_and_what_it_cannot_read():
    from zcwrap import _weights_only

    # torch's own loaders run arbitrary pickles: not in the allowlist.
    for module, name in [("torch.storage", "_load_from_bytes"), ("torch", "load"), ("torch.nn.functional", "torch"),
                         ("torch.nn.modules.linear", "Linear.__init__"), ("builtins", "eval"),
                         ("torch.nn.functional", "handle_torch_function"), ("torch.nn.modules.linear", "math"),
                         ("torch.nn.parallel.distributed", "DistributedDataParallel"),
                         ("torch.nn.parallel.data_parallel", "DataParallel")]:
        assert _weights_only.allowed(module, name) is _weights_only.REFUSED, f"{module}.{name}"
    for module, name in [("torch.nn.modules.linear", "Linear"), ("torch.nn.functional", "relu"),
                         ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2")]:
        assert _weights_only.allowed(module, name) is not _weights_only.REFUSED, f"{module}.{name}"
    # A STACK_GLOBAL over a name computed at load time cannot be checked: refused, not guessed.
    computed = b"\x80\x04cbuiltins\nstr\n\x8c\x02os\x85R\x8c\x06system\x93."
    with pytest.raises(zcwrap.BadModelError, match="cannot be told"):
        _weights_only.check("crafted", "the module", computed)


class Holds(nn.Module):
    """A module holding one kind of state besides its Linear."""

    def __init__(self, what):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        if what == "sparse":
            self.register_buffer("state", torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]),
                                                                 torch.tensor([1.5, -2.25]), (2, 2)))
        elif what == "nested":
            self.state = torch.nested.nested_tensor([torch.arange(2.0), torch.arange(3.0)])
        elif what == "bytes":
            self.state = b"\x00\x01 label"
        elif what == "dtype_and_device":
            self.state = (torch.float16, torch.device("cpu"), torch.Size([2, 3]))
        elif what == "conjugate_view":
            self.state = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj()
        elif what == "numpy":
            import numpy as np

            self.state = np.arange(4.0)


# what the module holds: None (weights_only accepts it), or the global it is refused for
STATE = {
    "sparse": None,
    "nested": None,
    "bytes": None,
    "dtype_and_device": None,
    "conjugate_view": "torch.storage._load_from_bytes",  # a storage pickled whole: torch.load inside
    "numpy": "numpy",
}


def dense(value):
    if isinstance(value, torch.Tensor) and value.is_nested:
        return [dense(t) for t in value.unbind()]
    if isinstance(value, torch.Tensor):
        return value.to_dense() if value.layout != torch.strided else value.resolve_conj()
    return value


@pytest.mark.parametrize("what", sorted(STATE))
def test_weights_only_and_the_state_a_module_holds(what):
    model = Holds(what)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    refused = STATE[what]
    with torch.serialization.safe_globals([Holds]):
        if refused:
            with pytest.raises(zcwrap.BadModelError, match=refused.replace(".", r"\.")):
                wrapper.unwrap(weights_only=True)
            return
        rebuilt = wrapper.unwrap(weights_only=True)
    got, want = dense(rebuilt.state), dense(model.state)
    if isinstance(want, torch.Tensor) or isinstance(want, list):
        assert same_bytes(got, want)
    else:
        assert got == want
    assert same_bytes(rebuilt.fc.weight, model.fc.weight)
