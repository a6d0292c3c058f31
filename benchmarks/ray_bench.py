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
               actor spent in the load itself (load(), unwrap()). Taken
               --repeat times per row, the three ways interleaved in an
               order that turns each round, each after the node is quiet
               again (the last row's processes gone, the CPUs idle): the
               table gives the median of the rounds
  PSS          summed /proc/PID/smaps_rollup Pss of the N actors after their
               first result (every weight read)
  overhead     what a process costs besides the weights, two ways: N actors
               that import the same libraries and load no model ("nothing"),
               and the plain actors' summed PSS less their N private copies
               of the weights (this one includes the forward pass's working
               memory)
  throughput   rows/s of one fixed map_batches job over an actor pool of N,
               the wrapper passed through fn_constructor_kwargs (start-up
               included: the job is what a user runs); once per row

With --task-mode, ray-zerocopy's task mode instead (for_tasks(model): each
call of the returned model runs one Ray task that loads it from the object
store zero-copy and calls it), for each model of --models (eager), three
ways: ray-zerocopy's ModelWrapper.for_tasks, zcwrap's (each task unwraps
the model, as ray-zerocopy's does), and zcwrap's with cache=True (each
worker keeps the model for its next tasks). On one node with --task-cpus
CPUs, its worker pool started first (each worker importing torch,
torchvision, zcwrap and ray-zerocopy):
  wrap         for_tasks() in the driver (ray-zerocopy puts the weights into
               the object store here; zcwrap packs the blob, and puts it at
               the first call)
  first call   the first call after for_tasks (blob put included for zcwrap)
  warm call    median latency of --task-calls sequential calls
  throughput   calls/s of --task-cpus callers (threads) making
               --task-calls calls each
  PSS          summed smaps_rollup Pss of this job's Ray workers after the
               calls

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

    def pid(self):
        return os.getpid()

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


def cpu_busy(interval):
    """The fraction of all CPUs' time spent busy over the next interval seconds."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def quiesce(pids=(), busy=0.15, timeout=90):
    """Waits until pids have exited and the CPUs have been idle (under busy)
    for two half-second windows in a row: each measurement then starts from
    the same state, not while the last one's processes are still dying.
    Returns the seconds waited."""
    started = time.perf_counter()
    for pid in pids:
        while time.perf_counter() - started < timeout:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    calm = 0
    while calm < 2 and time.perf_counter() - started < timeout:
        calm = calm + 1 if cpu_busy(0.5) < busy else 0
    return time.perf_counter() - started


def startup_and_pss(method, handle, n, x):
    started = time.perf_counter()
    actors = [Worker.remote(method, handle) for _ in range(n)]
    pids = []
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
        pids = ray.get([a.pid.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
        quiesce(pids)
    return {"startup_median_s": statistics.median(done_at), "startup_max_s": max(done_at),
            "load_median_s": statistics.median(loads), "load_max_s": max(loads), "summed_pss_bytes": pss}


def throughput(method, handle, n, x, rows):
    data = np.repeat(x.numpy(), rows, axis=0)
    ds = ray.data.from_items([{"x": row} for row in data])
    started = time.perf_counter()
    out = ds.map_batches(Infer, fn_constructor_args=(method, handle), batch_size=max(1, rows // (2 * n)),
                         compute=ray.data.ActorPoolStrategy(size=n), num_cpus=0.01).take_all()
    seconds = time.perf_counter() - started
    assert len(out) == rows
    return rows / seconds


def job_worker_pids(marker):
    """PIDs of the Ray worker processes whose environment holds `marker`
    (this job's ZCWRAP_STORE, set through its runtime_env)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::"):
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        pids.append(int(entry))
    return pids


def pss_of(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except OSError:
        return 0


@ray.remote
def start_worker():
    """Run once per CPU before measuring: a worker with the libraries imported."""
    import ray_zerocopy  # noqa: F401
    import torchvision  # noqa: F401

    import zcwrap  # noqa: F401

    time.sleep(1)  # hold the CPU, so that each call lands on its own worker
    return os.getpid()


def concurrent_calls(wrapped, x, callers, calls):
    """`callers` threads each making `calls` calls; returns the seconds."""
    import threading

    def caller():
        for _ in range(calls):
            wrapped(x)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def task_row(method, model, x, calls, callers, marker, nodes):
    import ray_zerocopy

    quiesce()
    started = time.perf_counter()
    if method == "ray-zerocopy":
        wrapped = ray_zerocopy.ModelWrapper.for_tasks(model)
    else:
        wrapped = zcwrap.ModelWrapper.for_tasks(model, cache=method == "zcwrap cache=True")
    wrap_s = time.perf_counter() - started
    started = time.perf_counter()
    out = wrapped(x)
    first_s = time.perf_counter() - started
    # The first call on every other node (one CPU each: concurrent calls
    # spread), each fetching the object into its node's store.
    other_nodes_s = concurrent_calls(wrapped, x, nodes, 1) if nodes > 1 else None
    warm = []
    for _ in range(calls):
        started = time.perf_counter()
        wrapped(x)
        warm.append(time.perf_counter() - started)

    per_s = callers * calls / concurrent_calls(wrapped, x, callers, calls)
    pss = sum(pss_of(pid) for pid in job_worker_pids(marker))
    del wrapped
    return {"wrap_s": wrap_s, "first_call_s": first_s, "first_calls_on_every_node_s": other_nodes_s,
            "warm_call_median_s": statistics.median(warm), "calls_per_s": per_s,
            "summed_worker_pss_bytes": pss, "output": bytes_of_tensor(out)}


def bytes_of_tensor(t):
    return first_tensor(t).detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def task_main(args):
    import ray_zerocopy

    work = tempfile.mkdtemp(prefix="zcwrap-ray-task-bench-")
    os.environ["ZCWRAP_STORE"] = work
    path = os.pathsep.join([HERE] + [p for p in sys.path if p and os.path.isdir(p)])
    env = {"env_vars": {"PYTHONPATH": path, "ZCWRAP_STORE": work}}
    cluster = None
    if args.task_nodes > 1:
        # Nodes of one CPU each, every one with its own raylet and object
        # store (ray.cluster_utils, as the test suites' cluster): a call that
        # lands on a node fetches the object into that node's store.
        from ray.cluster_utils import Cluster

        store = (4 << 30) // args.task_nodes
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
        for _ in range(1, args.task_nodes):
            cluster.add_node(num_cpus=1, object_store_memory=store)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, runtime_env=env)
        cluster.wait_for_nodes()
        args.task_cpus = args.task_nodes
    else:
        ray.init(num_cpus=args.task_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=4 << 30,
                 runtime_env=env)
    marker = f"ZCWRAP_STORE={work}"
    workers = set(ray.get([start_worker.remote() for _ in range(args.task_cpus)]))
    rows = []
    methods = ["ray-zerocopy", "zcwrap", "zcwrap cache=True"]
    for name in args.models.split(","):
        model, x = make(name)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        outputs = {}
        for method in methods:
            row = {"model": name, "method": method, "weights_bytes": weights, "cpus": args.task_cpus,
                   "nodes": args.task_nodes, "calls": args.task_calls,
                   **task_row(method, model, x, args.task_calls, args.task_cpus, marker, args.task_nodes)}
            outputs[method] = row.pop("output")
            rows.append(row)
            others = row["first_calls_on_every_node_s"]
            print(f"{name:8} {method:18} wrap {row['wrap_s']:6.2f} s  first call {row['first_call_s'] * 1e3:8.1f} ms  "
                  + (f"first calls on {args.task_nodes} nodes {others * 1e3:8.1f} ms  " if others else "") +
                  f"warm call {row['warm_call_median_s'] * 1e3:8.1f} ms  {row['calls_per_s']:6.2f} calls/s  "
                  f"worker PSS {row['summed_worker_pss_bytes'] / 2**20:7.0f} MiB", flush=True)
        for row in rows[-len(methods):]:
            row["same_output_as_ray_zerocopy"] = outputs[row["method"]] == outputs["ray-zerocopy"]
        with open(os.path.join(args.out, f"ray_tasks{'_nodes' if args.task_nodes > 1 else ''}.json"), "w") as f:
            json.dump({"torch": torch.__version__, "ray": ray.__version__, "zcwrap": zcwrap.__version__,
                       "ray_zerocopy": getattr(ray_zerocopy, "__version__", "0.2.0"), "workers": len(workers),
                       "rows": rows}, f, indent=1)
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for ray.json")
    parser.add_argument("--models", default="resnet50,big,bert")
    parser.add_argument("--kinds", default="eager,torchscript")
    parser.add_argument("--actors", default="2,4,8")
    parser.add_argument("--methods", default="plain,ray-zerocopy,zcwrap")
    parser.add_argument("--rows", type=int, default=32, help="rows of the map_batches job")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the start-up and PSS measurement per row")
    parser.add_argument("--task-mode", action="store_true", help="measure ray-zerocopy's task mode instead")
    parser.add_argument("--task-cpus", type=int, default=2, help="task mode: the node's CPUs (and callers)")
    parser.add_argument("--task-calls", type=int, default=10, help="task mode: calls per measurement")
    parser.add_argument("--task-nodes", type=int, default=1,
                        help="task mode: more than 1 starts that many one-CPU nodes, each with its own object store")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.task_mode:
        task_main(args)
        return
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
    actor_counts = [int(v) for v in args.actors.split(",")]
    methods = args.methods.split(",")
    warm_model, warm_x = make("resnet50")
    startup_and_pss("zcwrap", zcwrap.ModelWrapper.from_model(warm_model), max(actor_counts), warm_x)

    def save():
        with open(os.path.join(args.out, "ray.json"), "w") as f:
            json.dump({"torch": torch.__version__, "ray": ray.__version__, "zcwrap": zcwrap.__version__,
                       "ray_zerocopy": getattr(ray_zerocopy, "__version__", "0.2.0"), "cpus": os.cpu_count(),
                       "repeat": args.repeat, "baselines": baselines, "rows": rows}, f, indent=1)

    def summary(runs):
        keys = ("startup_median_s", "startup_max_s", "load_median_s", "load_max_s", "summed_pss_bytes")
        return {k: statistics.median(r[k] for r in runs) for k in keys}

    # The per-process baseline: every actor imports the same libraries
    # whatever it loads, so one per N serves every model.
    baselines = {}
    for n in actor_counts:
        quiesce()
        baselines[n] = summary([startup_and_pss("nothing", "nothing", n, torch.zeros(1)) for _ in range(args.repeat)])
        print(f"no model   N={n} PSS {baselines[n]['summed_pss_bytes'] / 2**20:8.0f} MiB", flush=True)
    save()

    for name in args.models.split(","):
        model, x = make(name)
        script = to_script(model, x) if "torchscript" in args.kinds else None
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        for kind in args.kinds.split(","):
            ways = handles(kind, model, script, work, name)
            for turn, n in enumerate(actor_counts):
                t0 = time.perf_counter()
                runs = {m: [] for m in methods}
                failed = {}
                for r in range(args.repeat):
                    k = (turn + r) % len(methods)
                    for method in methods[k:] + methods[:k]:  # no way always first
                        if method in failed:
                            continue
                        try:
                            runs[method].append(startup_and_pss(method, ways[method], n, x))
                        except ray.exceptions.RayError as e:  # e.g. Ray's OOM killer: recorded, and the run goes on
                            failed[method] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                            quiesce(timeout=30)
                for method in methods:
                    row = {"model": name, "kind": kind, "actors": n, "method": method, "weights_bytes": weights}
                    if method in failed:
                        row["error"] = failed[method]
                        print(f"{name:8} {kind:11} N={n} {method:12} failed: {row['error']}", flush=True)
                    else:
                        quiesce()
                        row.update(summary(runs[method]))
                        row["runs"] = runs[method]
                        try:
                            row["rows_per_s"] = throughput(method, ways[method], n, x, args.rows)
                        except ray.exceptions.RayError as e:
                            row["rows_per_s"] = float("nan")
                            row["error"] = f"map_batches: {type(e).__name__}: {str(e).splitlines()[0]}"
                        print(f"{name:8} {kind:11} N={n} {method:12} start-up {row['startup_median_s']:6.2f} / "
                              f"{row['startup_max_s']:6.2f} s (rounds: "
                              + " ".join(f"{r['startup_median_s']:.2f}" for r in runs[method]) + ")   "
                              f"load {row['load_median_s'] * 1e3:7.1f} / {row['load_max_s'] * 1e3:7.1f} ms   "
                              f"PSS {row['summed_pss_bytes'] / 2**20:8.0f} MiB   {row['rows_per_s']:7.2f} rows/s",
                              flush=True)
                    rows.append(row)
                save()
                print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            del ways
    ray.shutdown()
    # Ray Data's Prometheus poller (a daemon thread) would log into closed streams at exit.
    logging.getLogger("ray.data._internal.usage").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
