"""torch.export programs: zcwrap's unwrap against torch.export.load.

For torchvision's resnet50 (random weights, exported with torch.export.export
for one 1x3x224x224 input), in fresh processes with every file in the page
cache (torch, torchvision, zcwrap and torch's export deserializer already
imported):

  load        median of --repeat processes: torch.export.load of the .pt2
              that torch.export.save wrote, against zcwrap's
              pickle.load(wrapper) + unwrap() of the same program;
  module()    then ep.module() (the runnable GraphModule); and the process's
              CPU time over both (less sensitive than wall time to other
              work on the machine);
  first call  then its first call, under torch.no_grad(), on one thread;
  memory      summed PSS (/proc/PID/smaps_rollup) of --workers processes
              that each load the program and run it once, and of as many
              that only import (the per-process baseline).

Run it with the torch2 lane's Python and the package on PYTHONPATH:

    PYTHONPATH=build-python/site $VENV/bin/python benchmarks/export_bench.py OUT [--models resnet50,resnet18]
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

import zcwrap

import held_workers  # benchmarks/, beside this script

WORKER = textwrap.dedent("""
    import pickle, sys, time
    import torch, torchvision, zcwrap
    import torch._export.serde.serialize  # both methods need it: imported before the clock starts
    torch.set_num_threads(1)  # the first call's time, without threads fighting over a shared machine
    method, path, hold = sys.argv[1], sys.argv[2], sys.argv[3] == "hold"
    x = torch.randn(1, 3, 224, 224)
    start, cpu = time.perf_counter(), time.process_time()
    if method == "zcwrap":
        with open(path, "rb") as f:
            ep = pickle.load(f).unwrap()
    elif method == "torch.export.load":
        ep = torch.export.load(path)
    loaded = time.perf_counter()
    if method != "nothing":
        module = ep.module()
        made, cpu = time.perf_counter(), time.process_time() - cpu
        with torch.no_grad():
            module(x)
        ran = time.perf_counter()
        print(f"{loaded - start:.6f} {made - loaded:.6f} {ran - made:.6f} {cpu:.6f}", flush=True)
    else:
        print("0 0 0 0", flush=True)
    if hold:
        print("ready", flush=True)
        sys.stdin.read()
""")


def spawn(method, path, hold):
    return subprocess.Popen([sys.executable, "-c", WORKER, method, path, "hold" if hold else "once"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def times(method, path, repeat):
    rows = []
    for _ in range(repeat):
        worker = spawn(method, path, hold=False)
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"{method} {path}: worker failed ({worker.returncode})")
        rows.append([float(v) for v in out.split()[:4]])
    return [statistics.median(column) for column in zip(*rows)]


def summed_pss(method, path, workers):
    return held_workers.summed_pss(lambda: spawn(method, path, hold=True), workers, method)


def main():
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for export.json")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per time (median)")
    parser.add_argument("--workers", type=int, default=8, help="processes for the memory figure (0: none)")
    parser.add_argument("--models", default="resnet50", help="comma-separated torchvision model names")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="zcwrap-export-bench-")
    os.environ["ZCWRAP_STORE"] = work
    rows = []
    baseline = summed_pss("nothing", "", args.workers) if args.workers else 0
    if args.workers:
        print(f"baseline: {args.workers} workers with no model, PSS {baseline / 2**20:.0f} MiB", flush=True)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        ep = torch.export.export(model, (torch.randn(1, 3, 224, 224),))
        weights = sum(t.numel() * t.element_size() for t in ep.state_dict.values())
        pt2 = os.path.join(work, f"{name}.pt2")
        torch.export.save(ep, pt2)
        started = time.perf_counter()
        wrapper = zcwrap.ModelWrapper.from_model(ep)
        pack_seconds = time.perf_counter() - started
        wrapper_path = os.path.join(work, f"{name}.wrapper")
        with open(wrapper_path, "wb") as f:
            pickle.dump(wrapper, f)
        print(f"{name}: {weights / 2**20:.1f} MiB of weights; .pt2 {os.path.getsize(pt2) / 2**20:.1f} MiB, "
              f"blob {os.path.getsize(wrapper.blob_path) / 2**20:.1f} MiB (packed in {pack_seconds:.2f} s)", flush=True)
        for method, path in (("torch.export.load", pt2), ("zcwrap", wrapper_path)):
            load, module, first, cpu = times(method, path, args.repeat)
            pss = summed_pss(method, path, args.workers) if args.workers else 0
            rows.append({"model": name, "method": method, "weights_bytes": weights, "load_seconds": load,
                         "module_seconds": module, "ready_cpu_seconds": cpu,
                         "first_call_seconds": first, "workers": args.workers,
                         "summed_pss_bytes": pss})
            print(f"{name:9} {method:18} load {load * 1e3:7.1f} ms  module() {module * 1e3:6.1f} ms  "
                  f"(CPU time of both {cpu * 1e3:6.1f} ms)  first call {first * 1e3:6.1f} ms  {args.workers} workers' PSS {pss / 2**20:6.0f} MiB", flush=True)
        with open(os.path.join(args.out, "export.json"), "w") as f:
            json.dump({"torch": torch.__version__, "zcwrap": zcwrap.__version__, "cpus": os.cpu_count(),
                       "repeat": args.repeat, "baseline_pss_bytes": baseline, "rows": rows}, f, indent=1)
    subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
