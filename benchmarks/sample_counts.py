"""Dump per-image class counts of the smoothed classifier, for offline study of sampling rules.

    python benchmarks/sample_counts.py --device cuda --n 100000 --out counts.npz

Saves ``counts0`` (selection, n0 = 100) and ``counts`` (estimation, n) per image, the labels
and the dataset indices, with the per-image noise streams of the CLI (seed, index). The
adaptive procedure's sample-size study (BENCHMARKS.md) replays binomial draws at the
estimated p_A of each image.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from smoothguard.data import load_dataset
from smoothguard.models import load_checkpoint, load_default_model
from smoothguard.smoothing import SmoothedClassifier
from smoothguard.smoothing.core import image_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--skip", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = (load_default_model() if args.model is None else load_checkpoint(args.model))[0].to(device)
    data = load_dataset("fashion-mnist", "test", root=args.root).subset(skip=args.skip)
    g = SmoothedClassifier(model, 10, args.sigma)
    c0, c = [], []
    for start in range(0, len(data.labels), 50):
        sl = slice(start, start + 50)
        seeds = [image_seed(args.seed, int(i)) for i in data.indices[sl]]
        gens = g._generators(len(seeds), seeds, None)
        x = data.images[sl].to(device)
        c0.append(g.sample_counts(x, 100, args.batch, generators=gens))
        c.append(g.sample_counts(x, args.n, args.batch, generators=gens))
    np.savez_compressed(args.out, counts0=torch.cat(c0).numpy(), counts=torch.cat(c).numpy(),
                        labels=data.labels.numpy(), indices=data.indices.numpy(), sigma=args.sigma, n=args.n)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
