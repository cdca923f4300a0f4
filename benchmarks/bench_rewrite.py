"""What the exact rewrites of ``smoothguard.models.rewrite`` buy, side by side: the ReLU/MaxPool
swap (``pool_before_relu``) and, for inference, the strided max pooling (``strided_max_pools``).

    python benchmarks/bench_rewrite.py [--threads 2] [--rounds 6]

For the embedded LeNet and a Madry CNN (random weights: speed only), in channels_last on
the CPU, interleaved round by round so that machine noise hits both alike:

* bare forward, batch 400: the model as built vs the swap alone vs the swap followed by the
  strided pools (images/s; the logits are checked to be equal);
* the sampler: ``SmoothedClassifier.sample_counts`` (4 images x 5,000 noise draws, batch
  400) with ``rewrite=True`` (the default: both rewrites) vs ``rewrite=False``; the counts
  are checked to be identical.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from smoothguard.models import get_model, load_default_model, pool_before_relu, strided_max_pools
from smoothguard.smoothing import SmoothedClassifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"lenet (embedded)": load_default_model()[0],
              "madry_cnn (random weights)": get_model("madry_cnn", 10, (1, 28, 28), (0.286,), (0.353,))}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} interleaved rounds\n")
    print("| model | what | as built (images/s) | rewritten (images/s) | speed-up |")
    print("|---|---|---:|---:|---:|")
    x = torch.rand(400, 1, 28, 28)
    for name, model in models.items():
        plain = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        swapped, swaps = pool_before_relu(plain)
        strided, pools = strided_max_pools(swapped)
        assert swaps > 0 and pools > 0
        variants = (plain, swapped, strided)
        t = [0.0] * len(variants)
        with torch.inference_mode():
            ref = plain(x)
            for m in variants:
                assert torch.equal(m(x), ref), "a rewrite changed the logits"
            for _ in range(args.rounds):
                for i, m in enumerate(variants):
                    t0 = time.perf_counter()
                    for _ in range(10):
                        m(x)
                    t[i] += time.perf_counter() - t0
        n = 400 * 10 * args.rounds
        print(f"| {name} | bare forward, batch 400: ReLU/MaxPool swap | {n / t[0]:,.0f} | {n / t[1]:,.0f} | "
              f"{t[0] / t[1]:.2f}x |")
        print(f"| {name} | bare forward, batch 400: swap + strided pools | {n / t[0]:,.0f} | {n / t[2]:,.0f} | "
              f"{t[0] / t[2]:.2f}x |")
        samplers = [SmoothedClassifier(copy.deepcopy(model), 10, 0.25, rewrite=r) for r in (False, True)]
        imgs, seeds, num = torch.rand(4, 1, 28, 28), [1, 2, 3, 4], 5000
        for g in samplers:
            g.sample_counts(imgs, 400, seeds=seeds)
        t, counts = [0.0, 0.0], [None, None]
        for _ in range(args.rounds):
            for i, g in enumerate(samplers):
                t0 = time.perf_counter()
                counts[i] = g.sample_counts(imgs, num, 400, seeds=seeds)
                t[i] += time.perf_counter() - t0
        assert torch.equal(counts[0], counts[1]), "the rewrite changed the counts"
        n = 4 * num * args.rounds
        print(f"| {name} | sampler (4 x 5,000 draws, both rewrites), counts identical | {n / t[0]:,.0f} | {n / t[1]:,.0f} | "
              f"{t[0] / t[1]:.2f}x |")


if __name__ == "__main__":
    main()
