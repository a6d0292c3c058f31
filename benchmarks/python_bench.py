"""The Python package against what Python users load models with today.

For resnet50 (torchvision, random weights) and a 1 GiB model (16 Linear
layers of 4096 x 4096, float32), eager and TorchScript, in fresh processes
with every file in the page cache:

  load time   median of --repeat fresh processes, timing only the load (torch
              and zcwrap already imported): zcwrap's pickle.load(wrapper) +
              unwrap(), against torch.load of the pickled module,
              load_state_dict into a freshly built module (torch.load of
              the state_dict, plain and with mmap=True, assign=True), and
              torch.jit.load for TorchScript;
  memory      summed PSS (/proc/PID/smaps_rollup) of --workers processes that
              each load the model and read every weight, per method; and of
              as many that only import torch, torchvision and zcwrap (the
              per-process baseline).

Run it with the torch2 lane's Python and the package on PYTHONPATH (run.sh
does); results go to OUT/python.json and a table on stdout:

    PYTHONPATH=build-python/site $VENV/bin/python benchmarks/python_bench.py OUT
"""

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import torch
from torch import nn

import zcwrap

import held_workers  # benchmarks/, beside this script

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class Big(nn.Module):
    """16 Linear layers of 4096 x 4096 float32: 1 GiB of weights."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(16)])

    def forward(self, x):
        return self.layers(x)


def make_resnet50():
    import torchvision

    return torchvision.models.resnet50()


def make_big():
    return Big()


# Runs in a fresh process: prints the seconds the load took, then, with
# --hold, reads every weight, prints "ready" and waits for stdin to close.
WORKER = textwrap.dedent("""
    import pickle, sys, time
    import torch, torchvision, zcwrap  # a server has its model's code imported before it loads weights
    sys.path.insert(0, sys.argv[4])
    import python_bench
    method, path, hold = sys.argv[1], sys.argv[2], sys.argv[3] == "hold"
    start = time.perf_counter()
    if method == "zcwrap":
        with open(path, "rb") as f:
            model = pickle.load(f).unwrap()
    elif method == "torch.load":
        model = torch.load(path, weights_only=False)
    elif method.startswith("load_state_dict"):
        model = getattr(python_bench, sys.argv[5])()
        mmap = method.endswith("mmap")
        model.load_state_dict(torch.load(path, mmap=mmap, weights_only=True), assign=mmap)
    elif method == "torch.jit.load":
        model = torch.jit.load(path)
    elif method == "nothing":  # the baseline: a worker with its imports and no model
        model = torch.nn.Module()
    seconds = time.perf_counter() - start
    print(f"{seconds:.6f}", flush=True)
    if hold:
        total = 0.0
        for t in model.state_dict().values():
            total += float(t.float().sum())
        print("ready", flush=True)
        sys.stdin.read()
""")


def spawn(method, path, maker, hold):
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen([sys.executable, "-c", WORKER, method, path, "hold" if hold else "once", here, maker],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def load_seconds(method, path, maker, repeat):
    times = []
    for _ in range(repeat):
        worker = spawn(method, path, maker, hold=False)
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"{method} {path}: worker failed ({worker.returncode})")
        times.append(float(out.split()[0]))
    return statistics.median(times)


def summed_pss(method, path, maker, workers):
    return held_workers.summed_pss(lambda: spawn(method, path, maker, hold=True), workers, method)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for python.json")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per load-time figure (median)")
    parser.add_argument("--workers", type=int, default=8, help="processes for the memory figure")
    parser.add_argument("--models", default="resnet50,big", help="resnet50, big (1 GiB), or both")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="zcwrap-python-bench-")  # on disk: /dev/shm may be too small
    os.environ["ZCWRAP_STORE"] = work
    rows = []
    # Per-process overhead: the same workers, their imports done, no model.
    baseline = summed_pss("nothing", "", "make_big", args.workers)
    print(f"baseline: {args.workers} workers with no model, PSS {baseline / 2**20:.0f} MiB", flush=True)
    for name in args.models.split(","):
        maker = {"resnet50": "make_resnet50", "big": "make_big"}[name]
        torch.manual_seed(0)
        # From the module python_bench, not __main__: workers unpickle the
        # eager model by its class's module.
        import python_bench

        model = getattr(python_bench, maker)().eval()
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        files = {
            "module": os.path.join(work, f"{name}.module.pt"),
            "state": os.path.join(work, f"{name}.state.pt"),
            "script": os.path.join(work, f"{name}.script.pt"),
        }
        torch.save(model, files["module"])
        torch.save(model.state_dict(), files["state"])
        script = torch.jit.script(model)
        torch.jit.save(script, files["script"])
        for kind, source in (("eager", model), ("torchscript", script)):
            wrapper_path = os.path.join(work, f"{name}.{kind}.wrapper")
            with open(wrapper_path, "wb") as f:
                pickle.dump(zcwrap.ModelWrapper.from_model(source), f)
            methods = [("zcwrap", wrapper_path)]
            if kind == "eager":
                methods += [("torch.load", files["module"]), ("load_state_dict", files["state"]),
                            ("load_state_dict mmap", files["state"])]
            else:
                methods += [("torch.jit.load", files["script"])]
            for method, path in methods:
                started = time.perf_counter()
                seconds = load_seconds(method, path, maker, args.repeat)
                pss = summed_pss(method, path, maker, args.workers)
                rows.append({"model": name, "kind": kind, "method": method, "weights_bytes": weights,
                             "load_seconds_median": seconds, "workers": args.workers, "summed_pss_bytes": pss})
                print(f"{name:9} {kind:11} {method:22} load {seconds * 1e3:9.1f} ms   "
                      f"{args.workers} workers' PSS {pss / 2**20:8.0f} MiB   ({time.perf_counter() - started:.0f} s)",
                      flush=True)
                with open(os.path.join(args.out, "python.json"), "w") as f:
                    json.dump({"torch": torch.__version__, "zcwrap": zcwrap.__version__, "cpus": os.cpu_count(),
                               "repeat": args.repeat, "baseline_pss_bytes": baseline, "rows": rows}, f, indent=1)
    subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
