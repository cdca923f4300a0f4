"""Side-by-side PGD: smoothguard vs a plain hand-written loop vs torchattacks.

Same model, same images, same eps / steps / step size, random start, one restart; wall
time (best of ``--repeats``) and robust accuracy. torchattacks is used when importable
(``pip install --no-deps torchattacks``). Prints a Markdown table and the command.

    python benchmarks/bench_attacks.py --quick
    python benchmarks/bench_attacks.py --n 500 --steps 40 --channels-last
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.attacks import PGD
from smoothguard.data import load_dataset
from smoothguard.models import get_model


def get_bench_model(seconds_budget_epochs: int) -> tuple[nn.Module, str]:
    """The embedded model if it is available, else a LeNet trained briefly on demo images."""
    try:
        from smoothguard.models import load_default_model

        model = load_default_model()
        if isinstance(model, tuple):
            model = model[0]
        return model.eval(), "embedded default model"
    except Exception:  # not trained yet, or no weights file: train a stand-in
        pass
    ds = load_dataset("demo")
    torch.manual_seed(0)
    model = get_model("lenet", 10, (1, 28, 28))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = ds.images, ds.labels
    for _ in range(seconds_budget_epochs):
        for i in range(0, len(x), 50):
            loss = F.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), f"LeNet trained {seconds_budget_epochs} epochs on the 500 demo images"


def plain_pgd(model, x, y, norm, eps, steps, alpha, gen):
    """A textbook PGD loop (random start, last iterate), the baseline every user writes."""
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    else:
        delta = torch.randn(x.shape, generator=gen)
        delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if norm == "linf":
                x_adv = x_adv + alpha * g.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
            else:
                x_adv = x_adv + alpha * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                d = x_adv - x
                d = d * (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
                x_adv = (x + d).clamp(0, 1)
    return x_adv.detach()


def robust_acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 images, 20 steps, 1 repeat")
    p.add_argument("--n", type=int, default=500, help="number of demo images")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eps-linf", type=float, default=0.1)
    p.add_argument("--eps-l2", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels-last", action="store_true", help="also time ours with channels_last")
    p.add_argument("--train-epochs", type=int, default=3, help="stand-in model training, if needed")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.repeats = 200, 20, 1
    torch.set_num_threads(args.threads)

    model, model_desc = get_bench_model(args.train_epochs)
    ds = load_dataset("demo")
    x, y = ds.images[: args.n], ds.labels[: args.n]
    try:
        import torchattacks
    except Exception:  # noqa: BLE001 - the peer is optional
        torchattacks = None
    have_ta = torchattacks is not None

    rows = []
    clean = robust_acc(model, x, y)
    for norm, eps in (("linf", args.eps_linf), ("l2", args.eps_l2)):
        alpha = 2.5 * eps / args.steps

        def batched(fn):
            return torch.cat([fn(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(x), args.batch)])

        ours = PGD(model, norm=norm, eps=eps, steps=args.steps, step_size=alpha, seed=0, sanity_checks=False)
        t, xa = timed(lambda: batched(ours), args.repeats)
        rows.append((norm, eps, "smoothguard PGD", t, robust_acc(model, xa, y)))
        if args.channels_last:
            model_cl = model.to(memory_format=torch.channels_last)
            ours_cl = PGD(model_cl, norm=norm, eps=eps, steps=args.steps, step_size=alpha, seed=0,
                          sanity_checks=False)
            t, xa = timed(lambda: batched(lambda a, b: ours_cl(a.contiguous(memory_format=torch.channels_last), b)),
                          args.repeats)
            rows.append((norm, eps, "smoothguard PGD (channels_last)", t, robust_acc(model, xa, y)))
            model.to(memory_format=torch.contiguous_format)
        gen = torch.Generator().manual_seed(0)
        t, xa = timed(lambda: batched(lambda a, b: plain_pgd(model, a, b, norm, eps, args.steps, alpha, gen)),
                      args.repeats)
        rows.append((norm, eps, "plain PGD loop (last iterate)", t, robust_acc(model, xa, y)))
        if have_ta:
            torch.manual_seed(0)
            if norm == "linf":
                ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
            else:
                ta = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
            t, xa = timed(lambda: batched(ta), args.repeats)
            rows.append((norm, eps, f"torchattacks {torchattacks.__version__} PGD", t, robust_acc(model, xa, y)))

    print(f"\nPGD side by side: {model_desc}; {len(x)} demo images (clean accuracy {clean:.1%}); "
          f"{args.steps} steps of 2.5 eps / steps, random start, 1 restart; "
          f"{args.threads} thread(s); best of {args.repeats}.\n")
    print("| norm | eps | implementation | wall time (s) | robust accuracy |")
    print("|---|---|---|---|---|")
    for norm, eps, name, t, acc in rows:
        print(f"| {norm} | {eps:g} | {name} | {t:.2f} | {acc:.1%} |")
    if not have_ta:
        print("\n(torchattacks not installed: `pip install --no-deps torchattacks` to compare)")
    print(f"\ncommand: python benchmarks/bench_attacks.py {' '.join(argv if argv is not None else sys.argv[1:])}")


if __name__ == "__main__":
    main()
