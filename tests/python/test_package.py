"""The Python package: ray-zerocopy's API over zcwrap blobs, eager and TorchScript.

Every output is compared bit for bit with the original model's (eager) or with
torch.jit.load of the saved original (TorchScript), under the same torch.
Models are real architectures with random weights, built here.
"""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ZCWRAP_BIN, file_offset, import_zcwrap, mapping_of, run, same_bytes

zcwrap = import_zcwrap()



# Each test packs into its own store folder (conftest.py).
pytestmark = pytest.mark.usefixtures("store")


def blob_mappings(path):
    """(start, end, perms) of every mapping of `path` in this process."""
    out = []
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end, fields[1]))
    return out


def all_tensors(obj):
    """Every tensor reachable from a module's parameters, buffers and attributes."""
    found = {}
    modules = obj.modules() if isinstance(obj, nn.Module) else [obj]
    for module in modules:
        for value in list(vars(module).get("_parameters", {}).values()) + list(
                vars(module).get("_buffers", {}).values()) + list(vars(module).values()):
            if isinstance(value, torch.Tensor):
                found[id(value)] = value
    return list(found.values())


def assert_in_blob(tensors, path, perms="r--s"):
    maps = blob_mappings(path)
    assert maps, f"{path} is not mapped"
    for t in tensors:
        if t.untyped_storage().nbytes() == 0:
            continue
        p = t.untyped_storage().data_ptr()
        assert any(s <= p and p + t.untyped_storage().nbytes() <= e and perm == perms for s, e, perm in maps), (
            f"tensor {tuple(t.shape)} {t.dtype} at {p:#x} is not inside a {perms} mapping of {path}")


# --- models ---------------------------------------------------------------


class Edges(nn.Module):
    """Every dtype the format holds, views, non-contiguous and zero-size tensors, ties."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.tied = self.linear.weight  # the same Parameter twice
        base = torch.randn(6, 10)
        self.register_buffer("transposed", base.t())  # non-contiguous
        self.register_buffer("window", base[1:4, 2:9])  # a view: same storage, offset
        self.register_buffer("empty", torch.empty(0, 3))
        self.register_buffer("bf16", torch.randn(5, 3).to(torch.bfloat16))
        self.register_buffer("f16", torch.randn(7).half())
        self.register_buffer("f64", torch.randn(4, dtype=torch.float64))
        self.register_buffer("i8", torch.randint(-128, 127, (9,), dtype=torch.int8))
        self.register_buffer("u8", torch.randint(0, 255, (9,), dtype=torch.uint8))
        self.register_buffer("i16", torch.randint(-999, 999, (3,), dtype=torch.int16))
        self.register_buffer("i32", torch.randint(-999, 999, (3,), dtype=torch.int32))
        self.register_buffer("i64", torch.randint(-999, 999, (3,), dtype=torch.int64))
        self.register_buffer("flags", torch.rand(11) > 0.5)
        self.register_buffer("c64", torch.randn(3, dtype=torch.complex64))
        self.register_buffer("c128", torch.randn(3, dtype=torch.complex128))
        self.register_buffer("c32", torch.randn(3, dtype=torch.complex64).to(torch.complex32))
        self.register_buffer("qint8", torch.quantize_per_tensor(torch.randn(6), 0.05, 3, torch.qint8))
        self.register_buffer("quint8", torch.quantize_per_channel(
            torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1, 2, 3]), 0, torch.quint8))
        self.register_buffer("qint32", torch.quantize_per_tensor(torch.randn(5), 0.01, 0, torch.qint32))
        self.extra = [torch.arange(4.0), {"k": torch.ones(2, 2)}]  # tensors in containers
        self.plain = torch.full((3,), 7.0)  # a plain tensor attribute

    def forward(self, x):
        y = self.linear(x) + self.tied.sum()
        return (y, self.transposed.sum() + self.window.sum() + self.bf16.float().sum() + self.f16.float().sum()
                + self.f64.sum() + self.extra[0].sum() + self.extra[1]["k"].sum() + self.plain.sum())


def resnet():
    import torchvision

    return torchvision.models.resnet18(num_classes=10).eval()


def bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    return BertModel(config).eval()


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=32)
    return GPT2LMHeadModel(config).eval()  # lm_head.weight is wte.weight


def encoder():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def lstm():
    return nn.LSTM(input_size=12, hidden_size=16, num_layers=2, batch_first=True).eval()


EAGER = {
    "resnet18": (resnet, lambda: (torch.randn(2, 3, 64, 64),)),
    "bert": (bert, lambda: (torch.randint(0, 500, (2, 12)),)),
    "gpt2": (gpt2, lambda: (torch.randint(0, 300, (2, 10)),)),
    "transformer_encoder": (encoder, lambda: (torch.randn(2, 7, 32),)),
    "lstm": (lstm, lambda: (torch.randn(2, 5, 12),)),
    "edges": (Edges, lambda: (torch.randn(3, 8),)),
}


# --- eager modules ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EAGER))
def test_eager_unwrap_is_bit_equal_and_zero_copy(name):
    make, inputs = EAGER[name]
    torch.manual_seed(0)
    model = make()
    args = inputs()
    expected = run(model, *args)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    assert wrapper.is_standalone_module and wrapper._is_standalone_module
    assert wrapper.model_names == ["model"]
    assert wrapper._model_refs == {"model": "python_pickle"}

    unwrapped = wrapper.unwrap(device="cpu")
    assert type(unwrapped) is type(model)
    assert not unwrapped.training
    assert all(not p.requires_grad for p in unwrapped.parameters())
    assert same_bytes(run(unwrapped, *args), expected)
    # Every weight, bit for bit, and inside the blob's read-only shared mapping.
    original = model.state_dict(keep_vars=True)
    state = unwrapped.state_dict(keep_vars=True)
    assert original.keys() == state.keys()
    assert all(same_bytes(original[k], state[k]) for k in original)
    assert_in_blob(all_tensors(unwrapped), wrapper.blob_path)
    info = zcwrap.describe(wrapper.blob_path)
    assert info["models"][0]["skeleton"]["kind"] == "python_pickle"


def test_eager_ties_views_and_containers_survive():
    model = Edges()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    unwrapped = wrapper.unwrap()
    assert unwrapped.tied is unwrapped.linear.weight
    assert isinstance(unwrapped.linear.weight, nn.Parameter)
    assert unwrapped.window.untyped_storage().data_ptr() == unwrapped.transposed.untyped_storage().data_ptr()
    assert not unwrapped.transposed.is_contiguous()
    assert unwrapped.empty.shape == (0, 3)
    assert same_bytes(unwrapped.extra, model.extra) and same_bytes(unwrapped.plain, model.plain)
    assert_in_blob([unwrapped.extra[0], unwrapped.extra[1]["k"], unwrapped.plain, unwrapped.qint8, unwrapped.quint8,
                    unwrapped.c32], wrapper.blob_path)
    # Every dtype, quantized ones included, went to the data section.
    assert zcwrap.describe(wrapper.blob_path)["models"][0]["unshared_bytes"] == 0


def test_gpt2_tied_head_is_stored_once():
    model = gpt2()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    unwrapped = wrapper.unwrap()
    assert unwrapped.lm_head.weight is unwrapped.transformer.wte.weight
    info = zcwrap.describe(wrapper.blob_path)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() skips the tie
    assert info["storages"]["bytes"] <= weights + sum(b.numel() * b.element_size() for b in model.buffers())


def test_bfloat16_eager_model_is_fully_shared():
    # ray-zerocopy's eager path goes through .numpy(), which has no bfloat16.
    model = encoder().to(torch.bfloat16)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    unwrapped = wrapper.unwrap()
    x = torch.randn(2, 7, 32).to(torch.bfloat16)
    assert same_bytes(run(unwrapped, x), run(model, x))
    tensors = all_tensors(unwrapped)
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors)
    assert_in_blob(tensors, wrapper.blob_path)
    info = zcwrap.describe(wrapper.blob_path)
    assert info["models"][0]["unshared_bytes"] == 0


def test_model_is_not_changed_by_packing():
    model = resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    model.train()
    zcwrap.ModelWrapper.from_model(model)
    assert model.training
    assert all(torch.equal(before[k], v) and pointers[k] == v.data_ptr() for k, v in model.state_dict().items())


# --- TorchScript -----------------------------------------------------------


@pytest.mark.parametrize("how", ["scripted", "traced"])
def test_torchscript_unwrap_equals_jit_load(how, tmp_path):
    model = resnet()
    x = torch.randn(2, 3, 64, 64)
    script = torch.jit.script(model) if how == "scripted" else torch.jit.trace(model, (x,))
    path = tmp_path / "model.pt"
    torch.jit.save(script, str(path))
    reference = torch.jit.load(str(path)).eval()

    wrapper = zcwrap.ModelWrapper.from_model(script)
    assert wrapper._model_refs == {"model": "torchscript"}
    unwrapped = wrapper.unwrap()
    assert isinstance(unwrapped, torch.jit.ScriptModule)
    assert not unwrapped.training
    assert same_bytes(run(unwrapped, x), run(reference, x))
    assert_in_blob(list(unwrapped.parameters()) + list(unwrapped.buffers()), wrapper.blob_path)
    assert zcwrap.describe(wrapper.blob_path)["models"][0]["unshared_bytes"] == 0


def test_blob_packed_by_the_cli_unwraps_in_python(tmp_path):
    if not os.path.isfile(ZCWRAP_BIN):
        pytest.skip("needs the zcwrap command: set ZCWRAP_TORCH2_BUILD (scripts/test.sh does)")
    model = torch.jit.trace(lstm(), (torch.randn(2, 5, 12),))
    torch.jit.save(model, str(tmp_path / "lstm.pt"))
    packed = subprocess.run([ZCWRAP_BIN, "pack", str(tmp_path / "lstm.pt"), "-o", str(tmp_path / "lstm.zcb")],
                            capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    x = torch.randn(2, 5, 12)
    for source in ("lstm.zcb", "lstm.actor.json"):
        unwrapped = zcwrap.ModelWrapper.open(tmp_path / source).unwrap()
        assert same_bytes(run(unwrapped, x), run(torch.jit.load(str(tmp_path / "lstm.pt")), x))


# --- pipelines --------------------------------------------------------------


class Pipeline:
    def __init__(self):
        self.encoder = encoder()
        self.head = torch.jit.script(nn.Sequential(nn.Linear(32, 4), nn.Softmax(dim=-1)).eval())
        self.embed = nn.Embedding(50, 32).eval()
        self.labels = ["a", "b", "c", "d"]
        self.threshold = 0.25

    def __call__(self, tokens):
        with torch.no_grad():
            return self.head(self.encoder(self.embed(tokens)))


class TiedPipeline:
    def __init__(self):
        self.first = nn.Linear(16, 16)
        self.second = nn.Linear(16, 16)
        self.second.weight = self.first.weight  # one Parameter in two models


def test_pipeline_round_trip():
    pipeline = Pipeline()
    tokens = torch.randint(0, 50, (2, 6))
    wrapper = zcwrap.ModelWrapper.from_model(pipeline)
    assert not wrapper.is_standalone_module
    assert wrapper.model_names == ["encoder", "head", "embed"]
    assert wrapper._model_refs == {"encoder": "python_pickle", "head": "torchscript", "embed": "python_pickle"}
    unwrapped = wrapper.unwrap()
    assert type(unwrapped) is Pipeline
    assert unwrapped.labels == pipeline.labels and unwrapped.threshold == pipeline.threshold
    assert isinstance(unwrapped.head, torch.jit.ScriptModule)
    assert same_bytes(unwrapped(tokens), pipeline(tokens))
    assert_in_blob(all_tensors(unwrapped.encoder) + all_tensors(unwrapped.embed) + list(unwrapped.head.parameters()),
                   wrapper.blob_path)


def test_tensor_shared_between_pipeline_models_is_stored_once():
    wrapper = zcwrap.ModelWrapper.from_model(TiedPipeline())
    info = zcwrap.describe(wrapper.blob_path)
    assert info["storages"]["count"] == 3  # one weight, two biases
    unwrapped = wrapper.unwrap()
    assert unwrapped.first.weight.data_ptr() == unwrapped.second.weight.data_ptr()


# --- the seed's hand-offs -----------------------------------------------------


def test_to_actor_from_actor_and_actor_wrapper():
    model = lstm()
    x = torch.randn(2, 5, 12)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    config = wrapper.to_actor()
    assert json.loads(json.dumps(config)) == config  # plain values
    again = zcwrap.ModelWrapper.from_actor(**config)
    assert same_bytes(run(again.unwrap(), x), run(model, x))

    actor = zcwrap.ActorWrapper(model, device="cpu")
    assert actor.is_standalone_module and actor.model_names == ["model"]
    assert same_bytes(run(actor.load(), x), run(model, x))
    restored = zcwrap.ActorWrapper.from_actor(**actor.to_actor())
    assert restored.device == "cpu"
    assert same_bytes(run(restored.load(), x), run(model, x))


def test_wrappers_pickle_small():
    wrapper = zcwrap.ModelWrapper.from_model(resnet())
    for obj in (wrapper, zcwrap.ActorWrapper(wrapper)):
        data = pickle.dumps(obj)
        assert len(data) < 1024, len(data)
        clone = pickle.loads(data)
        x = torch.randn(1, 3, 32, 32)
        loaded = clone.unwrap() if isinstance(clone, zcwrap.ModelWrapper) else clone.load()
        assert same_bytes(run(loaded, x), run(wrapper.unwrap(), x))


WORKER = textwrap.dedent("""
    import pickle, sys, time, torch, zcwrap
    wrapper = pickle.load(open(sys.argv[1], "rb"))
    model = wrapper.unwrap()
    total = sum(float(t.float().sum()) for t in model.state_dict().values())  # touch every weight
    print("ready", flush=True)
    sys.stdin.read()
""")


def blob_pss_kib(pid, path):
    """Pss (KiB) of `path`'s mappings in process `pid`, from /proc/PID/smaps."""
    total, inside = 0, False
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                inside = len(fields) >= 6 and fields[5] == real
            elif inside and fields[0] == "Pss:":
                total += int(fields[1])
    return total


def test_workers_share_one_copy(tmp_path):
    wrapper = zcwrap.ModelWrapper.from_model(resnet())
    with open(tmp_path / "wrapper.pkl", "wb") as f:
        pickle.dump(wrapper, f)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "wrapper.pkl")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "ready"
        pss = sum(blob_pss_kib(w.pid, wrapper.blob_path) for w in workers) * 1024
    finally:
        for w in workers:
            w.communicate("")
    size = os.path.getsize(wrapper.blob_path)
    # Four workers with a copy each would hold 4x the blob; sharing holds 1x.
    assert pss <= 1.1 * size, f"4 workers hold {pss} bytes of a {size}-byte blob"
    assert pss >= 0.5 * size, f"the workers did not map the weights ({pss} of {size} bytes)"


def test_unwrap_from_memory_buffer(store):
    model = encoder()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    data = np.fromfile(wrapper.blob_path, dtype=np.uint8)
    raw = np.empty(data.size + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    aligned = raw[start:start + data.size]
    aligned[:] = data
    aligned.flags.writeable = False
    memory = zcwrap.ModelWrapper.from_buffer(aligned, name="test buffer")
    assert memory.model_names == ["model"]
    with pytest.raises(zcwrap.UsageError, match="no actor config"):
        memory.to_actor()
    unwrapped = memory.unwrap()
    # Heap memory is private and writable: the weights are a read-only copy.
    for t in all_tensors(unwrapped):
        assert "w" not in mapping_perms(t.data_ptr())
    clone = pickle.loads(pickle.dumps(memory))  # a memory wrapper pickles with its bytes
    del raw, aligned, memory  # the tensors keep the buffer alive
    x = torch.randn(2, 7, 32)
    assert same_bytes(run(unwrapped, x), run(model, x))
    assert same_bytes(run(clone.unwrap(), x), run(model, x))
    with pytest.raises(zcwrap.BadBlobError, match="64-byte aligned"):
        zcwrap.ModelWrapper.from_buffer(data[1:] if data.ctypes.data % 64 == 0 else data)
    with pytest.raises(zcwrap.UsageError, match="not a contiguous buffer"):
        zcwrap.ModelWrapper.from_buffer(np.zeros((64, 64), dtype=np.uint8)[:, ::2])
    with pytest.raises(zcwrap.UsageError, match="not a contiguous buffer"):
        zcwrap.ModelWrapper.from_buffer(42)


def mapping_perms(address):
    """The permissions ("r--s", ...) of the mapping holding `address`."""
    return mapping_of(address)[2]


def test_shared_memory_is_mapped_again_read_only_without_a_copy(tmp_path):
    """As Ray's object store does, a writable MAP_SHARED mapping: unwrap maps
    the same pages a second time, read-only, and leaves the caller's mapping
    writable; a write to a weight faults and changes nothing."""
    import mmap

    model = encoder()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    shared = tmp_path / "shared"
    shared.write_bytes(open(wrapper.blob_path, "rb").read())
    with open(shared, "r+b") as f:
        region = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)
    buffer = np.frombuffer(region, dtype=np.uint8)
    unwrapped = zcwrap.ModelWrapper.from_buffer(buffer, name="shared region").unwrap()
    _, base_inode, base_offset = file_offset(buffer.ctypes.data)
    assert mapping_perms(buffer.ctypes.data) == "rw-s"
    for t in all_tensors(unwrapped):
        _, inode, offset = file_offset(t.data_ptr())
        at = offset - base_offset
        assert inode == base_inode and 0 <= at < buffer.size  # the same file's pages: no copy
        assert mapping_perms(t.data_ptr()) == "r--s"
    x = torch.randn(2, 7, 32)
    assert same_bytes(run(unwrapped, x), run(model, x))
    before = shared.read_bytes()
    writer = subprocess.run([sys.executable, "-c", MEMORY_WRITER, str(shared), "shared"], capture_output=True,
                            text=True)
    assert writer.returncode == -11 and "wrote" not in writer.stdout
    assert "zcwrap: fatal: write to a read-only weight of shared region" in writer.stderr
    assert "unwrap(copy_on_write=True)" in writer.stderr
    assert shared.read_bytes() == before
    private = subprocess.run([sys.executable, "-c", MEMORY_WRITER, str(shared), "cow"], capture_output=True,
                             text=True)
    assert private.returncode == 0 and "wrote" in private.stdout, private.stderr
    assert shared.read_bytes() == before


def rss_of_mapping(address):
    """Resident bytes (/proc/self/smaps Rss) of the mapping holding `address`."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:
                start, end = (int(x, 16) for x in first.split("-"))
                inside = start <= address < end
            elif inside and first == "Rss:":
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("prefetch", ["none", "populate"])
def test_prefetch_populates_a_memory_blobs_read_only_mapping(tmp_path, prefetch):
    """populate maps every page of the data section before unwrap returns, also
    where a memory blob's data section does not start on a page."""
    import mmap

    wrapper = zcwrap.ModelWrapper.from_model(nn.Sequential(*[nn.Linear(256, 256) for _ in range(16)]))
    data = open(wrapper.blob_path, "rb").read()
    offset = 192  # not on a page boundary, as in Ray's object store
    region = mmap.mmap(-1, len(data) + offset)
    region[offset:offset + len(data)] = data
    buffer = np.frombuffer(region, dtype=np.uint8)[offset:offset + len(data)]
    unwrapped = zcwrap.ModelWrapper.from_buffer(buffer).unwrap(prefetch=prefetch)
    weights = sum(p.numel() * p.element_size() for p in unwrapped.parameters())
    resident = rss_of_mapping(next(unwrapped.parameters()).data_ptr())
    if prefetch == "populate":
        assert resident >= weights, (resident, weights)
    else:
        assert resident < weights / 2, (resident, weights)


MEMORY_WRITER = textwrap.dedent("""
    import mmap, sys, numpy, torch, zcwrap
    with open(sys.argv[1], "r+b") as f:
        region = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)
    wrapper = zcwrap.ModelWrapper.from_buffer(numpy.frombuffer(region, dtype=numpy.uint8), name="shared region")
    model = wrapper.unwrap(copy_on_write=sys.argv[2] == "cow")
    with torch.no_grad():
        next(model.parameters()).add_(1)
    print("wrote", flush=True)
""")


# --- writes to weights ---------------------------------------------------------


WRITER = textwrap.dedent("""
    import pickle, sys, torch, zcwrap
    wrapper = pickle.load(open(sys.argv[1], "rb"))
    model = wrapper.unwrap(copy_on_write=sys.argv[2] == "cow")
    with torch.no_grad():
        model.weight.add_(1)
    print("wrote", flush=True)
""")


def test_a_write_to_a_weight_faults_or_copies(tmp_path):
    wrapper = zcwrap.ModelWrapper.from_model(nn.Linear(64, 64))
    with open(tmp_path / "wrapper.pkl", "wb") as f:
        pickle.dump(wrapper, f)
    faulted = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "wrapper.pkl"), "shared"],
                             capture_output=True, text=True)
    assert faulted.returncode == -11 and "wrote" not in faulted.stdout
    assert "zcwrap" in faulted.stderr and "read-only" in faulted.stderr, faulted.stderr
    copied = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "wrapper.pkl"), "cow"],
                            capture_output=True, text=True)
    assert copied.returncode == 0 and "wrote" in copied.stdout, copied.stderr
    assert zcwrap.verify(wrapper.blob_path)["ok"]  # the blob kept its bytes


# --- bad input -------------------------------------------------------------------


class WithLambda(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.fn = lambda x: x


class WithFile(nn.Module):
    def __init__(self, path):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.log = open(path, "w")


def test_bad_inputs_raise_one_error_type(tmp_path):
    with pytest.raises(zcwrap.UsageError, match="no module attributes"):
        zcwrap.ModelWrapper.from_model(42)
    with pytest.raises(zcwrap.UsageError, match="no module attributes"):
        zcwrap.ModelWrapper.from_model(type("Empty", (), {})())
    # A lambda travels by value (cloudpickle) inside the blob: test_dropin.py.
    assert zcwrap.ModelWrapper.from_model(WithLambda()).unwrap().fn(5) == 5
    with pytest.raises(zcwrap.BadModelError, match="cannot pickle WithFile"):
        zcwrap.ModelWrapper.from_model(WithFile(tmp_path / "log.txt"))
    wrapper = zcwrap.ModelWrapper.from_model(nn.Linear(4, 4))
    for device, what in (("cuda:7", "CUDA"), ("tpu", "not a device name"), ("mps", "only cpu and cuda")):
        with pytest.raises(zcwrap.DeviceError, match=what):
            wrapper.unwrap(device=device)
    with pytest.raises(zcwrap.UsageError, match="prefetch"):
        wrapper.unwrap(prefetch="soon")
    for cls in (zcwrap.UsageError, zcwrap.BadModelError, zcwrap.DeviceError, zcwrap.StaleError):
        assert issubclass(cls, zcwrap.Error)
    assert (zcwrap.DeviceError.kind, zcwrap.DeviceError.code) == ("device", 7)


def test_stale_and_missing_blobs(tmp_path):
    wrapper = zcwrap.ModelWrapper.from_model(nn.Linear(4, 4))
    config = wrapper.to_actor()
    other = zcwrap.ModelWrapper.from_model(nn.Linear(4, 4))
    os.replace(other.blob_path, wrapper.blob_path)  # re-packed in place
    with pytest.raises(zcwrap.StaleError, match="not the blob this actor config was made for"):
        zcwrap.ModelWrapper.from_actor(**config)
    with pytest.raises(zcwrap.StaleError):
        wrapper.unwrap()
    os.remove(wrapper.blob_path)
    with pytest.raises(zcwrap.StaleError, match="named by the actor config"):
        zcwrap.ModelWrapper.from_actor(**config)
    with pytest.raises(zcwrap.BadBlobError, match="missing field"):
        zcwrap.ModelWrapper.from_actor(blob="x.zcb")


def test_cli_reads_eager_blobs_and_refuses_to_run_them(tmp_path):
    if not os.path.isfile(ZCWRAP_BIN):
        pytest.skip("needs the zcwrap command: set ZCWRAP_TORCH2_BUILD (scripts/test.sh does)")
    wrapper = zcwrap.ModelWrapper.from_model(encoder())
    inspected = subprocess.run([ZCWRAP_BIN, "inspect", wrapper.blob_path], capture_output=True, text=True)
    assert inspected.returncode == 0 and "python_pickle" in inspected.stdout, inspected.stderr
    assert "unwrap it with the zcwrap Python package" in inspected.stdout
    verified = subprocess.run([ZCWRAP_BIN, "verify", wrapper.blob_path], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    torch.save(torch.randn(2, 7, 32), str(tmp_path / "x.pt"))
    ran = subprocess.run([ZCWRAP_BIN, "run", wrapper.blob_path, "--input", str(tmp_path / "x.pt"), "-o",
                          str(tmp_path / "y.pt")],
                         capture_output=True, text=True)
    assert ran.returncode == 5, (ran.returncode, ran.stderr)
    assert ran.stderr.count("\n") == 1 and ran.stderr.startswith("zcwrap: error: ")
    assert "unwrap it from Python" in ran.stderr
    unpacked = subprocess.run([ZCWRAP_BIN, "unpack", wrapper.blob_path, "-o", str(tmp_path / "m.pt")],
                              capture_output=True, text=True)
    assert unpacked.returncode == 5 and "eager PyTorch module" in unpacked.stderr
    assert not (tmp_path / "m.pt").exists()


def test_import_under_another_torch_is_an_import_error():
    code = "import torch; torch.__version__ = '0.0.1'; import zcwrap"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ImportError: zcwrap" in result.stderr and "built against torch" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("fast", [False, True])
def test_cuda_unwrap(fast):
    model = encoder()
    x = torch.randn(2, 7, 32)
    unwrapped = zcwrap.ModelWrapper.from_model(model).unwrap(device="cuda:0", use_fast_load=fast)
    assert all(t.device.type == "cuda" for t in all_tensors(unwrapped))
    assert same_bytes(run(unwrapped, x.cuda()).cpu(), run(model.cuda(), x.cuda()).cpu())


# --- one open per operation ----------------------------------------------------


OPERATIONS = {
    "ModelWrapper.open(blob).unwrap()": "zcwrap.ModelWrapper.open(BLOB).unwrap()",
    "ModelWrapper.open(config).unwrap()": "zcwrap.ModelWrapper.open(CONFIG).unwrap()",
    "from_actor(**config).unwrap()": "zcwrap.ModelWrapper.from_actor(**json.load(open(CONFIG))).unwrap()",
    "pickle.load(wrapper).unwrap()": "pickle.load(open(PICKLE, 'rb')).unwrap()",  # as a worker gets it
    "describe(blob)": "zcwrap.describe(BLOB)",
    "zcwrap run": ["run", "BLOB", "-i", "IN", "-o", "OUT"],
    "zcwrap run config": ["run", "CONFIG", "-i", "IN", "-o", "OUT"],
    "zcwrap inspect": ["inspect", "BLOB"],
    "zcwrap inspect --json": ["inspect", "--json", "BLOB"],
    "zcwrap verify": ["verify", "BLOB"],
    "zcwrap unpack": ["unpack", "BLOB", "-o", "OUT"],
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_operation_opens_the_blob_once(tmp_path, operation):
    """Counted with strace: every successful open of the blob file is one
    mapping and one check of its header, meta checksum and manifest."""
    import shutil

    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/test.sh installs it)")
    what = OPERATIONS[operation]
    if isinstance(what, list) and not os.path.exists(ZCWRAP_BIN):
        pytest.skip(f"no zcwrap binary at {ZCWRAP_BIN} (scripts/test.sh sets ZCWRAP_TORCH2_BUILD)")
    scripted = torch.jit.script(nn.Sequential(nn.Linear(16, 16), nn.ReLU()).eval())
    wrapper = zcwrap.ModelWrapper.from_model(scripted)
    blob, config = tmp_path / "m.zcb", tmp_path / "m.actor.json"
    shutil.copy(wrapper.blob_path, blob)
    config.write_text(json.dumps({**wrapper.to_actor(), "blob": str(blob)}))
    torch.save(torch.randn(2, 16), tmp_path / "in.pt")
    (tmp_path / "w.pkl").write_bytes(pickle.dumps(zcwrap.ModelWrapper.from_actor(**json.loads(config.read_text()))))
    names = {"PICKLE": str(tmp_path / "w.pkl"), "BLOB": str(blob), "CONFIG": str(config), "IN": str(tmp_path / "in.pt"), "OUT": str(tmp_path / "out.pt")}
    if isinstance(what, list):
        argv = [ZCWRAP_BIN] + [names.get(a, a) for a in what]
    else:
        code = "import json, pickle, zcwrap\n" + "".join(f"{k} = {v!r}\n" for k, v in names.items()) + what
        argv = [sys.executable, "-c", code]
    log = tmp_path / "strace.log"
    done = subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log)] + argv,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    opens = [line for line in log.read_text().splitlines() if f'"{blob}"' in line and " = -1 " not in line]
    assert len(opens) == 1, "\n".join(opens)
