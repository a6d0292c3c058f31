#!/usr/bin/env python3
"""Compile the AOTInductor benchmark models (torch2 lane only).

Usage: make_aoti_models.py OUTDIR [--only NAME ...]

For each model of make_models.py named below (same code, same seed, so the
same weights as its TorchScript file NAME.pt, which this also writes when
missing), writes into OUTDIR, skipping files that already exist:
  NAME.pt2       aoti_compile_and_package with default settings: the
                 weights linked into the .so
  NAME_mmap.pt2  the same with aot_inductor.force_mmap_weights: the weights
                 appended to the .so, which torch's loader maps instead of
                 copying
  NAME.pt, NAME_in.pt  as make_models.py writes them

Compiling takes minutes on 2 cores (resnet50 about 3, the 1 GiB stack about
2 each); this is a benchmark step, never a CI one.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_models  # noqa: E402

NAMES = ["resnet50", "stack_1g"]


def eager(name):
    """The eager module behind make_models' scripted one, with its example."""
    torch.manual_seed(0)
    scripted, example = make_models.MODELS[name]()
    return scripted, example


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--only", nargs="*", choices=NAMES, default=NAMES)
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    import torch._inductor
    for name in args.only:
        scripted, example = eager(name)
        pt = os.path.join(args.outdir, f"{name}.pt")
        if not os.path.exists(pt):
            torch.jit.save(scripted, pt + ".tmp")
            torch.save(example, os.path.join(args.outdir, f"{name}_in.pt"))
            os.replace(pt + ".tmp", pt)
        # torch.export needs the eager module: make_models scripts it, so
        # rebuild it from the scripted one's state (same seed, same weights).
        torch.manual_seed(0)
        if name == "resnet50":
            import torchvision
            module = torchvision.models.resnet50(weights=None).eval()
        else:
            module = make_models.LinearStack(4096).eval()
        module.load_state_dict(scripted.state_dict())
        module.requires_grad_(False)
        for suffix, configs in (("", {}), ("_mmap", {"aot_inductor.force_mmap_weights": True})):
            path = os.path.join(args.outdir, f"{name}{suffix}.pt2")
            if os.path.exists(path):
                print(f"reusing {path}")
                continue
            start = time.time()
            program = torch.export.export(module, (example,))
            torch._inductor.aoti_compile_and_package(program, package_path=path + ".tmp.pt2",
                                                     inductor_configs=configs)
            os.replace(path + ".tmp.pt2", path)
            print(f"compiled {path} ({os.path.getsize(path) / 2**20:.1f} MiB) in {time.time() - start:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
