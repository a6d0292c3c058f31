"""Models that used to be refused or misreported, and bad input that must fail
as one zcwrap.Error (issue 19, section 5).

* Tensors the data section cannot hold (nested, sparse, meta, subclasses,
  conjugate views) and compressible Python state (numpy zeros, bytes) pack,
  and unwrap equal to the original, bit for bit.
* ``unshared_bytes`` is what the pickle carries inline, which each worker
  holds privately: checked against the bytes each case really holds.
* Every bad argument, config field, pickle or buffer raises exactly one
  zcwrap.Error subclass, with a one-line message that names what is wrong.
"""

import base64
import inspect
import json
import mmap
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import import_zcwrap

zcwrap = import_zcwrap()

warnings.filterwarnings("ignore", message=".*nested tensors.*prototype.*")  # torch's own note on torch.nested


# Each test packs into its own store folder (conftest.py).
pytestmark = pytest.mark.usefixtures("store")


def raises_one_line(kind, call, *mentions):
    """`call()` raises exactly `kind` (a zcwrap.Error subclass, not a subclass
    of it nor a bare Error), whose message is one line mentioning each of
    `mentions`. Returns the message."""
    with pytest.raises(zcwrap.Error) as caught:
        call()
    error = caught.value
    assert type(error) is kind, f"{type(error).__name__} ({error}), expected {kind.__name__}"
    message = str(error)
    assert message and "\n" not in message, repr(message)
    for mention in mentions:
        assert mention in message, f"{mention!r} not in {message!r}"
    return message


# --- tensors and state the data section cannot hold -------------------------


class Holder(nn.Module):
    """A linear layer (shared as usual) and one more value, as a buffer when
    it is a tensor that register_buffer takes, else as a plain attribute."""

    def __init__(self, value, as_buffer=True):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        if as_buffer and isinstance(value, torch.Tensor):
            self.register_buffer("value", value)
        else:
            self.value = value


class Tagged(torch.Tensor):
    """A plain tensor subclass."""


class Wrapped(torch.Tensor):
    """A wrapper subclass in the way of DTensor: the data is an inner tensor."""

    @staticmethod
    def __new__(cls, inner):
        outer = torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)
        outer.inner = inner
        return outer

    def __init__(self, inner):
        super().__init__()

    def __tensor_flatten__(self):
        return ["inner"], None

    @staticmethod
    def __tensor_unflatten__(inner_tensors, meta, outer_size, outer_stride):
        return Wrapped(inner_tensors["inner"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            return x.inner if isinstance(x, Wrapped) else x
        return func(*torch.utils._pytree.tree_map(unwrap, args),
                    **torch.utils._pytree.tree_map(unwrap, kwargs or {}))


def seeded(*shape, dtype=torch.float32):
    """Values that differ at every position."""
    generator = torch.Generator().manual_seed(sum(shape) + 7)
    return torch.randn(*shape, generator=generator).to(dtype)


def tensor_parts(t):
    """What makes a tensor equal to another, bit for bit, as plain values and
    dense CPU tensors: type, layout, dtype, shape, and the data of each part."""
    head = (type(t), t.layout, t.dtype, t.device.type, tuple(t.shape) if not t.is_nested else None)
    if isinstance(t, Wrapped):
        return head, tensor_parts(t.inner)
    if t.device.type == "meta":
        return head, t.stride()
    if t.is_nested:
        return head, [tensor_parts(c) for c in t.unbind()]
    if t.layout == torch.sparse_coo:
        return head, t.is_coalesced(), tensor_parts(t._indices()), tensor_parts(t._values())
    if t.layout == torch.sparse_csr:
        return head, tensor_parts(t.crow_indices()), tensor_parts(t.col_indices()), tensor_parts(t.values())
    if t.is_quantized:
        scheme = t.qscheme()
        params = ((t.q_scale(), t.q_zero_point()) if scheme == torch.per_tensor_affine else
                  (tensor_parts(t.q_per_channel_scales()), tensor_parts(t.q_per_channel_zero_points()),
                   t.q_per_channel_axis()))
        return head, scheme, params, tensor_parts(t.int_repr())
    plain = t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t
    return head, t.is_conj(), t.stride(), plain.resolve_conj().contiguous().view(torch.uint8).numpy().tobytes()


def same_value(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and tensor_parts(a) == tensor_parts(b)
    if isinstance(a, np.ndarray):
        return type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


def nested_strided():
    return torch.nested.nested_tensor([seeded(2, 3), seeded(4, 3)])


def nested_jagged():
    return torch.nested.nested_tensor([seeded(2, 3), seeded(5, 3)], layout=torch.jagged)


def sparse_coo():
    indices = torch.tensor([[0, 99_999], [5, 77_777]])
    return torch.sparse_coo_tensor(indices, torch.tensor([1.5, -2.25]), (100_000, 100_000))


def sparse_csr():
    return seeded(6, 5).relu().to_sparse_csr()


def quantized_per_channel():
    return torch.quantize_per_channel(seeded(3, 4), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
                                      torch.tensor([0, 1, 2]), 0, torch.qint8)


def shared_parts(value):
    """The plain tensors a value is made of that the blob can hold."""
    if not isinstance(value, torch.Tensor) or value.device.type == "meta" or type(value) is Tagged or value.is_conj():
        return []
    if isinstance(value, Wrapped):
        return [value.inner]
    if value.is_nested:
        return [value.values(), value.offsets()] if value.layout == torch.jagged else [value]
    if value.layout == torch.sparse_coo:
        return [value._indices(), value._values()]
    if value.layout == torch.sparse_csr:
        return [value.crow_indices(), value.col_indices(), value.values()]
    return [value]


def assert_in_blob(tensors, path):
    """Each tensor's storage lies inside a read-only shared mapping of `path`."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        mappings = [line.split() for line in maps]
    spans = [tuple(int(x, 16) for x in f[0].split("-")) for f in mappings
             if len(f) >= 6 and f[5] == real and f[1] == "r--s"]
    for t in tensors:
        start = t.untyped_storage().data_ptr()
        end = start + t.untyped_storage().nbytes()
        assert any(s <= start and end <= e for s, e in spans), f"{t.dtype} {t.layout} tensor is not in {path}"


MIB = 1 << 20

# name, value, what each worker holds privately (bytes), as a buffer or not.
# "Privately": the bytes the pickle carries inline. A sparse or nested
# tensor's component tensors and a wrapper's inner tensor are plain tensors,
# shared through the blob like any other.
STATE = [
    ("nested_strided", nested_strided, 0, True),
    ("nested_jagged", nested_jagged, 0, False),
    ("sparse_coo_2_of_10e10", sparse_coo, 0, True),
    ("sparse_csr", sparse_csr, 0, True),
    ("quantized_per_channel", quantized_per_channel, 0, True),
    ("meta", lambda: torch.empty(1000, 1000, device="meta"), 0, True),
    ("subclass", lambda: seeded(5, 6).as_subclass(Tagged), 5 * 6 * 4, False),
    ("wrapper_subclass", lambda: Wrapped(seeded(3, 4)), 0, False),
    ("conj_view_8mib_zeros", lambda: torch.zeros(MIB, dtype=torch.complex64).conj(), 8 * MIB, False),
    ("numpy_zeros_1mb", lambda: np.zeros(1_000_000, dtype=np.uint8), 1_000_000, False),
    ("bytes_4mb", lambda: bytes(4_000_000), 4_000_000, False),
    ("numpy_random_20mb", lambda: np.random.default_rng(0).standard_normal(2_500_000), 20_000_000, False),
]


@pytest.mark.parametrize("name,make,private,as_buffer", STATE, ids=[case[0] for case in STATE])
def test_state_packs_unwraps_equal_and_is_counted(name, make, private, as_buffer):
    model = Holder(make(), as_buffer)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    unwrapped = wrapper.unwrap()
    assert same_value(model.value, unwrapped.value)
    assert same_value(model.linear.weight, unwrapped.linear.weight)
    x = seeded(2, 4)
    with torch.no_grad():
        assert torch.equal(unwrapped.linear(x), model.linear(x))
    # The parts that can be shared point into the blob's read-only shared mapping.
    parts = shared_parts(unwrapped.value)
    assert (private == 0) == bool(parts) or name == "meta"
    assert_in_blob(parts, wrapper.blob_path)
    info = zcwrap.describe(wrapper.blob_path)
    reported = info["models"][0]["unshared_bytes"]
    assert info["unshared_bytes"] == reported
    # What the pickle carries inline: at least the payload itself, plus at
    # most a small header per storage torch pickles as it is (a zip entry).
    assert private <= reported <= private + 4096, f"{reported} bytes reported, {private} held privately"
    # Nothing of the value is in the blob twice or as a dense expansion:
    # the blob is the weights, the skeleton and the private payload.
    assert info["file_size"] <= private + 64 * 1024


def test_sparse_tensor_is_not_reported_as_its_dense_size():
    wrapper = zcwrap.ModelWrapper.from_model(Holder(sparse_coo()))
    info = zcwrap.describe(wrapper.blob_path)
    assert info["file_size"] < 64 * 1024
    assert info["unshared_bytes"] < 4096  # was 40,000,000,000 (100000 x 100000 x 4)
    # Its indices and values went to the data section like any tensor.
    paths = {t["path"] for t in zcwrap.describe(wrapper.blob_path)["models"][0]["tensors"]}
    assert len(paths) == 4  # linear.weight, linear.bias, and the two parts


@pytest.mark.parametrize("value,compression", [
    (bytes(4_000_000), "none"),
    (np.zeros(1_000_000, dtype=np.uint8), "none"),
    (np.random.default_rng(1).integers(0, 255, 100_000, dtype=np.uint8).tobytes(), "zstd"),
], ids=["bytes_zeros", "numpy_zeros", "random_bytes"])
def test_a_skeleton_too_compressible_for_readers_is_stored_as_it_is(value, compression):
    # Readers refuse a skeleton that claims more than 256 x its stored bytes
    # (a decompression bomb); the packer stores such a skeleton uncompressed.
    wrapper = zcwrap.ModelWrapper.from_model(Holder(value))
    skeleton = zcwrap.describe(wrapper.blob_path)["models"][0]["skeleton"]
    assert skeleton["compression"] == compression
    assert skeleton["raw_bytes"] <= 256 * skeleton["stored_bytes"] + 65536
    assert same_value(value, wrapper.unwrap().value)
    assert zcwrap.verify(wrapper.blob_path)["ok"]


class ScriptHolder(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("value", value)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("name,make,compression", [
    ("sparse_coo", lambda: seeded(4, 4).relu().to_sparse(), "zstd"),
    ("conj_view_8mib_zeros", lambda: torch.zeros(MIB, dtype=torch.complex64).conj(), "none"),
], ids=["sparse_coo", "conj_view_8mib_zeros"])
def test_torchscript_skeleton_keeps_what_it_cannot_share(name, make, compression, tmp_path):
    model = torch.jit.script(ScriptHolder(make()))
    # The reference is LibTorch's own round trip (a sparse tensor comes back uncoalesced).
    torch.jit.save(model, str(tmp_path / "model.pt"))
    reference = torch.jit.load(str(tmp_path / "model.pt"))
    wrapper = zcwrap.ModelWrapper.from_model(model)
    unwrapped = wrapper.unwrap()
    assert same_value(reference.value, unwrapped.value)
    skeleton = zcwrap.describe(wrapper.blob_path)["models"][0]["skeleton"]
    assert skeleton["compression"] == compression


def test_torchscript_nested_tensor_is_one_error():
    # TorchScript cannot save nested tensors (torch.jit.save fails the same way).
    model = torch.jit.script(ScriptHolder(nested_strided()))
    raises_one_line(zcwrap.BadModelError, lambda: zcwrap.ModelWrapper.from_model(model), "cannot serialize")


def test_mkldnn_tensor_is_refused_with_one_line():
    model = Holder(seeded(4, 4).to_mkldnn(), as_buffer=False)
    raises_one_line(zcwrap.BadModelError, lambda: zcwrap.ModelWrapper.from_model(model), "cannot pickle")


# --- arguments ---------------------------------------------------------------


def small():
    return Holder(seeded(2, 2))


PACK_ARGS = [
    ("alignment_negative", {"alignment": -1}, zcwrap.UsageError, "power of two from 64 to 2097152"),
    ("alignment_2_64", {"alignment": 2**64}, zcwrap.UsageError, "power of two from 64 to 2097152"),
    ("alignment_3000", {"alignment": 3000}, zcwrap.UsageError, "power of two from 64 to 2097152"),
    ("alignment_str", {"alignment": "4096"}, zcwrap.UsageError, "power of two from 64 to 2097152"),
    ("alignment_float", {"alignment": 4096.0}, zcwrap.UsageError, "power of two from 64 to 2097152"),
    ("store_dir_int", {"store_dir": 123}, zcwrap.UsageError, "store_dir=123"),
    ("store_dir_nul", {"store_dir": "/tmp/a\0b"}, zcwrap.UsageError, "NUL"),
    ("file_mode_negative", {"file_mode": -1}, zcwrap.UsageError, "file_mode"),
    ("mode_tasks", {"mode": "tasks"}, zcwrap.UsageError, "Invalid mode: 'tasks'"),
]


@pytest.mark.parametrize("name,kwargs,kind,mention", PACK_ARGS, ids=[case[0] for case in PACK_ARGS])
def test_bad_pack_argument(name, kwargs, kind, mention, store):
    if "file_mode" in kwargs and "file_mode" not in inspect.signature(zcwrap.ModelWrapper.from_model).parameters:
        pytest.skip("from_model has no file_mode in this build")
    raises_one_line(kind, lambda: zcwrap.ModelWrapper.from_model(small(), **kwargs), mention)
    assert not store.exists() or not any(store.iterdir())


@pytest.mark.parametrize("folder", ["/proc/self", "/proc/1", "/sys/kernel"])
def test_store_that_is_not_a_writable_folder_is_not_called_full(folder):
    # Pseudo file systems report 0 bytes free: that is no reason to blame room.
    message = raises_one_line(zcwrap.WriteError, lambda: zcwrap.ModelWrapper.from_model(small(), store_dir=folder),
                              folder)
    assert "no room" not in message and "bytes free" not in message


UNWRAP_ARGS = [
    ("device_cuda_99", {"device": "cuda:99"}, zcwrap.DeviceError, "cuda:99"),
    ("device_banana", {"device": "banana"}, zcwrap.DeviceError, "banana"),
    ("prefetch_int", {"prefetch": 3}, zcwrap.UsageError, "prefetch 3"),
    ("prefetch_unknown", {"prefetch": "all"}, zcwrap.UsageError, "prefetch 'all'"),
    ("verify_str", {"verify": "yes"}, zcwrap.UsageError, "verify='yes'"),
    ("copy_on_write_2", {"copy_on_write": 2}, zcwrap.UsageError, "copy_on_write=2"),
    ("use_fast_load_none", {"use_fast_load": None}, zcwrap.UsageError, "use_fast_load=None"),
]


@pytest.mark.parametrize("name,kwargs,kind,mention", UNWRAP_ARGS, ids=[case[0] for case in UNWRAP_ARGS])
def test_bad_unwrap_argument(name, kwargs, kind, mention):
    wrapper = zcwrap.ModelWrapper.from_model(small())
    raises_one_line(kind, lambda: wrapper.unwrap(**kwargs), mention)


def chain(depth):
    """Modules nested `depth` deep."""
    root = node = nn.Sequential()
    for _ in range(depth):
        child = nn.Sequential()
        node.add_module("next", child)
        node = child
    node.add_module("linear", nn.Linear(2, 2))
    return root


def test_modules_nested_3000_deep_are_refused_with_one_line():
    raises_one_line(zcwrap.BadModelError, lambda: zcwrap.ModelWrapper.from_model(chain(3000)), "recursion limit")


def test_modules_nested_deeper_than_the_workers_recursion_limit_are_refused_at_unwrap():
    wrapper = zcwrap.ModelWrapper.from_model(chain(150))  # packs under the default limit
    saved = sys.getrecursionlimit()
    # Room for this test's own frames and zcwrap's, not for 150 levels of modules.
    sys.setrecursionlimit(len(inspect.stack()) + 120)
    try:
        with pytest.raises(zcwrap.Error) as caught:
            wrapper.unwrap()
    finally:
        sys.setrecursionlimit(saved)
    assert type(caught.value) is zcwrap.BadModelError and "recursion limit" in str(caught.value)
    assert "\n" not in str(caught.value)


# --- actor configs -----------------------------------------------------------


def config_of():
    return zcwrap.ModelWrapper.from_model(small()).to_actor()


# field, bad value (or MISSING), error kind, mention.
MISSING = object()
CONFIG_FIELDS = [
    ("blob_size", float("nan"), zcwrap.BadBlobError, "field 'blob_size'"),
    ("blob_size", float("inf"), zcwrap.BadBlobError, "field 'blob_size'"),
    ("blob_size", "12", zcwrap.BadBlobError, "field 'blob_size' must be a non-negative integer, not a string"),
    ("blob_size", -5, zcwrap.BadBlobError, "field 'blob_size' must be a non-negative integer, not a number (-5)"),
    ("blob_size", 1.5, zcwrap.BadBlobError, "field 'blob_size' must be a non-negative integer"),
    ("blob_size", {1, 2}, zcwrap.BadBlobError, "field 'blob_size'"),
    ("blob", 7, zcwrap.BadBlobError, "field 'blob' must be a string, not a number (7)"),
    ("blob", None, zcwrap.BadBlobError, "field 'blob' must be a string, not a null"),
    ("blob", b"/x.zcb", zcwrap.BadBlobError, "field 'blob'"),
    ("meta_checksum", 5, zcwrap.BadBlobError, "field 'meta_checksum' must be a string"),
    ("meta_checksum", "xyz", zcwrap.BadBlobError, "meta_checksum is not 16 lower-case hex digits"),
    ("standalone", "yes", zcwrap.BadBlobError, "field 'standalone' must be true or false, not a string"),
    ("models", "model", zcwrap.BadBlobError, "field 'models' must be an array of model names, not a string"),
    ("models", [1], zcwrap.BadBlobError, "field 'models' must be an array of model names (strings), not a number"),
    ("zcwrap_actor", "1", zcwrap.BadBlobError, "field 'zcwrap_actor' must be the integer 1"),
    ("zcwrap_actor", 2, zcwrap.BadBlobError, "unsupported zcwrap_actor version 2"),
    ("blob", MISSING, zcwrap.BadBlobError, "missing field 'blob'"),
    ("blob_size", MISSING, zcwrap.BadBlobError, "missing field 'blob_size'"),
    ("meta_checksum", MISSING, zcwrap.BadBlobError, "missing field 'meta_checksum'"),
    ("standalone", MISSING, zcwrap.BadBlobError, "missing field 'standalone'"),
    ("models", MISSING, zcwrap.BadBlobError, "missing field 'models'"),
    ("zcwrap_actor", MISSING, zcwrap.BadBlobError, "missing field 'zcwrap_actor'"),
    ("blob", "/nonexistent/x.zcb", zcwrap.StaleError, "/nonexistent/x.zcb"),
    ("blob_size", 4096, zcwrap.StaleError, "re-packed or replaced"),
]


@pytest.mark.parametrize("field,value,kind,mention", CONFIG_FIELDS,
                         ids=[f"{c[0]}_{'missing' if c[1] is MISSING else type(c[1]).__name__}_{i}"
                              for i, c in enumerate(CONFIG_FIELDS)])
def test_bad_config_field(field, value, kind, mention):
    config = config_of()
    if value is MISSING:
        del config[field]
    else:
        config[field] = value
    raises_one_line(kind, lambda: zcwrap.ModelWrapper.from_actor(**config), mention)
    raises_one_line(kind, lambda: zcwrap.ActorWrapper.from_actor(**config, device="cpu"), mention)


@pytest.mark.parametrize("field,value", [("models", MISSING), ("blob", 7), ("blob_size", float("nan")),
                                         ("blob_size", -1), ("standalone", "yes"), ("meta_checksum", None)])
def test_damaged_config_inside_a_pickled_wrapper_is_refused_when_unpickled(field, value):
    # Fields the wrapper reads itself (its properties, the pins it hands over
    # on the Ray path): refused when unpickled.
    wrapper = zcwrap.ModelWrapper.from_model(small())
    if value is MISSING:
        del wrapper._config[field]
    else:
        wrapper._config[field] = value
    data = pickle.dumps(wrapper)
    raises_one_line(zcwrap.BadBlobError, lambda: pickle.loads(data), "state is damaged")


def test_damaged_config_inside_a_pickled_wrapper_is_refused_at_unwrap():
    # Unpickling does not touch the blob; unwrap checks the rest.
    wrapper = zcwrap.ModelWrapper.from_model(small())
    wrapper._config["meta_checksum"] = "xyz"
    raises_one_line(zcwrap.BadBlobError, pickle.loads(pickle.dumps(wrapper)).unwrap, "meta_checksum")
    wrapper._config["meta_checksum"] = "0" * 16
    raises_one_line(zcwrap.StaleError, pickle.loads(pickle.dumps(wrapper)).unwrap, "re-packed or replaced")


# --- pickles a worker cannot read --------------------------------------------


class Pipeline:
    def __init__(self):
        self.encoder = nn.Linear(3, 3)
        self.labels = ["a", "b"]


def garbage_pipelines():
    return [
        ("not_base64", "!!!not base64!!!"),
        ("not_a_pickle", base64.b64encode(b"garbage, not a pickle").decode()),
        ("truncated", base64.b64encode(pickle.dumps((Pipeline, {"labels": []}))[:-3]).decode()),
        ("not_a_pair", base64.b64encode(pickle.dumps(42)).decode()),
        ("int", 123),
        ("unknown_module", base64.b64encode(b"\x80\x04cno_such_module_zcwrap\nThing\n.").decode()),
    ]


@pytest.mark.parametrize("name,field", garbage_pipelines(), ids=[case[0] for case in garbage_pipelines()])
def test_garbage_pipeline_field_is_one_error_or_ignored(name, field):
    config = zcwrap.ModelWrapper.from_model(Pipeline()).to_actor()
    config["pipeline"] = field
    wrapper = zcwrap.ModelWrapper.from_actor(**config)
    try:
        rebuilt = wrapper.unwrap()
    except zcwrap.Error as e:
        # Read from the config: one error of the right kind.
        expected = zcwrap.BadModelError if name == "unknown_module" else zcwrap.BadBlobError
        assert type(e) is expected and "\n" not in str(e) and "pipeline" in str(e), f"{type(e).__name__}: {e}"
    else:
        # Read from the blob, where the pipeline pickle is pinned: the field is ignored.
        assert isinstance(rebuilt, Pipeline) and rebuilt.labels == ["a", "b"]


def test_pickle_helper_sorts_failures_into_kinds():
    from zcwrap import _eager

    cases = [
        (b"garbage", zcwrap.BadBlobError),
        (b"", zcwrap.BadBlobError),
        (b"\x80\x04cno_such_module_zcwrap\nThing\n.", zcwrap.BadModelError),
        (b"\x80\x04c__main__\nNoSuchClassZcwrap\n.", zcwrap.BadModelError),
    ]
    for data, kind in cases:
        def load():
            with _eager.unpickling("blob.zcb", "the module"):
                pickle.loads(data)
        raises_one_line(kind, load, "blob.zcb")


MAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    import zcwrap

    class Local(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

    class Pipe:
        def __init__(self):
            self.model = nn.Linear(2, 2)

    made = Local() if sys.argv[1] == "module" else Pipe()
    print(json.dumps(zcwrap.ModelWrapper.from_model(made).to_actor()))
""")

WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import zcwrap
    try:
        print(type(zcwrap.ModelWrapper.from_actor(**json.loads(sys.argv[1])).unwrap()).__name__)
    except zcwrap.Error as e:
        print(type(e).__name__)
        print(e)
    except BaseException as e:
        print("raw", type(e).__name__, e)
""")


@pytest.mark.parametrize("what", ["module", "pipeline"])
def test_class_defined_in_the_drivers_main_unwraps_elsewhere(what, tmp_path):
    # Pickled by value (cloudpickle) inside the blob: no error, the driver's
    # class comes back (test_dropin.py compares outputs).
    script = tmp_path / "driver.py"
    script.write_text(MAIN_SCRIPT)
    driver = subprocess.run([sys.executable, str(script), what], capture_output=True, text=True)
    assert driver.returncode == 0, driver.stderr
    worker = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, driver.stdout.strip()], capture_output=True,
                            text=True)
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.split() == ["Local" if what == "module" else "Pipe"], worker.stdout


# --- buffers -----------------------------------------------------------------


def blob_bytes():
    wrapper = zcwrap.ModelWrapper.from_model(small())
    with open(wrapper.blob_path, "rb") as f:
        return f.read()


def aligned(data):
    """`data` in page-aligned memory (from_buffer needs 64-byte alignment)."""
    memory = mmap.mmap(-1, max(len(data), 1))
    memory[: len(data)] = data
    return memoryview(memory)[: len(data)]


BUFFERS = [
    ("int", lambda: 123, zcwrap.UsageError),
    ("str", lambda: "a blob", zcwrap.UsageError),
    ("none", lambda: None, zcwrap.UsageError),
    ("non_contiguous", lambda: np.zeros((64, 64), dtype=np.uint8)[:, ::2], zcwrap.UsageError),
    ("empty", lambda: aligned(b""), zcwrap.BadBlobError),
    ("zeros", lambda: aligned(bytes(4096)), zcwrap.BadBlobError),
    ("truncated_blob", lambda: aligned(blob_bytes()[:-1]), zcwrap.BadBlobError),
    ("misaligned_blob", lambda: aligned(b"x" + blob_bytes())[1:], zcwrap.BadBlobError),
]


@pytest.mark.parametrize("name,make,kind", BUFFERS, ids=[case[0] for case in BUFFERS])
def test_odd_buffer(name, make, kind):
    raises_one_line(kind, lambda: zcwrap.ModelWrapper.from_buffer(make()))


def test_buffer_name_must_be_a_string():
    raises_one_line(zcwrap.UsageError, lambda: zcwrap.ModelWrapper.from_buffer(blob_bytes(), name=5), "name=5")


# --- config files ------------------------------------------------------------


def test_config_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "x.json"
    with open(huge, "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB that used to be read whole
    start = time.monotonic()
    message = raises_one_line(zcwrap.BadBlobError, lambda: zcwrap.ModelWrapper.open(huge), str(huge), "1048576")
    assert time.monotonic() - start < 1.0, message
    raises_one_line(zcwrap.BadBlobError, lambda: zcwrap.describe(str(huge)), "1048576")


def test_config_file_at_the_limit_is_read(tmp_path):
    text = json.dumps(config_of())
    exact = tmp_path / "exact.json"
    exact.write_text(text + " " * ((1 << 20) - len(text)))
    assert zcwrap.ModelWrapper.open(exact).model_names == ["model"]
    over = tmp_path / "over.json"
    over.write_text(text + " " * ((1 << 20) + 1 - len(text)))
    raises_one_line(zcwrap.BadBlobError, lambda: zcwrap.ModelWrapper.open(over), "1048576")


def test_paths_are_paths():
    path = zcwrap.ModelWrapper.from_model(small()).blob_path
    # A NUL byte would cut the path short where the C library reads it: the blob itself would open.
    for call in (zcwrap.ModelWrapper.open, zcwrap.describe, zcwrap.verify):
        raises_one_line(zcwrap.UsageError, lambda: call(123), "path=123")
        raises_one_line(zcwrap.UsageError, lambda: call(None), "path=None")
        raises_one_line(zcwrap.UsageError, lambda: call(path + "\0.old"), "NUL")
    wrapper = zcwrap.ModelWrapper.open(path)
    raises_one_line(zcwrap.UsageError, lambda: wrapper.unpack(None), "path=None")
    raises_one_line(zcwrap.UsageError, lambda: wrapper.unpack("/tmp/x.pt", model=3), "model=3")
