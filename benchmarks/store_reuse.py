"""What the store's reuse check costs: from_model of a model whose blob is
already in the store compares every byte of that file (header, manifest,
skeletons and weights) with what it would write, instead of trusting the
name's checksum of the metadata.

For the 1 GiB model (16 Linear layers of 4096 x 4096, float32), in one
process, the store in /dev/shm (tmpfs, as by default):

  write   from_model into an empty store (pickle, hash, write, fsync)
  reuse   from_model again, the blob already there (pickle, hash, compare)
  compare the comparison on its own: libc's memcmp of each weight's place
          in the blob (mapped) with the weight's bytes, as the check does

Each figure is the median of --repeat runs. Run it with the torch2 lane's
Python and the package on PYTHONPATH:

    PYTHONPATH=build-python/site $VENV/bin/python benchmarks/store_reuse.py
"""

import argparse
import ctypes
import json
import mmap
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

import zcwrap


memcmp = ctypes.CDLL(None).memcmp
memcmp.restype = ctypes.c_int
memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layers", type=int, default=16, help="Linear(4096, 4096) layers (16: 1 GiB)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4096, 4096, bias=False) for _ in range(args.layers)]).eval()
    weights = [p.detach().numpy().view(np.uint8).reshape(-1) for p in model.parameters()]
    writes, reuses, compares = [], [], []
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        store = os.path.join(shm, "store")
        for _ in range(args.repeat):
            seconds, wrapper = timed(lambda: zcwrap.ModelWrapper.from_model(model, store_dir=store))
            writes.append(seconds)
            seconds, again = timed(lambda: zcwrap.ModelWrapper.from_model(model, store_dir=store))
            reuses.append(seconds)
            info = zcwrap.describe(wrapper.blob_path)
            with open(wrapper.blob_path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            blob = np.frombuffer(mapped, dtype=np.uint8)
            tensors = info["models"][0]["tensors"]

            base = blob.ctypes.data

            def compare():
                return all(memcmp(ctypes.c_void_p(base + t["offset"]), ctypes.c_void_p(w.ctypes.data), t["bytes"]) == 0
                           for t, w in zip(tensors, weights))

            seconds, equal = timed(compare)
            assert equal
            compares.append(seconds)
            del blob
            mapped.close()
            del wrapper, again
            zcwrap.gc(store_dir=store)
    size = sum(w.size for w in weights)
    result = {"weights_bytes": size, "repeat": args.repeat,
              "write_s": statistics.median(writes), "reuse_s": statistics.median(reuses),
              "compare_s": statistics.median(compares)}
    print(json.dumps(result, indent=2))
    print(f"{size / 2**30:.2f} GiB: write {result['write_s']:.3f} s, reuse {result['reuse_s']:.3f} s "
          f"(of which the byte comparison {result['compare_s']:.3f} s, {size / result['compare_s'] / 2**30:.1f} GiB/s)")


if __name__ == "__main__":
    main()
