#!/usr/bin/env python3
"""AOTInductor through zcwrap against torch's own loader (issue 22).

Usage: aoti_bench.py --build BUILD --models DIR [--runs N] [--workers N] [--only NAME ...]

DIR holds what make_aoti_models.py writes (NAME.pt2, NAME_mmap.pt2, NAME.pt,
NAME_in.pt). For each model, side by side in one run, each measurement a
fresh process of BUILD/benchmarks/aoti_bench_worker (page cache warm, the
.so already placed in the store by one earlier unwrap):

  time until ready and to the first result, median of --runs, for
    zcwrap AOTI        ModelWrapper::open(NAME.zcb).unwrap() of the packed .pt2
    loader             torch::inductor::AOTIModelPackageLoader(NAME.pt2)
    loader mmap        the same, of NAME_mmap.pt2 (aot_inductor.force_mmap_weights)
    zcwrap TorchScript ModelWrapper::open(NAME_ts.zcb).unwrap() of NAME.pt
    torch::jit::load   NAME.pt
  summed PSS of --workers workers of zcwrap AOTI and of the loader, each
  after its first result, and of as many workers that load nothing (LibTorch's
  own cost per process), for the goal "<= 1.15 x weights + workers x the
  per-process overhead".

Writes DIR/aoti_results.json and prints a Markdown table. Uses
$ZCWRAP_STORE (default /dev/shm/zcwrap-<uid>) for the placed .so.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def worker(build, mode, path, inp, hold=False):
    cmd = [os.path.join(build, "benchmarks", "aoti_bench_worker"), mode, path, inp] + (["--hold"] if hold else [])
    if hold:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    line = json.loads(r.stdout.strip().splitlines()[-1])
    if "error" in line:
        raise RuntimeError(f"{mode} {path}: {line['error']}")
    return line


def pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss")


def summed_pss(build, mode, path, inp, n):
    procs = [worker(build, mode, path, inp, hold=True) for _ in range(n)]
    try:
        for p in procs:
            line = json.loads(p.stdout.readline())
            if "error" in line:
                raise RuntimeError(f"{mode}: {line['error']}")
        time.sleep(0.5)
        return sum(pss_kb(p.pid) for p in procs) * 1024
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=["resnet50", "stack_1g"])
    args = ap.parse_args()
    zcwrap = os.path.join(args.build, "cli", "zcwrap")
    results = {"runs": args.runs, "workers": args.workers, "models": {}}
    for name in args.only:
        d = args.models
        pt2, mmap_pt2 = os.path.join(d, f"{name}.pt2"), os.path.join(d, f"{name}_mmap.pt2")
        pt, inp = os.path.join(d, f"{name}.pt"), os.path.join(d, f"{name}_in.pt")
        blob, ts_blob = os.path.join(d, f"{name}.zcb"), os.path.join(d, f"{name}_ts.zcb")
        start = time.time()
        run([zcwrap, "pack", pt2, "-o", blob, "--quiet"])
        pack_aoti = time.time() - start
        run([zcwrap, "pack", pt, "-o", ts_blob, "--quiet"])
        weights = json.loads(run([zcwrap, "inspect", "--json", blob]).stdout)["storages"]["bytes"]
        # The first unwrap on this machine places the .so in the store.
        store = os.environ.get("ZCWRAP_STORE") or f"/dev/shm/zcwrap-{os.geteuid()}"
        before = set(os.listdir(store)) if os.path.isdir(store) else set()
        first_place = worker(args.build, "zcwrap", blob, inp)
        placed = sorted(set(os.listdir(store)) - before)
        modes = [("zcwrap AOTI", "zcwrap", blob), ("loader", "loader", pt2), ("loader mmap", "loader", mmap_pt2),
                 ("zcwrap TorchScript", "zcwrap", ts_blob), ("torch::jit::load", "jit", pt)]
        samples = {label: [] for label, _, _ in modes}
        checks = {}
        for _ in range(args.runs + 1):  # the first round warms the page cache, and is dropped
            for label, mode, path in modes:
                line = worker(args.build, mode, path, inp)
                samples[label].append(line)
                checks[label] = line["checksum"]
        table = {}
        for label, lines in samples.items():
            lines = lines[1:]
            table[label] = {"ready_ms": statistics.median(x["ready_ms"] for x in lines),
                            "first_ms": statistics.median(x["first_ms"] for x in lines),
                            "checksum": checks[label]}
        pss = {"zcwrap AOTI": summed_pss(args.build, "zcwrap", blob, inp, args.workers),
               "loader": summed_pss(args.build, "loader", pt2, inp, args.workers),
               "none": summed_pss(args.build, "none", pt2, inp, args.workers)}
        results["models"][name] = {"weights": weights, "pack_aoti_s": pack_aoti,
                                   "first_unwrap_placing_so_ms": first_place["ready_ms"], "placed": placed,
                                   "times": table, "pss": pss,
                                   "pss_goal": 1.15 * weights + pss["none"]}
    with open(os.path.join(args.models, "aoti_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    for name, r in results["models"].items():
        print(f"\n### {name}: {r['weights'] / 2**20:.1f} MiB of weights (pack {r['pack_aoti_s']:.1f} s; "
              f"first unwrap on the machine, placing the .so: {r['first_unwrap_placing_so_ms']:.0f} ms)\n")
        print("| load | ready (ms) | first result (ms) | output checksum |")
        print("| --- | ---: | ---: | ---: |")
        for label, t in r["times"].items():
            print(f"| {label} | {t['ready_ms']:.1f} | {t['first_ms']:.1f} | {t['checksum']:.6g} |")
        p = r["pss"]
        print(f"\nsummed PSS of {results['workers']} workers: zcwrap AOTI {p['zcwrap AOTI'] / 2**20:.0f} MiB, "
              f"AOTIModelPackageLoader {p['loader'] / 2**20:.0f} MiB, workers that load nothing "
              f"{p['none'] / 2**20:.0f} MiB; goal for zcwrap <= {r['pss_goal'] / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
