"""zcwrap as a drop-in for ray-zerocopy 0.2 (issue 21, docs/FROM-RAY-ZEROCOPY.md).

A script written for ray-zerocopy 0.2 runs with ``from zcwrap import ...``:
classes defined in the driver's ``__main__``, inside a function, and lambdas
they hold; actor mode and task mode; pipelines, standalone modules and
TorchScript; serialize()/deserialize(**d); pickling in both modes. Every
output is compared bit for bit with the original module on the same inputs,
run with requires_grad off and one thread, as a Ray worker runs it (Ray
starts workers with OMP_NUM_THREADS=1). The Ray cases share the session's
3-node cluster (conftest.py); ray-zerocopy itself is never imported.
"""

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch import nn

from conftest import NODES, import_zcwrap, mapping_of

zcwrap = import_zcwrap()
HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "docs", "FROM-RAY-ZEROCOPY.md")


def bytes_of(t):
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def reference(model, *args):
    """`model`'s output as a Ray worker computes it: one thread, no grad."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(*args)
    finally:
        torch.set_num_threads(threads)


class Encoder(nn.Module):
    """An encoder; its `probe` method reports where a task ran and where its weights are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.linear = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.calls = 0

    def forward(self, x):
        return torch.relu(self.norm(self.linear(x)))

    def encode(self, x):
        return self.forward(x) * 2

    def count(self):
        """(pid, how many calls this very module object has seen)."""
        self.calls += 1
        return os.getpid(), self.calls

    def address(self):
        """(pid, where the weight's bytes are, and that mapping's permissions)."""
        return os.getpid(), self.linear.weight.data_ptr(), mapping_of(self.linear.weight.data_ptr())[2]

    def probe(self, refs):
        """(node id, pid, whether every weight maps the object `refs[0]`
        read-only in this node's object store, as test_ray checks)."""
        import ray
        from test_ray import views_of_the_store

        buffer = ray.get(refs[0])
        tensors = [t for t in self.state_dict().values() if t.numel() > 0]
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "views": views_of_the_store(tensors, buffer),
                "mapping": mapping_of(tensors[0].data_ptr())[2]}


class Pipeline:
    """Two models and a setting, as ray-zerocopy's README writes one."""

    def __init__(self):
        self.encoder = Encoder()
        torch.manual_seed(4)
        self.decoder = nn.Linear(32, 8)
        self.config = {"scale": 0.5}

    def __call__(self, x):
        return self.decoder(self.encoder(x)) * self.config["scale"]


def scripted_pipeline():
    pipe = Pipeline()
    pipe.encoder = torch.jit.script(pipe.encoder)
    pipe.decoder = torch.jit.trace(pipe.decoder, torch.randn(1, 32))
    return pipe


# Each test packs into its own store folder (conftest.py).
pytestmark = pytest.mark.usefixtures("store")


# --- the driver script: classes that exist only in __main__ ------------------

# Written as a ray-zerocopy 0.2 user writes it (its README and docstrings),
# with the one line changed. Its classes exist nowhere else: in __main__, a
# class local to a function, and a lambda one of them holds.
DRIVER = textwrap.dedent('''
    import sys
    import ray
    import torch
    import torch.nn as nn
    from zcwrap import JITModelWrapper, ModelWrapper   # was: from ray_zerocopy import ...

    class EncoderModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, 32)
            self.activation = lambda x: torch.tanh(x) * 2
        def forward(self, x):
            return self.activation(self.linear(x))

    def make_decoder():
        class DecoderModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.network = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
            def forward(self, x):
                return self.network(x)
        return DecoderModel()

    class MyPipeline:
        def __init__(self):
            self.encoder = EncoderModel()
            self.decoder = make_decoder()
            self.config = {"threshold": 0.5}
        def __call__(self, data):
            return self.decoder(self.encoder(data)) + self.config["threshold"]

    ray.init(address=sys.argv[1], log_to_driver=False)
    torch.set_num_threads(1)  # as Ray's workers run (OMP_NUM_THREADS=1): the same float sums
    torch.manual_seed(0)
    pipeline = MyPipeline()
    data = torch.randn(3, 16)

    @ray.remote
    class InferenceActor:
        def __init__(self, model_wrapper):
            self.pipeline = model_wrapper.load()
        def predict(self, data):
            with torch.no_grad():
                return self.pipeline(data)

    results = {}
    model_wrapper = ModelWrapper.from_model(pipeline, mode="actor")
    actors = [InferenceActor.options(resources={f"node{i}": 0.1}).remote(model_wrapper) for i in range(3)]
    for i, out in enumerate(ray.get([a.predict.remote(data) for a in actors])):
        results[f"actor mode, pipeline, node{i}"] = out
    for a in actors:
        ray.kill(a)

    wrapped = ModelWrapper.for_tasks(pipeline)
    results["for_tasks, pipeline"] = wrapped(data)
    rewritten = ModelWrapper.from_model(pipeline, mode="task").load()
    results["from_model task + load, pipeline"] = rewritten(data)
    results["for_tasks, standalone"] = ModelWrapper.for_tasks(pipeline.decoder)(pipeline.encoder(data).detach())
    jit_model = torch.jit.trace(pipeline.decoder, torch.randn(1, 32))
    results["JITModelWrapper.for_tasks, traced"] = JITModelWrapper.for_tasks(jit_model)(
        pipeline.encoder(data).detach())

    # What the original gives, computed as a Ray worker does: one thread, no grad.
    torch.set_num_threads(1)
    for module in (pipeline.encoder, pipeline.decoder):
        module.requires_grad_(False)
    with torch.no_grad():
        encoded = pipeline.encoder(data)
        expected = {"pipeline": pipeline(data), "standalone": pipeline.decoder(encoded),
                    "traced": jit_model(encoded)}
    torch.save({"results": results, "expected": expected}, sys.argv[2])
''')


def test_a_ray_zerocopy_script_with_main_classes_runs_unchanged(cluster, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "out.pt"
    driver = subprocess.run([sys.executable, str(script), cluster.address, str(out)], capture_output=True,
                            text=True, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    saved = torch.load(out)
    results, expected = saved["results"], saved["expected"]
    assert len(results) == NODES + 4
    for case, got in results.items():
        kind = case.split(", ")[-1] if "pipeline" not in case else "pipeline"
        assert bytes_of(got) == bytes_of(expected[kind]), case


# --- classes that exist only in one process, outside Ray ---------------------

LOCAL_SCRIPT = textwrap.dedent('''
    import pickle, sys, torch
    from torch import nn
    import zcwrap

    def make():
        class Local(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(8, 8)
                self.scale = lambda x: x * 3
            def forward(self, x):
                return self.scale(self.linear(x))
        return Local()

    class Pipe:
        def __init__(self):
            self.model = make()
        def __call__(self, x):
            return self.model(x) - 1

    torch.manual_seed(0)
    made = make() if sys.argv[1] == "module" else Pipe()
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = made(x)
    wrapper = zcwrap.ModelWrapper.from_model(made)
    sys.stdout.buffer.write(pickle.dumps((wrapper, x, expected)))
''')

WORKER = textwrap.dedent('''
    import pickle, sys, torch
    import zcwrap
    wrapper, x, expected = pickle.loads(sys.stdin.buffer.read())
    with torch.no_grad():
        got = wrapper.load()(x)
    print(got.numpy().tobytes() == expected.numpy().tobytes(), type(wrapper.load()).__name__)
''')


@pytest.mark.parametrize("what", ["module", "pipeline"])
def test_a_local_class_and_its_lambda_travel_by_value_to_another_process(what, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(LOCAL_SCRIPT)
    env = dict(os.environ, ZCWRAP_STORE=str(tmp_path / "store"), OMP_NUM_THREADS="1")
    driver = subprocess.run([sys.executable, str(script), what], capture_output=True, env=env, timeout=300)
    assert driver.returncode == 0, driver.stderr.decode()[-2000:]
    worker = subprocess.run([sys.executable, "-c", WORKER], input=driver.stdout, capture_output=True, env=env,
                            timeout=300)
    assert worker.returncode == 0, worker.stderr.decode()[-2000:]
    assert worker.stdout.decode().split() == ["True", "Local" if what == "module" else "Pipe"]


def make_local_module():
    class Local(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.linear = nn.Linear(4, 4)
            self.activation = lambda x: x.clamp(min=0)

        def forward(self, x):
            return self.activation(self.linear(x))

    return Local()


def test_by_value_code_is_inside_the_blob_and_refused_under_weights_only():
    model = make_local_module()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    x = torch.randn(3, 4)
    assert bytes_of(reference(wrapper.load(), x)) == bytes_of(reference(model, x))
    # The class's code is in the skeleton (under the blob's checksums), not in the wrapper's pickle.
    imports = zcwrap.describe(wrapper.blob_path)["models"][0]["imports"]
    assert any("cloudpickle" in name for name in imports), imports
    assert b"cloudpickle" not in pickle.dumps(wrapper)
    with pytest.raises(zcwrap.BadModelError) as raised:
        wrapper.unwrap(weights_only=True)
    message = str(raised.value)
    assert "weights_only refuses the module" in message and "pickled by value" in message
    assert "__main__ or inside a function" in message and "\n" not in message


def test_a_class_that_cannot_travel_is_one_error_naming_it_and_why():
    class HoldsALock(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.lock = threading.Lock()

    with pytest.raises(zcwrap.BadModelError) as raised:
        zcwrap.ModelWrapper.from_model(HoldsALock())
    message = str(raised.value)
    assert "HoldsALock" in message and "cannot pickle '_thread.lock' object" in message, message


# --- task mode on the cluster ------------------------------------------------


def test_task_mode_spreads_over_the_nodes_and_maps_their_object_store_read_only(cluster):
    import ray  # the cluster fixture skips where it is missing
    model = Encoder()
    wrapper = zcwrap.ModelWrapper.from_model(model, mode="task", method_names=("probe",))
    refs = list(wrapper.model_refs.values())  # the blob, put into the object store once
    assert len(refs) == 1 and wrapper._ray_ref is refs[0]
    shim = wrapper.load()
    x = torch.randn(4, 16)
    # Concurrent calls, as from a thread pool: one CPU per node, so they spread.
    reports, outputs = [], []

    def call():
        reports.append(shim.probe(refs))
        outputs.append(shim(x))

    threads = [threading.Thread(target=call) for _ in range(3 * NODES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(reports) == len(outputs) == 3 * NODES
    assert {r["node"] for r in reports} == set(n["NodeID"] for n in ray.nodes() if n["Alive"])
    for r in reports:
        assert r["views"] == "ok" and r["mapping"] == "r--s", r
    expected = bytes_of(reference(model, x))
    assert all(bytes_of(out) == expected for out in outputs)


@pytest.mark.parametrize("cache", [False, True])
def test_a_task_unwraps_its_model_unless_cached_in_its_worker(cluster, cache):
    # ray-zerocopy rebuilds the model in every task: no call sees what an
    # earlier one left in it. cache=True keeps it in the worker process, so
    # a warm task calls the very module the first one unwrapped.
    shim = zcwrap.ModelWrapper.for_tasks(Encoder(), method_names=("count",), cache=cache)
    shim = pickle.loads(pickle.dumps(shim))  # pickling keeps the mode, the methods and the cache flag
    by_worker = {}
    for pid, count in [shim.count() for _ in range(2 * NODES + 1)]:
        by_worker.setdefault(pid, []).append(count)
    assert any(len(counts) > 1 for counts in by_worker.values()), by_worker  # Ray reuses its workers
    for counts in by_worker.values():
        assert counts == (list(range(1, len(counts) + 1)) if cache else [1] * len(counts)), by_worker


def test_a_worker_keeps_its_mapping_of_the_blob_between_uncached_tasks(cluster):
    # Each task rebuilds the model (as ray-zerocopy does), but a worker's
    # second task finds the blob's read-only mapping its first task made: the
    # weights sit at the same address, and no page faults in again.
    shim = zcwrap.ModelWrapper.for_tasks(Encoder(), method_names=("address", "count"))
    by_worker = {}
    for pid, address, permissions in [shim.address() for _ in range(2 * NODES + 1)]:
        assert permissions == "r--s"
        by_worker.setdefault(pid, []).append(address)
    assert any(len(addresses) > 1 for addresses in by_worker.values()), by_worker  # Ray reuses its workers
    assert all(len(set(addresses)) == 1 for addresses in by_worker.values()), by_worker
    assert all(count == 1 for _, count in [shim.count() for _ in range(NODES)])  # still a fresh model each task


@pytest.mark.parametrize("how", ["for_tasks", "from_model+load"])
@pytest.mark.parametrize("kind", ["eager", "torchscript"])
def test_task_mode_pipelines_give_the_originals_outputs(cluster, how, kind):
    pipe = Pipeline() if kind == "eager" else scripted_pipeline()
    cls = zcwrap.ModelWrapper if kind == "eager" else zcwrap.JITModelWrapper
    x = torch.randn(5, 16)
    expected = reference(pipe, x)
    rewritten = (cls.for_tasks(pipe) if how == "for_tasks"
                 else cls.from_model(pipe, mode="task").load())
    # A new object of the pipeline's class, its models replaced by shims, its settings kept.
    assert type(rewritten) is Pipeline and rewritten.config == {"scale": 0.5}
    assert all(isinstance(getattr(rewritten, n), zcwrap._tasks.TaskShim) for n in ("encoder", "decoder"))
    assert bytes_of(rewritten(x)) == bytes_of(expected)
    # Through a pickle, as a Ray task or actor would get it.
    assert bytes_of(pickle.loads(pickle.dumps(rewritten))(x)) == bytes_of(expected)


@pytest.mark.parametrize("cls,exposed", [
    ("ModelWrapper", {"__call__"}),
    ("JITModelWrapper", {"__call__", "forward"}),
])
def test_the_methods_a_shim_exposes_are_ray_zerocopys(cluster, cls, exposed):
    model = torch.jit.script(Encoder())
    wrapper = getattr(zcwrap, cls).from_model(model, mode="task")
    shim = wrapper.load()
    assert shim._allowed_methods == exposed
    x = torch.randn(2, 16)
    expected = reference(model, x)
    assert bytes_of(shim(x)) == bytes_of(expected)
    if "forward" in exposed:
        assert bytes_of(shim.forward(x)) == bytes_of(expected)
    else:
        with pytest.raises(AttributeError, match="method_names"):
            shim.forward
    with pytest.raises(AttributeError):
        shim._private
    # method_names names more: those the model has, and __call__ always.
    more = getattr(zcwrap, cls).from_model(Encoder(), mode="task", method_names=("encode", "missing")).load()
    assert more._allowed_methods == {"__call__", "encode"}
    assert bytes_of(more.encode(x)) == bytes_of(reference(Encoder().encode, x))


# --- each public name of ray-zerocopy 0.2 (docs/FROM-RAY-ZEROCOPY.md's table) ----


def check_version():
    assert isinstance(zcwrap.__version__, str) and re.fullmatch(r"\d+\.\d+\.\d+.*", zcwrap.__version__)


def check_model_wrapper():
    model = Encoder()
    wrapper = zcwrap.ModelWrapper.from_model(model)
    x = torch.randn(2, 16)
    assert bytes_of(reference(wrapper.load(), x)) == bytes_of(reference(model, x))


def check_jit_model_wrapper():
    pipe = scripted_pipeline()
    wrapper = zcwrap.JITModelWrapper.from_model(pipe, mode="actor")
    loaded = wrapper.load()
    x = torch.randn(2, 16)
    assert type(loaded) is Pipeline and isinstance(loaded.encoder, torch.jit.ScriptModule)
    assert bytes_of(reference(loaded, x)) == bytes_of(reference(pipe, x))
    # Zero-copy: the weights are views of the blob's read-only shared mapping.
    weight = loaded.encoder.linear.weight
    path, _, permissions, _ = mapping_of(weight.data_ptr())
    assert path == wrapper.blob_path and permissions == "r--s"


def check_from_model():
    for mode in ("actor", "task"):
        wrapper = zcwrap.ModelWrapper.from_model(Pipeline(), mode, None, ("encode",))
        assert wrapper._mode == mode and not wrapper._is_standalone_module
    with pytest.raises(zcwrap.UsageError, match="Invalid mode"):
        zcwrap.ModelWrapper.from_model(Encoder(), mode="tasks")
    # model_attr_names (actor mode): only those are packed; the others travel in the pipeline object.
    pipe = Pipeline()
    wrapper = zcwrap.ModelWrapper.from_model(pipe, mode="actor", model_attr_names=["decoder"])
    assert wrapper.model_names == ["decoder"]
    x = torch.randn(2, 16)
    assert bytes_of(reference(wrapper.load(), x)) == bytes_of(reference(pipe, x))


def check_for_tasks():
    # Needs a Ray job only when called: the shim is made without one.
    shim = zcwrap.ModelWrapper.for_tasks(Encoder())
    assert isinstance(shim, zcwrap._tasks.TaskShim) and shim._allowed_methods == {"__call__"}


def check_load():
    wrapper = zcwrap.ModelWrapper.from_model(Encoder())
    model = wrapper.load(True)  # ray-zerocopy's _use_fast_load: accepted, zero-copy either way
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert zcwrap.JITModelWrapper.from_model(torch.jit.script(Encoder())).load().training is False
    task = zcwrap.ModelWrapper.from_model(Pipeline(), mode="task")
    with pytest.raises(zcwrap.UsageError, match="task-mode"):
        task.load(device="cpu")


def check_serialize_deserialize():
    for mode in ("actor", "task"):
        wrapper = zcwrap.ModelWrapper.from_model(Pipeline(), mode=mode)
        d = wrapper.serialize()
        assert set(d) == {"skeleton", "model_info", "is_standalone_module", "mode"} and d["mode"] == mode
        json.dumps(d["skeleton"])  # plain values: no code, no weights
        again = zcwrap.ModelWrapper.deserialize(**d)
        assert again._mode == mode and again.serialize() == d
    x = torch.randn(2, 16)
    pipe = Pipeline()
    d = zcwrap.JITModelWrapper.from_model(pipe).serialize()
    loaded = zcwrap.JITModelWrapper.deserialize(**d).load()
    assert bytes_of(reference(loaded, x)) == bytes_of(reference(pipe, x))
    with pytest.raises(zcwrap.BadBlobError, match="serialize"):
        zcwrap.ModelWrapper.deserialize(skeleton=object(), model_info={})


def check_model_refs():
    wrapper = zcwrap.ModelWrapper.from_model(Pipeline())
    with pytest.raises(zcwrap.UsageError, match="Ray job"):
        wrapper.model_refs


def check_mode():
    assert zcwrap.ModelWrapper.from_model(Encoder())._mode == "actor"
    assert zcwrap.JITModelWrapper.from_model(torch.jit.script(Encoder()), mode="task")._mode == "task"


def check_is_standalone_module():
    assert zcwrap.ModelWrapper.from_model(Encoder())._is_standalone_module is True
    assert zcwrap.ModelWrapper.from_model(Pipeline())._is_standalone_module is False


def check_pickling():
    for cls in (zcwrap.ModelWrapper, zcwrap.JITModelWrapper):
        for mode in ("actor", "task"):
            wrapper = cls.from_model(Pipeline(), mode=mode, method_names=("encode",))
            again = pickle.loads(pickle.dumps(wrapper))
            assert type(again) is cls and again._mode == mode and again.serialize() == wrapper.serialize()
            assert len(pickle.dumps(wrapper)) < 2000  # the config, never the weights


def check_not_callable():
    for mode in ("actor", "task"):
        wrapper = zcwrap.ModelWrapper.from_model(Encoder(), mode=mode)
        assert not callable(wrapper)
        with pytest.raises(TypeError, match="not callable"):
            wrapper(torch.randn(1, 16))


def check_constructor():
    with pytest.raises(zcwrap.UsageError, match="deserialize"):
        zcwrap.ModelWrapper(Encoder(), {}, True, "actor")


def check_skeleton_and_model_info():
    wrapper = zcwrap.ModelWrapper.from_model(Pipeline(), mode="task")
    assert wrapper._skeleton == wrapper.serialize()["skeleton"]
    assert wrapper._model_info == {"encoder": (None, {"__call__"}), "decoder": (None, {"__call__"})}


def check_docstring():
    wrapper = zcwrap.ModelWrapper.from_model(Pipeline())
    assert wrapper.__doc__.endswith("Wrapped class documentation:\n" + Pipeline.__doc__)


CHECKS = {
    "__version__": check_version,
    "ModelWrapper": check_model_wrapper,
    "JITModelWrapper": check_jit_model_wrapper,
    "from_model": check_from_model,
    "for_tasks": check_for_tasks,
    "load": check_load,
    "serialize": check_serialize_deserialize,
    "deserialize": check_serialize_deserialize,
    "model_refs": check_model_refs,
    "_mode": check_mode,
    "_is_standalone_module": check_is_standalone_module,
    "_skeleton": check_skeleton_and_model_info,
    "_model_info": check_skeleton_and_model_info,
    "ModelWrapper(...)": check_constructor,
    "pickle": check_pickling,
    "wrapper(...)": check_not_callable,
    "__doc__": check_docstring,
}


def names_in_the_table():
    """The first column of the migration page's table: the name in backquotes."""
    with open(DOC) as f:
        return [re.match(r"\| `([^`]+)`", line).group(1) for line in f if line.startswith("| `")]


def test_the_table_lists_exactly_the_names_checked_here():
    assert sorted(names_in_the_table()) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_public_name_behaves_as_ray_zerocopy_documents(name):
    # Outside a Ray job (conftest.py): model_refs is an error, model_info holds None.
    CHECKS[name]()
