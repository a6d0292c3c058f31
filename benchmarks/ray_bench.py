"""zcwrap under Ray, side by side with what Ray users pick instead.

One Ray node (this machine). For each model (resnet50, a 1 GiB stack of
Linear layers, a transformers BERT-base encoder built from its config), each
kind (eager nn.Module, TorchScript) and each N in --actors, three ways to
give N actors the model:

  plain        every actor torch.load()s / torch.jit.load()s its own copy
               from a file (page cache warm)
  ray-zerocopy ray-zerocopy 0.2.0: ModelWrapper (eager) or JITModelWrapper
               (TorchScript), from_model(mode="actor"), load() in the actor
  zcwrap       zcwrap.ModelWrapper.from_model(), unwrap() in the actor (the
               blob travels through Ray's object store)

Measured in one run:
  start-up     from asking Ray for the N actors to each actor's first result
               (median and max over the N actors), each actor importing
               torchvision and transformers first; and the part of it each
               actor spent in the load itself (load(), unwrap())
  PSS          summed /proc/PID/smaps_rollup Pss of the N actors after their
               first result (every weight read)
  throughput   rows/s of one fixed map_batches job over an actor pool of N,
               the wrapper passed through fn_constructor_kwargs (start-up
               included: the job is what a user runs)

Needs the package on PYTHONPATH and ray-zerocopy importable (benchmarks/run.sh
installs it into build-bench/peers, never into the project's environment):

    PYTHONPATH=build-python/site:build-bench/peers $VENV/bin/python benchmarks/ray_bench.py OUT
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import ray
import torch

import zcwrap
from python_bench import Big  # the 1 GiB model, shared with python_bench.py

HERE = os.path.dirname(os.path.abspath(__file__))


def make(name):
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224)
    if name == "big":
        return Big().eval(), torch.randn(1, 4096)
    if name == "bert":
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(torchscript=True)).eval(), torch.randint(0, 30000, (1, 32))
    raise ValueError(name)


def to_script(model, example):
    with torch.no_grad():
        return torch.jit.trace(model, (example,), check_trace=False)


def first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out


def load(method, handle):
    if method == "nothing":  # the per-process baseline: the model's library imported, no model
        if handle == "resnet50":
            import torchvision  # noqa: F401
        elif handle == "bert":
            import transformers  # noqa: F401
        return lambda x: x
    if method == "plain":
        kind, path = handle
        return torch.jit.load(path) if kind == "torchscript" else torch.load(path, weights_only=False)
    if method == "ray-zerocopy":
        return handle.load()
    return handle.unwrap(device="cpu")


@ray.remote(num_cpus=0)
class Worker:
    def __init__(self, method, handle):
        # The models' code first, as a server has it (unpickling an eager
        # model imports its library): the load below is then the load alone.
        import torchvision  # noqa: F401
        import transformers  # noqa: F401

        started = time.perf_counter()
        self.model = load(method, handle)
        self.load_s = time.perf_counter() - started

    def load_seconds(self):
        return self.load_s

    def first(self, x):
        with torch.no_grad():
            out = first_tensor(self.model(x))
        for t in getattr(self.model, "state_dict", dict)().values():  # every weight read once, as a server would
            float(t.float().sum())
        return out.shape[0]

    def pss(self):
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


class Infer:
    def __init__(self, method, handle):
        self.model = load(method, handle)

    def __call__(self, batch):
        with torch.no_grad():
            out = first_tensor(self.model(torch.as_tensor(batch["x"])))
        return {"y": out.reshape(out.shape[0], -1)[:, :4].numpy()}


def handles(kind, model, script, work, name):
    import ray_zerocopy

    source = script if kind == "torchscript" else model
    path = os.path.join(work, f"{name}.{kind}.pt")
    if kind == "torchscript":
        torch.jit.save(script, path)
        rzc = ray_zerocopy.JITModelWrapper.from_model(script, mode="actor")
    else:
        torch.save(model, path)
        rzc = ray_zerocopy.ModelWrapper.from_model(model, mode="actor")
    return {"plain": (kind, path), "ray-zerocopy": rzc, "zcwrap": zcwrap.ModelWrapper.from_model(source),
            "nothing": name}


def startup_and_pss(method, handle, n, x):
    started = time.perf_counter()
    actors = [Worker.remote(method, handle) for _ in range(n)]
    try:
        pending = {a.first.remote(x): a for a in actors}
        done_at = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ray.get(ready[0])
            done_at.append(time.perf_counter() - started)
            pending.pop(ready[0])
        pss = sum(ray.get([a.pss.remote() for a in actors]))
        loads = ray.get([a.load_seconds.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
    return statistics.median(done_at), max(done_at), pss, statistics.median(loads), max(loads)


def throughput(method, handle, n, x, rows):
    data = np.repeat(x.numpy(), rows, axis=0)
    ds = ray.data.from_items([{"x": row} for row in data])
    started = time.perf_counter()
    out = ds.map_batches(Infer, fn_constructor_args=(method, handle), batch_size=max(1, rows // (2 * n)),
                         compute=ray.data.ActorPoolStrategy(size=n), num_cpus=0.01).take_all()
    seconds = time.perf_counter() - started
    assert len(out) == rows
    return rows / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for ray.json")
    parser.add_argument("--models", default="resnet50,big,bert")
    parser.add_argument("--kinds", default="eager,torchscript")
    parser.add_argument("--actors", default="2,4,8")
    parser.add_argument("--methods", default="plain,ray-zerocopy,zcwrap",
                        help="also: nothing (actors that import the model's library and load no model)")
    parser.add_argument("--rows", type=int, default=32, help="rows of the map_batches job")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="zcwrap-ray-bench-")
    os.environ["ZCWRAP_STORE"] = work
    # Workers find the package, ray-zerocopy and this file as the driver does.
    path = os.pathsep.join([HERE] + [p for p in sys.path if p and os.path.isdir(p)])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=4 << 30, runtime_env={"env_vars": {"PYTHONPATH": path, "ZCWRAP_STORE": work}})
    rows = []
    import ray_zerocopy

    # Warm-up, not measured: the first actors of a fresh Ray pay for its
    # worker pool; each row below then starts from the same state.
    warm_model, warm_x = make("resnet50")
    startup_and_pss("zcwrap", zcwrap.ModelWrapper.from_model(warm_model), max(int(v) for v in args.actors.split(",")),
                    warm_x)

    for name in args.models.split(","):
        model, x = make(name)
        script = to_script(model, x) if "torchscript" in args.kinds else None
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        for kind in args.kinds.split(","):
            ways = handles(kind, model, script, work, name)
            for turn, n in enumerate(int(v) for v in args.actors.split(",")):
                methods = args.methods.split(",")
                methods = methods[turn % len(methods):] + methods[:turn % len(methods)]  # no method always first
                for method in methods:
                    t0 = time.perf_counter()
                    row = {"model": name, "kind": kind, "actors": n, "method": method, "weights_bytes": weights}
                    try:
                        median, worst, pss, load_median, load_max = startup_and_pss(method, ways[method], n, x)
                        rate = throughput(method, ways[method], n, x, args.rows)
                    except ray.exceptions.RayError as e:  # e.g. Ray's OOM killer: recorded, and the run goes on
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                        rows.append(row)
                        print(f"{name:8} {kind:11} N={n} {method:12} failed: {row['error']}", flush=True)
                        time.sleep(5)  # let Ray reap the killed workers
                    else:
                        row.update({"startup_median_s": median, "startup_max_s": worst, "load_median_s": load_median,
                                    "load_max_s": load_max, "summed_pss_bytes": pss, "rows_per_s": rate})
                        rows.append(row)
                        print(f"{name:8} {kind:11} N={n} {method:12} start-up {median:6.2f} / {worst:6.2f} s   "
                              f"load {load_median * 1e3:7.1f} / {load_max * 1e3:7.1f} ms   "
                              f"PSS {pss / 2**20:8.0f} MiB   {rate:7.2f} rows/s   ({time.perf_counter() - t0:.0f} s)",
                              flush=True)
                    with open(os.path.join(args.out, "ray.json"), "w") as f:
                        json.dump({"torch": torch.__version__, "ray": ray.__version__, "zcwrap": zcwrap.__version__,
                                   "ray_zerocopy": ray_zerocopy.__version__ if hasattr(ray_zerocopy, "__version__")
                                   else "0.2.0", "cpus": os.cpu_count(), "rows": rows}, f, indent=1)
            del ways
    ray.shutdown()
    # Ray Data's Prometheus poller (a daemon thread) would log into closed streams at exit.
    logging.getLogger("ray.data._internal.usage").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
