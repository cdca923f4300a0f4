"""What the attack model's preparation (``smoothguard.runtime.for_gradients``) buys per model
evaluation, side by side with the model as loaded (what a reference attack library gets).

    python benchmarks/bench_attack_model.py --model runs/trades/model.pt [--batch 267] [--repeats 15]

Forward passes without gradients (Square's queries, decisions) and forward+backward passes
for the input gradient (APGD, FAB), for: the plain model, the prepared model
(channels-last where the runtime's rules say so, the exact ReLU/pool rewrite, strided pools
without gradients, frozen weights, and on the CPU ``conv_grad``: the first convolution's
input gradient as GEMM + shifted sums, equal up to float rounding), the same with
``conv_grad=False`` (oneDNN's own backward; the relative gradient difference is printed),
and the prepared model kept contiguous. One thread, interleaved, the
median of ``--repeats``; the logits are checked to agree. Every attack of ``evaluate``'s
cascade spends as many evaluations per point as AutoAttack's, so these factors bound the
``evaluate`` / AutoAttack time ratio (issue 18).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from smoothguard.data import load_dataset
from smoothguard.models import load_checkpoint, load_default_model
from smoothguard.runtime import cpu_flags, for_gradients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    ap.add_argument("--batch", type=int, default=267)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.model) if args.model else load_default_model()
    model = (loaded[0] if isinstance(loaded, tuple) else loaded).eval()
    x = load_dataset("fashion-mnist", split="test").images[: args.batch].float()
    variants = {
        "plain": copy.deepcopy(model),
        "prepared": for_gradients(copy.deepcopy(model))[0],
        "prepared, no conv_grad": for_gradients(copy.deepcopy(model), conv_grad=False)[0],
        "prepared, contiguous": for_gradients(copy.deepcopy(model), channels_last=False)[0],
    }
    with torch.no_grad():
        ref = variants["plain"](x)
        for name, m in variants.items():
            err = float((m(x) - ref).abs().max())
            assert err < 1e-4, f"{name}: logits differ by {err}"

    def input_grad(m):
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(m(xg)[:, 0].sum(), xg)[0]

    g_ref = input_grad(variants["prepared, no conv_grad"])
    g_fast = input_grad(variants["prepared"])
    rel = float((g_fast - g_ref).abs().max() / g_ref.abs().max())
    assert rel < 1e-5, f"conv_grad: input gradients differ by {rel} (relative)"
    print(f"conv_grad vs oneDNN's backward: input gradient max relative difference {rel:.1e}")

    def forward(m):
        with torch.no_grad():
            m(x)

    def forward_backward(m):
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(m(xg)[:, 0].sum(), xg)

    print(f"batch {args.batch}, 1 thread, CPU flags: {' '.join(cpu_flags()) or 'none'}; median of {args.repeats}")
    print("| pass | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for label, fn in (("forward", forward), ("forward+backward", forward_backward)):
        times = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, m in variants.items():
                t0 = time.perf_counter()
                fn(m)
                times[k].append(time.perf_counter() - t0)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        cells = [f"{1000 * med[k]:.1f} ms ({med[k] / med['plain']:.2f}x)" for k in variants]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
