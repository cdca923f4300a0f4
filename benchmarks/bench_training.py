"""Seconds per training epoch of the robust objectives relative to ``gaussian``.

Same LeNet initialization, same Fashion-MNIST subset, same trainer and optimizer; the
methods run interleaved (round-robin, ``--rounds`` times) so that machine load hits them
alike, and each ratio is taken from the per-method median (and, less sensitive to other
processes on a shared machine, from the per-method minimum). Target (issue 5): each ratio
within 10 % of (attack steps + 1) x m, the forward/backward passes the method needs
(smoothadv m=2, 2 steps: 6x; pgd_at 10 steps: 11x).

    PYTHONPATH=src python3 benchmarks/bench_training.py --threads 1
    PYTHONPATH=src python3 benchmarks/bench_training.py --quick        # demo images, 1 round
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from smoothguard.data import load_dataset
from smoothguard.models import get_model
from smoothguard.training import TrainConfig, Trainer, get_objective

METHODS = {
    # name: (objective, kwargs, target ratio vs gaussian or None)
    "gaussian": ("gaussian", dict(noise_sd=0.25), None),
    "smoothadv m=2 T=2": ("smoothadv", dict(noise_sd=0.25, eps=0.5, m_train=2, attack_steps=2), (2 + 1) * 2),
    "pgd_at T=10": ("pgd_at", dict(eps=0.1, attack_steps=10), (10 + 1) * 1),
    "fast_at": ("fast_at", dict(eps=0.1), None),
    "trades T=10": ("trades", dict(eps=0.1, attack_steps=10), None),
    "consistency m=2": ("consistency", dict(noise_sd=0.25, m_train=2), None),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=6000, help="training images (first N of Fashion-MNIST train)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median per method)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--methods", default="gaussian,smoothadv m=2 T=2,pgd_at T=10",
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--quick", action="store_true", help="500 demo images, one round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        data, args.rounds = load_dataset("demo"), 1
    else:
        data = load_dataset("fashion-mnist", "train").subset(max_count=args.n)
    names = [m.strip() for m in args.methods.split(",")]
    for name in names:
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    if "gaussian" not in names:
        names.insert(0, "gaussian")
    info = data.info
    times: dict[str, list[float]] = {n: [] for n in names}  # wall seconds
    cpu: dict[str, list[float]] = {n: [] for n in names}  # this process's CPU seconds
    for r in range(args.rounds):
        for name in names:
            objective, kwargs, _ = METHODS[name]
            torch.manual_seed(0)
            model = get_model("lenet", info.num_classes, info.input_shape, info.mean, info.std).to(args.device)
            trainer = Trainer(model, get_objective(objective, **kwargs),
                              TrainConfig(epochs=1, batch_size=args.batch, lr=0.01, seed=r))
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.fit(data)  # no test set: the epoch is training only
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"round {r + 1} {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU", flush=True)
    # on CPU with one thread, the process's CPU time is the work done, unaffected by other
    # processes competing for the cores (wall time is reported beside it); on CUDA: wall time
    use = cpu if args.device == "cpu" else times
    base = statistics.median(use["gaussian"])
    base_min = min(use["gaussian"])
    print(f"\n{len(data)} images, LeNet, batch {args.batch}, {args.threads} thread(s), device {args.device}, "
          f"median of {args.rounds} interleaved rounds\n")
    kind = "CPU" if use is cpu else "wall"
    print(f"ratios from {kind} seconds\n")
    print(f"| method | wall s/epoch (median) | {kind} s/epoch (median) | x gaussian (median) | x gaussian (min) "
          "| target | within 10 %? |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = statistics.median(use[name])
        target = METHODS[name][2]
        ratio = med / base
        verdict = "" if target is None else ("yes" if ratio <= 1.1 * target else "no (over)")
        ratio_min = min(use[name]) / base_min
        print(f"| {name} | {statistics.median(times[name]):.2f} | {med:.2f} | {ratio:.2f} | {ratio_min:.2f} | {'' if target is None else f'{target}x'} "
              f"| {verdict} |")


if __name__ == "__main__":
    main()
