#!/usr/bin/python3
"""Generate the benchmark models.

Usage: make_models.py OUTDIR [--only NAME ...]

Writes, each with a NAME_in.pt input (torch.save'd tensor), skipping files
that already exist:
  stack_1g.pt     16 x Linear(4096, 4096), scripted: 1.00 GiB of float32
  stack_1m.pt     16 x Linear(128, 128), the same code: 1.0 MiB
  resnet50.pt     torchvision resnet50, scripted: 97.9 MiB
  transformer.pt  6-layer nn.TransformerEncoder (d_model 512, 8 heads, FF
                  2048), scripted: 72 MiB

Weights are random (no downloads) but seeded.
"""

import argparse
import os
import sys
import warnings

import torch
import torch.nn as nn

# Harmless torch 1.13 noise when scripting nn.TransformerEncoderLayer.
warnings.filterwarnings("ignore", message="'batch_first' was found")
warnings.filterwarnings("ignore", message="enable_nested_tensor")


class LinearStack(nn.Module):
    """depth x Linear(width, width) with ReLU in between: all weights, no
    structure to speak of, so the file size is set by `width` alone."""

    def __init__(self, width: int, depth: int = 16):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def stack(width):
    def make():
        with torch.no_grad():
            model = LinearStack(width).eval()
        return torch.jit.script(model), torch.randn(4, width)
    return make


def resnet50():
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    return torch.jit.script(model), torch.randn(1, 3, 224, 224)


def transformer():
    layer = nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
    model = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False).eval()
    return torch.jit.script(model), torch.randn(2, 64, 512)


MODELS = {
    "stack_1g": stack(4096),
    "stack_1m": stack(128),
    "resnet50": resnet50,
    "transformer": transformer,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS), default=sorted(MODELS))
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    for name in args.only:
        model_path = os.path.join(args.outdir, f"{name}.pt")
        input_path = os.path.join(args.outdir, f"{name}_in.pt")
        if os.path.exists(model_path) and os.path.exists(input_path):
            print(f"reusing {model_path}")
            continue
        torch.manual_seed(0)
        module, example = MODELS[name]()
        # Written beside and renamed, so an interrupted run leaves no
        # half-written model that a later run would reuse.
        torch.jit.save(module, model_path + ".tmp")
        torch.save(example, input_path)
        os.replace(model_path + ".tmp", model_path)
        size = os.path.getsize(model_path)
        print(f"wrote {model_path} ({size / 2**20:.1f} MiB, {size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
