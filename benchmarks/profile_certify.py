"""Where the time of ``certify`` goes: the model's forward pass against everything else
(issue 7, "speed of the plain path").

    python benchmarks/profile_certify.py                    # lenet and madry_cnn, 1 and 2 threads
    python benchmarks/profile_certify.py --threads 1 --n 20000

Runs ``SmoothedClassifier.certify_batch`` (eager model, channels_last, one forward worker,
so that every operator runs on the profiled thread) under ``torch.profiler`` with the
base classifier wrapped in a ``record_function("model forward")`` scope, and splits the
wall time into:

* model forward: everything inside the base classifier (convolutions, pooling, linear...);
* noise: ``aten::normal_`` (drawing the Gaussian noise into the reused batch buffer);
* add_: ``aten::add_`` (x + noise in place, and the running sums of the counts);
* counting: argmax, bincount, index_add and the accumulation of counts;
* rest: Python, the statistics, copies and anything else (the wall time not accounted
  for by the above).

The same images and seeds for every row; the profiler's own overhead is included in
"rest", so it is an upper bound on what is not the forward pass.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_certify import madry_model  # noqa: E402

from smoothguard.data import load_dataset  # noqa: E402
from smoothguard.models import load_default_model  # noqa: E402
from smoothguard.smoothing import SmoothedClassifier  # noqa: E402

SIGMA, ALPHA, N0 = 0.25, 0.001, 100
COUNTING = ("aten::argmax", "aten::bincount", "aten::index_add_", "aten::repeat_interleave", "aten::add")


class Scoped(nn.Module):
    """The base classifier inside a profiler scope, so its operators are counted as one."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function("model forward"):
            return self.model(x)


def split(prof, wall: float) -> dict[str, float]:
    """Seconds per part from the profiler's self CPU times (the top-level thread only)."""
    events = prof.key_averages()
    by_name = {e.key: e for e in events}
    forward = by_name["model forward"].cpu_time_total / 1e6 if "model forward" in by_name else 0.0
    # operators that also run inside the model (add_, the model's own ops) are counted there;
    # the noise and the image add run outside it
    noise = by_name["aten::normal_"].self_cpu_time_total / 1e6 if "aten::normal_" in by_name else 0.0
    add = by_name["aten::add_"].self_cpu_time_total / 1e6 if "aten::add_" in by_name else 0.0
    counting = sum(by_name[k].self_cpu_time_total for k in COUNTING if k in by_name) / 1e6
    rest = max(wall - forward - noise - add - counting, 0.0)
    return {"model forward": forward, "noise": noise, "add_": add, "counting": counting, "rest": rest}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--models", default="lenet,madry_cnn")
    ap.add_argument("--root", default=None)
    args = ap.parse_args(argv)
    data = load_dataset("fashion-mnist", "test", root=args.root).subset(skip=20, max_count=args.images)
    models = {}
    for name in args.models.split(","):
        models[name] = load_default_model()[0] if name == "lenet" else madry_model(Path("runs/bench_madry_cnn.pt"),
                                                                                    args.root)
    print(f"torch {torch.__version__}; certify_batch n0 {N0}, n {args.n:,}, {args.images} images, batch {args.batch}, "
          "eager, channels_last, one worker; seconds (share of the wall time)\n")
    parts = ["model forward", "noise", "add_", "counting", "rest"]
    print("| model | threads | wall s | " + " | ".join(parts) + " | noisy images/s |")
    print("|---|---:|---:|" + "---:|" * len(parts) + "---:|")
    seeds = list(range(args.images))
    for name, model in models.items():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            g = SmoothedClassifier(Scoped(model.eval()), 10, SIGMA, memory_format="channels_last")
            g.certify_batch(data.images[:1], N0, 2 * args.batch, ALPHA, args.batch, seeds=[0])  # warm up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                g.certify_batch(data.images, N0, args.n, ALPHA, args.batch, seeds=seeds)
                wall = time.perf_counter() - t0
            sec = split(prof, wall)
            rate = args.images * (N0 + args.n) / wall
            print(f"| {name} | {threads} | {wall:.2f} | "
                  + " | ".join(f"{sec[p]:.2f} ({100 * sec[p] / wall:.1f} %)" for p in parts) + f" | {rate:,.0f} |")
    print("\ncommand: python benchmarks/profile_certify.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
