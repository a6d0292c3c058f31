"""zcwrap under real Ray: the blob through the object store, on a 3-node cluster.

ray.cluster_utils.Cluster starts three nodes on this machine, each with its
own raylet and object store and a custom resource naming it ("node0", ...),
so actors can be pinned. Small enough for 2 cores: one CPU per node, a
small model. Skips (never fails) where Ray is not installed.
"""

import os
import sys
import time

import pytest
import torch
from torch import nn

from conftest import NODES, file_offset, import_or_skip, import_zcwrap, mapping_of

zcwrap = import_zcwrap()
ray = import_or_skip("ray", "Ray is not installed (scripts/requirements.txt pins it)")


def make_model():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def bytes_of(t):
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def reference(model, x):
    """The original model's output as a Ray worker computes it: Ray starts
    workers with OMP_NUM_THREADS=1, and float sums depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        torch.set_num_threads(threads)


@ray.remote(num_cpus=0)
class Probe:
    """An actor that unwraps the wrapper it was given and reports where its weights are."""

    def __init__(self, model_wrapper):
        self.model = model_wrapper.unwrap(device="cpu")
        self.wrapper = model_wrapper

    def report(self, x, original):
        buffer = ray.get(self.wrapper._ray_ref)
        tensors = [t for t in self.model.state_dict().values() if t.numel() > 0]
        with torch.no_grad():
            out, expected = self.model(x), original(x)  # the original, as pickled by Ray: a copy
        return {"node": ray.get_runtime_context().get_node_id(), "views": views_of_the_store(tensors, buffer),
                "count": len(tensors), "writable": buffer.flags.writeable,
                "store_mapping": mapping_of(buffer.ctypes.data), "mapping": mapping_of(tensors[0].data_ptr()),
                "out": out, "expected": expected, "pid": os.getpid()}


def views_of_the_store(tensors, buffer):
    """Whether every tensor maps, read-only, the very object-store pages that
    hold its bytes in `buffer` (what ray.get returned): no copy, and no write
    permission where Ray's own mapping has one."""
    base = file_offset(buffer.ctypes.data)
    raw = buffer.tobytes()
    for t in tensors:
        path, inode, offset = file_offset(t.data_ptr())
        at = offset - base[2]
        nbytes = t.numel() * t.element_size()
        if (path, inode) != base[:2] or not 0 <= at <= len(raw) - nbytes:
            return f"{t.shape} at {path}:{offset} is not in the object store's file {base}"
        if "w" in mapping_of(t.data_ptr())[2]:
            return f"{t.shape} is writable"
        if raw[at:at + nbytes] != bytes_of(t.contiguous()) and t.is_contiguous():
            return f"{t.shape}: the bytes at its place in the object differ"
    return "ok"


def test_actors_on_every_node_unwrap_from_their_object_store(cluster):
    model = make_model()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    x = torch.randn(2, 5, 64)
    original = ray.put(model)
    # Two actors per node, pinned by the node's resource.
    actors = [Probe.options(resources={f"node{i}": 0.1}).remote(wrapper) for i in range(NODES) for _ in range(2)]
    reports = ray.get([a.report.remote(x, original) for a in actors], timeout=300)
    assert wrapper._ray_ref is not None  # put once, by the driver
    assert len({r["node"] for r in reports}) == NODES
    for r in reports:
        assert r["views"] == "ok" and r["count"] > 0, r
        assert not r["writable"]
        # Ray's own mapping of its store stays as Ray made it (writable, shared):
        # zcwrap maps the pages a second time instead of changing it.
        assert r["store_mapping"][2] == "rw-s" and r["mapping"][2] == "r--s", r
        assert bytes_of(r["out"]) == bytes_of(r["expected"])
    # The two actors of a node map the same pages of the same object-store
    # file: one copy per node. Actors of different nodes map different stores.
    by_node = {}
    for r in reports:
        by_node.setdefault(r["node"], set()).add(r["mapping"][:2] + (r["mapping"][3],))
    assert all(len(m) == 1 for m in by_node.values()), by_node
    assert len({next(iter(m)) for m in by_node.values()}) == NODES
    for a in actors:
        ray.kill(a)


class InferenceActor:
    """The seed's usage, as written in its README."""

    def __init__(self, model_wrapper):
        self.model = model_wrapper.unwrap(device="cpu")

    def __call__(self, batch):
        with torch.no_grad():
            return {"out": self.model(torch.as_tensor(batch["data"])).numpy()}


def test_map_batches_with_the_seeds_usage(cluster):
    import numpy as np

    model = make_model()
    data = np.random.default_rng(0).standard_normal((12, 5, 64)).astype(np.float32)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    ds = ray.data.from_items([{"data": row} for row in data])
    out = ds.map_batches(InferenceActor, fn_constructor_kwargs={"model_wrapper": wrapper}, batch_size=4,
                         compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.25).take_all()
    expected = reference(model, torch.as_tensor(data)).numpy()
    got = np.stack([row["out"] for row in out])
    # Rows may come back in any order: match each to its input's output.
    assert sorted(bytes(r.tobytes()) for r in got) == sorted(bytes(r.tobytes()) for r in expected)


@ray.remote(num_cpus=0)
def unwrap_and_run(wrapper, x):
    with torch.no_grad():
        return wrapper.unwrap()(x)


@ray.remote(num_cpus=0)
def die():
    os._exit(1)


def test_actor_wrapper_to_actor_and_a_dying_worker(cluster):
    model = make_model()
    x = torch.randn(1, 3, 64)
    expected = reference(model, x)
    actor = zcwrap.ActorWrapper(model, device="cpu")
    config = actor.to_actor()
    # A worker that dies takes nobody else down.
    with pytest.raises(ray.exceptions.RayError):
        ray.get(die.remote(), timeout=120)
    assert bytes_of(ray.get(unwrap_and_run.remote(actor.wrapper, x), timeout=120)) == bytes_of(expected)
    # The plain config (a path: this test's nodes share a filesystem).
    again = zcwrap.ActorWrapper.from_actor(**config)
    assert bytes_of(reference(again.load(), x)) == bytes_of(expected)


DRIVER = """
import os, sys, torch, ray, zcwrap
sys.path.insert(0, sys.argv[2])
from test_ray import make_model
ray.init(address=sys.argv[1], namespace="zcwrap-test", log_to_driver=False)
wrapper = zcwrap.ModelWrapper.from_model(make_model())

@ray.remote(num_cpus=0, lifetime="detached", name=sys.argv[3])
class Holder:
    def __init__(self, wrapper):
        self.wrapper = wrapper
        self.model = wrapper.unwrap()
    def run(self):
        with torch.no_grad():
            return self.model(torch.ones(1, 2, 64))
    def unwrap_again(self):
        try:
            with torch.no_grad():
                return self.wrapper.unwrap()(torch.ones(1, 2, 64))
        except zcwrap.Error as e:
            return type(e).__name__ + ": " + str(e)

holder = Holder.remote(wrapper)
ray.get(holder.run.remote())
os.remove(wrapper.blob_path)  # the blob now exists only in the object store
os._exit(0)  # the driver, which owns the Ray object, is gone
"""


def test_actors_keep_working_after_their_driver_exits(cluster, tmp_path):
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    name = f"zcwrap-holder-{os.getpid()}"
    env = dict(os.environ, ZCWRAP_STORE=str(tmp_path))
    driver = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, here, name], capture_output=True,
                            text=True, timeout=300, env=env)
    assert driver.returncode == 0, driver.stderr[-2000:]
    holder = ray.get_actor(name, namespace="zcwrap-test")
    try:
        expected = reference(make_model(), torch.ones(1, 2, 64))
        # The model it unwrapped keeps its pages: the actor's ray.get pinned them.
        assert bytes_of(ray.get(holder.run.remote(), timeout=120)) == bytes_of(expected)
        # A new unwrap gets the node's copy, or, once Ray has dropped the
        # object of a dead owner, one clear zcwrap error; never a crash.
        again = ray.get(holder.unwrap_again.remote(), timeout=120)
        if isinstance(again, str):
            assert again.startswith("StaleError: ") and "cannot be fetched" in again, again
        else:
            assert bytes_of(again) == bytes_of(expected)
    finally:
        ray.kill(holder)


@ray.remote(num_cpus=0)
class Owner:
    """Packs a model here, so that this actor owns the blob's Ray object."""

    def make(self, model):
        return zcwrap.ModelWrapper.from_model(model)  # returning it puts the blob: owned here


def test_a_lost_object_falls_back_to_the_file_or_says_so(cluster):
    model = make_model()
    x = torch.randn(1, 3, 64)
    owner = Owner.remote()
    wrapper = ray.get(owner.make.remote(model), timeout=120)
    assert wrapper._ray_ref is not None
    ray.kill(owner)  # the object's owner is gone, and the object with it
    time.sleep(1)
    # The blob file is still there (these nodes share a filesystem): unwrap reads it.
    assert bytes_of(ray.get(unwrap_and_run.remote(wrapper, x), timeout=120)) == bytes_of(reference(model, x))
    os.remove(wrapper.blob_path)
    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        ray.get(unwrap_and_run.remote(wrapper, x), timeout=120)
    assert "StaleError" in str(raised.value) and "cannot be fetched" in str(raised.value)


# --- writes to shared weights -------------------------------------------------


@ray.remote(num_cpus=0, max_restarts=0)
class Writer:
    """Unwraps, then writes to its first weight in place, as a buggy actor or
    a module that renormalizes its weights (nn.Embedding(max_norm=...)) does."""

    def __init__(self, model_wrapper, copy_on_write):
        self.model = model_wrapper.unwrap(copy_on_write=copy_on_write)

    def write(self):
        weight = next(self.model.parameters())
        with torch.no_grad():
            weight.add_(1000)
        return bytes_of(weight)

    def forward(self, x):
        with torch.no_grad():
            return self.model(x)


@ray.remote(num_cpus=0)
class Reader:
    def __init__(self, model_wrapper):
        self.model = model_wrapper.unwrap()

    def first_weight_and_output(self, x):
        """(its first weight, its output on `x`, or None when x is None)."""
        with torch.no_grad():
            return bytes_of(next(self.model.parameters())), None if x is None else self.model(x)


def worker_logs_mentioning(cluster, text):
    """The worker log files of the cluster's nodes that contain `text`."""
    import glob

    found = []
    for node in cluster.list_all_nodes():
        for path in glob.glob(os.path.join(node.get_logs_dir_path(), "worker-*.err")):
            with open(path, errors="replace") as f:
                if text in f.read():
                    found.append(path)
    return found


def readers_see_the_original(wrapper, model, x):
    """New actors on every node see `model`'s weights (and, given `x`, its outputs)."""
    readers = [Reader.options(resources={f"node{i}": 0.1}).remote(wrapper) for i in range(NODES)]
    try:
        original = bytes_of(next(model.parameters()))
        for weight, out in ray.get([r.first_weight_and_output.remote(x) for r in readers], timeout=300):
            assert weight == original
            if x is not None:
                assert bytes_of(out) == bytes_of(reference(model, x))
    finally:
        for r in readers:
            ray.kill(r)


@pytest.mark.parametrize("how", ["add_", "embedding max_norm"])
def test_a_write_in_one_actor_is_refused_and_changes_no_other_actor(cluster, how):
    torch.manual_seed(1)
    if how == "add_":
        model, x = make_model(), torch.randn(1, 3, 64)
    else:
        # Its forward renormalizes the rows it looks up, in place (torch.embedding_renorm_).
        model, x = nn.Embedding(10, 4, max_norm=1.0).eval(), torch.tensor([[1, 2, 3]])
        with torch.no_grad():
            model.weight.mul_(10)
    wrapper = zcwrap.ModelWrapper.from_model(model)
    writer = Writer.options(resources={"node0": 0.1}).remote(wrapper, False)
    call = writer.write.remote() if how == "add_" else writer.forward.remote(x)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(call, timeout=120)
    # Its last words name the Python option.
    deadline = time.time() + 30
    while not worker_logs_mentioning(cluster, "unwrap(copy_on_write=True)") and time.time() < deadline:
        time.sleep(0.5)
    assert worker_logs_mentioning(cluster, "zcwrap: fatal: write to a read-only weight")
    assert worker_logs_mentioning(cluster, "unwrap(copy_on_write=True) for private, writable weights")
    # An embedding with max_norm cannot run read-only at all: compare weights only.
    readers_see_the_original(wrapper, model, x if how == "add_" else None)


def test_copy_on_write_keeps_a_write_private_to_its_actor(cluster):
    torch.manual_seed(2)
    model = nn.Embedding(10, 4, max_norm=1.0).eval()
    with torch.no_grad():
        model.weight.mul_(10)
    x = torch.tensor([[1, 2, 3]])
    expected = nn.Embedding(10, 4, max_norm=1.0).eval()
    expected.load_state_dict(model.state_dict())
    wrapper = zcwrap.ModelWrapper.from_model(model)
    writer = Writer.options(resources={"node1": 0.1}).remote(wrapper, True)
    try:
        assert bytes_of(ray.get(writer.forward.remote(x), timeout=120)) == bytes_of(reference(expected, x))
        written = ray.get(writer.write.remote(), timeout=120)
        assert written == bytes_of(next(expected.parameters()) + 1000)
    finally:
        ray.kill(writer)
    readers_see_the_original(wrapper, model, None)
