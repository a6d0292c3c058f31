#!/usr/bin/python3
"""Generate the demo models used in zcwrap's README.

Usage: make_sample_models.py OUTDIR

Writes, each with a NAME_in.pt input (torch.save'd tensor):
  classifier.pt  transformer text classifier, ~27 MB; tokens int64[2,32]
  encoder.pt     pipeline stage 1: tokens int64[2,32] -> float32[2,32,256]
  head.pt        pipeline stage 2: float32[2,32,256] -> logits [2,32,8000];
                 its proj.weight has the same bytes as encoder's
                 tok.weight (a weight-tied LM head split across two files)

Weights are random (no downloads) but seeded, so runs are reproducible.
"""

import os
import sys

# TorchScript emits a module's __constants__ in Python set order, which
# follows string hashing; pin the hash seed so the .pt bytes are identical
# from run to run (re-exec once, before anything is hashed).
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

# Harmless torch 1.13 noise when scripting nn.TransformerEncoderLayer.
warnings.filterwarnings("ignore", message="'batch_first' was found")

D_MODEL, N_HEAD, D_FF, N_LAYERS, MAX_LEN = 256, 4, 1024, 2, 64
BATCH, SEQ = 2, 32


def encoder_stack() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(D_MODEL, N_HEAD, D_FF,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, N_LAYERS, enable_nested_tensor=False)


class Encoder(nn.Module):
    """Token + learned position embeddings, then a transformer encoder."""

    def __init__(self, vocab: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, D_MODEL)
        self.pos = nn.Embedding(MAX_LEN, D_MODEL)
        self.encoder = encoder_stack()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.size(1), device=tokens.device)
        return self.encoder(self.tok(tokens) + self.pos(pos))


class Classifier(nn.Module):
    """Encoder, mean-pooled over time, then a linear head."""

    def __init__(self, vocab: int, n_classes: int):
        super().__init__()
        self.body = Encoder(vocab)
        self.head = nn.Linear(D_MODEL, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(tokens).mean(dim=1))


class Head(nn.Module):
    """LM head whose projection is the (transposed-use) token embedding."""

    def __init__(self, tok_weight: torch.Tensor):
        super().__init__()
        self.norm = nn.LayerNorm(D_MODEL)
        vocab = tok_weight.size(0)
        self.proj = nn.Linear(D_MODEL, vocab, bias=False)
        # A copy, not the same Parameter: the two stages live in separate
        # files, which is exactly the cross-file duplicate zcwrap dedups.
        self.proj.weight = nn.Parameter(tok_weight.detach().clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(feats))


def tokens(vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


def announce(path: str) -> None:
    size = os.path.getsize(path)
    print(f"wrote {path} ({size / 2**20:.1f} MiB, {size} bytes)")


def save(outdir: str, name: str, module: nn.Module, inputs) -> None:
    path = os.path.join(outdir, f"{name}.pt")
    torch.jit.save(torch.jit.script(module), path)
    announce(path)
    path = os.path.join(outdir, f"{name}_in.pt")
    torch.save(inputs, path)
    announce(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)

    torch.manual_seed(0)
    clf = Classifier(vocab=20000, n_classes=4).eval()
    save(args.outdir, "classifier", clf, tokens(20000, seed=1))

    torch.manual_seed(1)
    enc = Encoder(vocab=8000).eval()
    head = Head(enc.tok.weight).eval()
    enc_in = tokens(8000, seed=2)
    with torch.no_grad():
        feats = enc(enc_in)  # head's input is exactly encoder's output
    save(args.outdir, "encoder", enc, enc_in)
    save(args.outdir, "head", head, feats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
