"""Deterministic bounds: smoothguard.verification against auto_LiRPA, side by side.

Same models, same inputs, same specification (the margins logit[y] - logit[j], j != y,
given to auto_LiRPA as its C matrix), same input set (the l_inf ball intersected with
[0, 1], given to auto_LiRPA as x_L / x_U). Checks that the IBP and CROWN margin lower
bounds agree within --rtol (relative to the bound's magnitude, with an absolute floor of
rtol) and that the verified counts are equal, then times both, interleaved (ours, theirs,
ours, theirs, ...) with --repeats rounds, and reports medians and the ratio ours /
auto_LiRPA (< 1: ours is faster).

auto_LiRPA is never a dependency of smoothguard: run this file with an interpreter that
has auto_LiRPA and torch installed, e.g. (auto_LiRPA 0.7.1 from its source; its
setup.py asks for torch < 2.9 and torchvision, which --no-deps skips):

    python3 -m venv /tmp/lirpa
    /tmp/lirpa/bin/pip install torch==2.13.0 numpy packaging appdirs pyyaml tqdm graphviz
    /tmp/lirpa/bin/pip install --no-deps --no-build-isolation PATH/TO/auto_LiRPA-source
    /tmp/lirpa/bin/python benchmarks/bench_verify.py --lenet runs/ibp/model.pt

Where pip cannot build the source ("invalid command 'bdist_wheel'": no wheel package),
put it on the path instead: ``echo PATH/TO/auto_LiRPA-source >
/tmp/lirpa/lib/python3.11/site-packages/auto_lirpa_src.pth``; a second .pth naming this
checkout's .venv site-packages reuses its torch instead of downloading one.

smoothguard is imported from this checkout's src/ (its own dependencies: torch, numpy).
Timing uses one thread by default (--threads) so both libraries see the same CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from smoothguard.models import get_model, load_checkpoint  # noqa: E402
from smoothguard.models.layers import Normalize  # noqa: E402
from smoothguard.verification import margin_spec, spec_bounds, to_ops  # noqa: E402


def models(lenet_path: str | None) -> list[tuple[str, nn.Module, float]]:
    """(name, model, eps): an MLP and a strided CNN (random weights, small eps so that
    their bounds are informative), and LeNet (with max pooling): trained if a
    checkpoint is given, else random."""
    torch.manual_seed(0)
    mlp = nn.Sequential(Normalize([0.286], [0.353]), nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    cnn = nn.Sequential(Normalize([0.286], [0.353]), nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(),
                        nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
                        nn.Linear(100, 10))
    out = [("mlp-784-256-256-10 (random)", mlp.eval(), 0.002), ("cnn-small strided (random)", cnn.eval(), 0.002)]
    if lenet_path:
        lenet, _ = load_checkpoint(lenet_path)
        out.append((f"lenet ({Path(lenet_path).parent.name})", lenet.eval(), 0.1))
    else:
        out.append(("lenet (random)", get_model("lenet", 10, (1, 28, 28), (0.286,), (0.353,)).eval(), 0.002))
    return out


def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from smoothguard.data import load_dataset

    ds = load_dataset("fashion-mnist", "test", None).subset(max_count=n)
    return ds.images[:n].float(), ds.labels[:n].long()


def lirpa_margins(bm, x: torch.Tensor, y: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    from auto_LiRPA import BoundedTensor, PerturbationLpNorm

    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    C = margin_spec(y, 10)
    with torch.no_grad():
        lb, _ = bm.compute_bounds(x=(BoundedTensor(x, ptb),), C=C, method=method, bound_upper=False)
    lb = lb.clone()
    lb[torch.arange(len(y)), y] = float("inf")  # row y of C is zero: not a constraint
    return lb


def ours_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    # the raw bounds of the method (verify() would tighten CROWN's by IBP's, which auto_LiRPA
    # does not by default); no forward pass: auto_LiRPA 0.7.1's compute_bounds makes none
    # either (bound_opts forward_before_compute_bounds is False: its IBP and CROWN calls on
    # LeNet run 4 convolutions, the centre and radius of each layer). Our layer chain is
    # rebuilt per call (to_ops, timed); auto_LiRPA's graph is parsed once (not timed).
    with torch.inference_mode():
        lb, _ = spec_bounds(to_ops(model, tuple(x.shape[1:])), x, margin_spec(y, 10), eps, "linf", method,
                            upper=False)
    lb = lb.clone()
    lb[torch.arange(len(y)), y] = float("inf")
    return lb


def ours_margins_f64(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    """Our bounds computed in float64: a reference for how far float32 rounding alone moves
    either library's bound (auto_LiRPA 0.7.1's max pooling does not run in float64)."""
    m64 = copy.deepcopy(model).double()
    with torch.inference_mode():
        lb, _ = spec_bounds(to_ops(m64, tuple(x.shape[1:])), x.double(), margin_spec(y, 10, torch.float64), eps,
                            "linf", method, upper=False)
    lb = lb.clone()
    lb[torch.arange(len(y)), y] = float("inf")
    return lb


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags) or "none of avx2/avx512f/avx512_bf16"


def compare(a: torch.Tensor, b: torch.Tensor, rtol: float) -> tuple[bool, float]:
    fin = torch.isfinite(a)
    diff = ((a - b).abs() / b.abs().clamp(min=1.0))[fin]
    return bool((diff <= rtol).all()), float(diff.max()) if diff.numel() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lenet", default=None, help="a LeNet checkpoint (e.g. an ibp-trained one); default: random")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50, help="images per bound call (timing)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--methods", default="ibp,crown", help="comma-separated: ibp, crown")
    ap.add_argument("--only", default=None, help="run only the models whose name contains this (e.g. lenet)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import auto_LiRPA
    from auto_LiRPA import BoundedModule

    load0 = os.getloadavg()
    x_all, y_all = load_images(args.images)
    results = []
    for name, model, eps in models(args.lenet):
        if args.only and args.only not in name:
            continue
        bm = BoundedModule(model, torch.zeros(1, 1, 28, 28), device="cpu")  # one-time graph parse, not timed
        for method, lmethod in (("ibp", "IBP"), ("crown", "CROWN")):
            if method not in args.methods.split(","):
                continue
            # agreement on every image; per image (batch 1) as well as batched for auto_LiRPA,
            # which refines the neurons unstable for *any* image of a batch (ours: per image)
            ours, theirs, theirs1 = [], [], []
            for s in range(0, args.images, args.batch):
                x, y = x_all[s:s + args.batch], y_all[s:s + args.batch]
                ours.append(ours_margins(model, x, y, eps, method))
                theirs.append(lirpa_margins(bm, x, y, eps, lmethod))
            ours_t, theirs_t = torch.cat(ours), torch.cat(theirs)
            ok, worst = compare(ours_t, theirs_t, args.rtol)
            n1 = min(args.images, 20)
            for i in range(n1):
                theirs1.append(lirpa_margins(bm, x_all[i:i + 1], y_all[i:i + 1], eps, lmethod))
            ok1, worst1 = compare(ours_t[:n1], torch.cat(theirs1), args.rtol)
            # where they differ, which one float32 rounding moved: both against our float64 bounds
            ref64 = torch.cat([ours_margins_f64(model, x_all[i:i + 1], y_all[i:i + 1], eps, method) for i in range(n1)])
            _, ours_vs64 = compare(ours_t[:n1].double(), ref64, args.rtol)
            _, theirs_vs64 = compare(torch.cat(theirs1).double(), ref64, args.rtol)
            v_ours = int((ours_t.min(1).values > 0).sum())
            v_theirs = int((theirs_t.min(1).values > 0).sum())
            # timing: interleaved rounds over the same batches
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                for fn, acc in ((lambda x, y: ours_margins(model, x, y, eps, method), t_ours),
                                (lambda x, y: lirpa_margins(bm, x, y, eps, lmethod), t_theirs)):
                    t0 = time.perf_counter()
                    for s in range(0, args.images, args.batch):
                        fn(x_all[s:s + args.batch], y_all[s:s + args.batch])
                    acc.append(time.perf_counter() - t0)
            mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
            row = {"model": name, "eps": eps, "method": method, "images": args.images, "batch": args.batch,
                   "equal_batched": ok, "max_rel_diff_batched": worst, "equal_per_image": ok1,
                   "max_rel_diff_per_image": worst1, "ours_vs_f64": ours_vs64, "auto_lirpa_vs_f64": theirs_vs64,
                   "verified_ours": v_ours, "verified_auto_lirpa": v_theirs,
                   "seconds_ours": mo, "seconds_auto_lirpa": mt, "ratio": mo / mt}
            results.append(row)
            print(f"{name:32s} eps {eps:<6g} {method:5s} equal(batched) {ok!s:5s} (max rel diff {worst:.1e}) "
                  f"equal(per image, {n1}) {ok1!s:5s} ({worst1:.1e}; vs our float64: ours {ours_vs64:.1e}, "
                  f"auto_LiRPA {theirs_vs64:.1e})  verified {v_ours}/{v_theirs}  "
                  f"time ours {mo:.3f} s, auto_LiRPA {mt:.3f} s, ratio {mo / mt:.2f}", flush=True)
    print(f"auto_LiRPA {auto_LiRPA.__version__}, torch {torch.__version__}, threads {args.threads}, "
          f"{args.images} images, batch {args.batch}, medians of {args.repeats} interleaved rounds; "
          f"CPU flags: {cpu_flags()}; load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
