"""zcwrap with Ray Data: the seed's usage, one copy of the weights per node.

Run it with a Python that has torch, torchvision, Ray (with pandas and
pyarrow for Ray Data) and the zcwrap package:

    PYTHONPATH=build-python/site $VENV/bin/python samples/ray_map_batches.py [--address auto]

Without --address it starts a local Ray. It packs a torchvision resnet18
(random weights) once in the driver, runs map_batches over an actor pool
whose actors unwrap it from Ray's object store, and checks every output
against the original model's.
"""

import argparse

import numpy as np
import ray
import torch
import torchvision

from zcwrap import ModelWrapper


class InferenceActor:
    def __init__(self, model_wrapper):
        self.model = model_wrapper.unwrap(device="cpu")  # zero-copy from the node's object store

    def __call__(self, batch):
        with torch.no_grad():
            return {"index": batch["index"], "out": self.model(torch.as_tensor(batch["data"])).numpy()}


def main():
    parser = argparse.ArgumentParser(description="zcwrap + Ray Data map_batches")
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: start a local one)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()
    ray.init(address=args.address, log_to_driver=False)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    wrapper = ModelWrapper.from_model(model)  # packed once; the blob goes to the object store with the actors
    images = np.random.default_rng(0).standard_normal((args.rows, 3, 64, 64)).astype(np.float32)

    ds = ray.data.from_items([{"index": i, "data": image} for i, image in enumerate(images)])
    results = ds.map_batches(InferenceActor, fn_constructor_kwargs={"model_wrapper": wrapper}, batch_size=4,
                             compute=ray.data.ActorPoolStrategy(size=args.actors)).take_all()

    # The original, as Ray's workers run it (one thread each).
    torch.set_num_threads(1)
    with torch.no_grad():
        expected = model(torch.as_tensor(images)).numpy()
    same = all(np.array_equal(row["out"], expected[row["index"]]) for row in results)
    print(f"{len(results)} rows through {args.actors} actors; outputs bit-equal to the original model's: {same}")
    ray.shutdown()
    raise SystemExit(0 if same and len(results) == args.rows else 1)


if __name__ == "__main__":
    main()
