"""Time to the first result in fresh Ray actors, resnet50 (issue 22's last row).

Usage (torch2 lane; the package and ray-zerocopy importable, as in ray_bench.py):

    PYTHONPATH=build-python/site:build-bench/peers $VENV/bin/python \\
        benchmarks/actor_start_bench.py MODELS OUT.json [--actors 4] [--rounds 3]

MODELS is make_aoti_models.py's output folder (resnet50.pt2, the AOTInductor
package, and resnet50.pt, the same weights scripted). The driver rebuilds the
eager resnet50 from resnet50.pt's weights and exports it with torch.export.

For each way, --actors fresh actors are asked for at once; each actor's
module imports torch only (no torchvision, no model code), so what a way
needs beyond torch it imports in the actor. Two figures:

  in-actor    from the first line of the actor's constructor (torch already
              imported, the wrapper argument unpickled) to its first result:
              the load, then one forward pass of a 1x3x224x224 input
  whole start from asking Ray for the actors to the last one's first result

Ways: "torch only" (the floor: actors that import torch and load nothing),
eager resnet50 through ray-zerocopy 0.2 (ModelWrapper.from_model(mode=
"actor"), load()) and through zcwrap (ModelWrapper.from_model(), load()),
the ExportedProgram through zcwrap, and the AOTInductor package through
zcwrap (ModelWrapper.from_model("resnet50.pt2"), load()). Every way's blob
or weights travel through Ray's object store. --rounds rounds, the ways in
an order that turns from round to round, each after the node is quiet again
(ray_bench.quiesce); the medians over rounds are reported. Each actor
returns its output's checksum: the eager ways and the ExportedProgram must
agree bit for bit (the same weights, the same kernels); the AOTInductor
model's own kernels are compared with its own loader in test_aoti.
"""

import argparse
import json
import os
import statistics
import sys
import time

import ray
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ray_bench import quiesce  # noqa: E402

WAYS = ["torch only", "eager, ray-zerocopy", "eager, zcwrap", "ExportedProgram, zcwrap", "AOTInductor, zcwrap"]


@ray.remote(num_cpus=0)
class Starter:
    """An actor whose module imports torch only; it loads the model and runs
    it once in its constructor."""

    def __init__(self, way, handle, x):
        started = time.perf_counter()
        if way == "torch only":
            self.load_s = self.first_s = 0.0
            self.checksum = None
            return
        model = handle.load()
        loaded = time.perf_counter()
        with torch.no_grad():
            out = model(x)
        self.checksum = float(out.double().sum())
        self.load_s = loaded - started
        self.first_s = time.perf_counter() - started

    def report(self):
        return {"pid": os.getpid(), "load_s": self.load_s, "first_s": self.first_s, "checksum": self.checksum}


def handles(models):
    import ray_zerocopy
    import torchvision

    import zcwrap

    scripted = torch.jit.load(os.path.join(models, "resnet50.pt"))
    module = torchvision.models.resnet50(weights=None).eval()
    module.load_state_dict(scripted.state_dict())
    module.requires_grad_(False)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(module, (x,))
    return x, {
        "torch only": None,
        "eager, ray-zerocopy": ray_zerocopy.ModelWrapper.from_model(module, mode="actor"),
        "eager, zcwrap": zcwrap.ModelWrapper.from_model(module),
        "ExportedProgram, zcwrap": zcwrap.ModelWrapper.from_model(program),
        "AOTInductor, zcwrap": zcwrap.ModelWrapper.from_model(os.path.join(models, "resnet50.pt2")),
    }


def start(way, handle, x, n):
    started = time.perf_counter()
    actors = [Starter.remote(way, handle, x) for _ in range(n)]
    pids = []
    try:
        pending = {a.report.remote(): a for a in actors}
        reports = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            reports.append(ray.get(ready[0]))
            pending.pop(ready[0])
        whole = time.perf_counter() - started
        pids = [r["pid"] for r in reports]
    finally:
        for a in actors:
            ray.kill(a)
        quiesce(pids)
    return {"whole_s": whole, "first_s": [r["first_s"] for r in reports], "load_s": [r["load_s"] for r in reports],
            "checksums": sorted({r["checksum"] for r in reports if r["checksum"] is not None})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models")
    ap.add_argument("out")
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    x, ways = handles(args.models)
    # Every way's object is put once before the first round (a wrapper goes
    # to the object store the first time it is pickled for Ray).
    ray.get(ray.put(list(ways.values())))
    runs = {way: [] for way in WAYS}
    quiesce()
    for r in range(args.rounds):
        order = WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]
        for way in order:
            runs[way].append(start(way, ways[way], x, args.actors))
            row = runs[way][-1]
            print(f"round {r + 1} {way}: whole {row['whole_s']:.2f} s, in-actor "
                  f"{statistics.median(row['first_s']):.3f} s (load {statistics.median(row['load_s']):.3f} s)",
                  flush=True)
    rows = []
    for way in WAYS:
        rounds = runs[way]
        rows.append({
            "way": way,
            "whole_s": statistics.median(r["whole_s"] for r in rounds),
            "whole_rounds_s": [r["whole_s"] for r in rounds],
            "in_actor_s": statistics.median(statistics.median(r["first_s"]) for r in rounds),
            "in_actor_max_s": max(max(r["first_s"]) for r in rounds),
            "load_s": statistics.median(statistics.median(r["load_s"]) for r in rounds),
            "checksums": sorted({c for r in rounds for c in r["checksums"]}),
        })
    eager = {c for row in rows if row["way"].startswith(("eager", "ExportedProgram")) for c in row["checksums"]}
    doc = {"torch": torch.__version__, "ray": ray.__version__, "actors": args.actors, "rounds": args.rounds,
           "cpus": os.cpu_count(), "eager_outputs_agree": len(eager) == 1, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    floor = rows[0]["whole_s"]
    rzc = rows[1]["in_actor_s"]
    print(f"\n{args.actors} actors, {args.rounds} rounds, torch {torch.__version__}, ray {ray.__version__}")
    print("| way | in-actor: load + first result (s) | of which load (s) | whole start (s) | whole / floor "
          "| in-actor, ray-zerocopy eager / this |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        ratio = f"{rzc / row['in_actor_s']:.1f}" if row["in_actor_s"] > 0 else ""
        print(f"| {row['way']} | {row['in_actor_s']:.3f} | {row['load_s']:.3f} | {row['whole_s']:.2f} | "
              f"{row['whole_s'] / floor:.2f} | {ratio} |")
    print(f"eager and ExportedProgram outputs bit-equal across ways: {doc['eager_outputs_agree']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
