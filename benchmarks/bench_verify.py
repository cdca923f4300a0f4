"""Deterministic bounds: smoothguard.verification against auto_LiRPA, side by side.

Same models, same inputs, same specification (the margins logit[y] - logit[j], j != y,
given to auto_LiRPA as its C matrix), same input set (the l_inf ball intersected with
[0, 1], given to auto_LiRPA as x_L / x_U). Checks that the IBP and CROWN margin lower
bounds agree within --rtol (relative to the bound's magnitude, with an absolute floor of
rtol) and that the verified counts are equal, then times both, interleaved (ours, theirs,
ours, theirs, ...) with --repeats rounds, and reports medians and the ratio ours /
auto_LiRPA (< 1: ours is faster).

--float64 runs BOTH libraries again in float64 on the same images (a double copy of the
model, double inputs and C; auto_LiRPA's graph parsed from the double model and run with
torch's default dtype set to float64, because some of its operators create work tensors
with the default dtype, e.g. max pooling's slope maps) and reports how far apart the two
float64 bounds are (two implementations of the same bound: ~1e-12) next to the float32
gap, and how far each library's float32 bound is from its own float64 bound (its float32
rounding). Timing stays float32. With --explain (CROWN only), per image in float64: our
last backward pass run on auto_LiRPA's own intermediate bounds (same relaxation => ~1e-15),
and the max-pool windows where the two libraries pick a different input as the window's
largest lower bound (DeepPoly's lower line max >= x_i), and how many of those are ties
(lower bounds equal within 1e-12: mathematically equal, the pick decided by last-bit
rounding; e.g. windows over a flat background).

auto_LiRPA is never a dependency of smoothguard: run this file with an interpreter that
has auto_LiRPA and torch installed, e.g. (auto_LiRPA 0.7.1 from its source; its
setup.py asks for torch < 2.9 and torchvision, which --no-deps skips):

    python3 -m venv /tmp/lirpa
    /tmp/lirpa/bin/pip install torch==2.13.0 numpy packaging appdirs pyyaml tqdm graphviz wheel
    /tmp/lirpa/bin/pip install --no-deps --no-build-isolation PATH/TO/auto_LiRPA-source
    /tmp/lirpa/bin/python benchmarks/bench_verify.py --lenet runs/ibp/model.pt --float64 --explain

(PyPI's auto-lirpa stops at 0.3, from 2022.) Where pip cannot build the source ("invalid
command 'bdist_wheel'": no wheel package in the venv), put it on the path instead: ``echo PATH/TO/auto_LiRPA-source >
/tmp/lirpa/lib/python3.11/site-packages/auto_lirpa_src.pth``; a second .pth naming this
checkout's .venv site-packages reuses its torch instead of downloading one.

smoothguard is imported from this checkout's src/ (its own dependencies: torch, numpy).
Timing uses one thread by default (--threads) so both libraries see the same CPU.
"""

from __future__ import annotations

import argparse
import contextlib
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
    C = margin_spec(y, 10, x.dtype)
    with torch.no_grad(), default_dtype(x.dtype):
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
        lb, _ = spec_bounds(to_ops(model, tuple(x.shape[1:])), x, margin_spec(y, 10, x.dtype), eps, "linf",
                            method, upper=False)
    lb = lb.clone()
    lb[torch.arange(len(y)), y] = float("inf")
    return lb


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default dtype set to dtype inside (auto_LiRPA 0.7.1's max pooling and ReLU
    create some work tensors with torch.zeros(shape), i.e. in the default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def lirpa_module(model: nn.Module, dtype: torch.dtype):
    """auto_LiRPA's graph of model (a copy converted to dtype), parsed once."""
    from auto_LiRPA import BoundedModule

    m = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
    with default_dtype(dtype):
        return BoundedModule(m, torch.zeros(1, 1, 28, 28, dtype=dtype), device="cpu")


def explain_crown(model64: nn.Module, bm64, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
    """One image, float64: auto_LiRPA's CROWN margins, and where ours differ from them (see --explain)."""
    import torch.nn.functional as F

    from smoothguard.verification.bounds import MAX_FLOATS, _backward_lower, _intermediate, _Problem, input_box
    from smoothguard.verification.layers import MaxPool

    theirs = lirpa_margins(bm64, x, y, eps, "CROWN")
    ops = to_ops(model64, tuple(x.shape[1:]))
    nonlin = [i for i, op in enumerate(ops) if not op.linear]
    kinds = {"ReLU": "BoundRelu", "MaxPool2d": "BoundMaxPool"}
    nodes = [n for n in bm64.nodes() if type(n).__name__ in kinds.values()]  # graph order
    if [kinds[ops[i].name] for i in nonlin] != [type(n).__name__ for n in nodes]:
        raise SystemExit("--explain: the nonlinear layers of the two libraries do not pair up")
    their_inter = {}
    for i, n in zip(nonlin, nodes):
        src = n.inputs[0]
        if src.lower is None or src.upper is None:
            raise SystemExit(f"--explain: auto_LiRPA kept no bounds for the input of {n.name}")
        shape = (1, *ops[i].in_shape)
        their_inter[i] = (src.lower.detach().reshape(shape), src.upper.detach().reshape(shape))
    lo, hi = input_box(x, eps, "linf")
    p = _Problem(ops, x, lo, hi, eps, "linf", MAX_FLOATS)
    C = margin_spec(y, 10, x.dtype).reshape(1, 10, *ops[-1].out_shape)
    with torch.no_grad():
        inter, _ = _intermediate(p, "crown", len(ops))
        on_theirs = _backward_lower(p, len(ops), C, their_inter)
    on_theirs[0, y] = float("inf")
    flips = ties = 0
    for i in nonlin:
        op = ops[i]
        if not isinstance(op, MaxPool):
            continue
        ours_lo = inter[i][0]
        ia = F.max_pool2d(ours_lo, op.kernel, op.stride, op.padding, op.dilation, return_indices=True)[1].flatten(2)
        ib = F.max_pool2d(their_inter[i][0], op.kernel, op.stride, op.padding, op.dilation,
                          return_indices=True)[1].flatten(2)
        d = ia != ib
        va, vb = ours_lo.flatten(2).gather(2, ia), ours_lo.flatten(2).gather(2, ib)
        flips += int(d.sum())
        ties += int((d & ((va - vb).abs() <= 1e-12 * va.abs().clamp(min=1.0))).sum())
    return theirs, {"ours_on_their_intermediate": float(rel_diff(on_theirs, theirs)[0]), "pool_argmax_flips": flips,
                    "flips_at_ties": ties}


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags) or "none of avx2/avx512f/avx512_bf16"


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: the largest |a - b| / max(|b|, 1) over its finite margins."""
    a, b = a.double(), b.double()
    d = ((a - b).abs() / b.abs().clamp(min=1.0)).nan_to_num(0.0)
    return d.masked_fill(~torch.isfinite(a), 0.0).amax(1)


def per_image(fn, x_all: torch.Tensor, y_all: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([fn(x_all[i:i + 1], y_all[i:i + 1]) for i in range(n)])


def batched(fn, x_all: torch.Tensor, y_all: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(x_all[s:s + batch], y_all[s:s + batch]) for s in range(0, len(x_all), batch)])


def worst(d: torch.Tensor) -> str:
    return f"{float(d.max()):.1e} (image {int(d.argmax())})" if d.numel() else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lenet", default=None, help="a LeNet checkpoint (e.g. an ibp-trained one); default: random")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50, help="images per bound call (timing)")
    ap.add_argument("--per-image", type=int, default=20,
                    help="compare the first N images also one at a time (auto_LiRPA's batched bound of an image "
                         "depends on its batch-mates)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--methods", default="ibp,crown", help="comma-separated: ibp, crown")
    ap.add_argument("--only", default=None, help="run only the models whose name contains this (e.g. lenet)")
    ap.add_argument("--float64", action="store_true",
                    help="also bound with both libraries in float64 (model, inputs and C in double) and compare")
    ap.add_argument("--explain", action="store_true",
                    help="with --float64, CROWN: decompose the float64 difference (max-pool ties; see the docstring)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    methods = args.methods.split(",")
    bad = sorted(set(methods) - {"ibp", "crown"})
    if bad:
        ap.error(f"--methods: unknown {', '.join(bad)}; allowed: ibp, crown")
    if args.images < 1 or args.batch < 1 or args.repeats < 1 or args.per_image < 0:
        ap.error("--images, --batch and --repeats must be >= 1, --per-image >= 0")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import auto_LiRPA

    load0 = os.getloadavg()
    x_all, y_all = load_images(args.images)
    n1 = min(args.images, args.per_image)
    results = []
    for name, model, eps in models(args.lenet):
        if args.only and args.only not in name:
            continue
        bm = lirpa_module(model, torch.float32)  # one-time graph parse, not timed
        m64 = copy.deepcopy(model).double()
        bm64 = lirpa_module(m64, torch.float64) if args.float64 else None
        for method, lmethod in (("ibp", "IBP"), ("crown", "CROWN")):
            if method not in methods:
                continue
            ours32 = lambda x, y: ours_margins(model, x, y, eps, method)  # noqa: E731
            theirs32 = lambda x, y: lirpa_margins(bm, x, y, eps, lmethod)  # noqa: E731
            # agreement on every image: batched, and one image at a time for auto_LiRPA, which
            # refines the neurons unstable for *any* image of a batch (ours: per image, so our
            # batched bounds stand for our per-image ones)
            o32 = batched(ours32, x_all, y_all, args.batch)
            t32 = batched(theirs32, x_all, y_all, args.batch)
            t32_1 = per_image(theirs32, x_all, y_all, n1)
            d32_b, d32_1 = rel_diff(o32, t32), rel_diff(o32[:n1], t32_1)
            # our bounds in float64: how far float32 rounding moves each library's float32 bound
            o64 = batched(lambda x, y: ours_margins(m64, x.double(), y, eps, method), x_all, y_all, args.batch)
            row = {"model": name, "eps": eps, "method": method, "images": args.images, "batch": args.batch,
                   "per_image": n1,
                   "equal_batched": bool((d32_b <= args.rtol).all()), "max_rel_diff_batched": float(d32_b.max()),
                   "equal_per_image": bool((d32_1 <= args.rtol).all()),
                   "max_rel_diff_per_image": float(d32_1.max()) if n1 else None,
                   "rel_diff_per_image": [float(v) for v in d32_1],
                   "ours_vs_f64": float(rel_diff(o32, o64).max()),
                   "auto_lirpa_vs_f64": float(rel_diff(t32_1, o64[:n1]).max()) if n1 else None,
                   "verified_ours": int((o32.min(1).values > 0).sum()),
                   "verified_auto_lirpa": int((t32.min(1).values > 0).sum())}
            line64 = ""
            if args.float64:
                theirs64 = lambda x, y: lirpa_margins(bm64, x.double(), y, eps, lmethod)  # noqa: E731
                t64 = batched(theirs64, x_all, y_all, args.batch)
                explained = []
                if args.explain and method == "crown":
                    t64_1 = []
                    for i in range(n1):
                        t, info = explain_crown(m64, bm64, x_all[i:i + 1].double(), y_all[i:i + 1], eps)
                        t64_1.append(t)
                        explained.append(info)
                    t64_1 = torch.cat(t64_1)
                else:
                    t64_1 = per_image(theirs64, x_all, y_all, n1)
                d64_b, d64_1 = rel_diff(o64, t64), rel_diff(o64[:n1], t64_1)
                assert t64.dtype == o64.dtype == torch.float64
                row.update({
                    "equal_batched_f64": bool((d64_b <= args.rtol).all()),
                    "max_rel_diff_batched_f64": float(d64_b.max()),
                    "equal_per_image_f64": bool((d64_1 <= args.rtol).all()),
                    "max_rel_diff_per_image_f64": float(d64_1.max()) if n1 else None,
                    "rel_diff_per_image_f64": [float(v) for v in d64_1],
                    # each library's float32 bound against its own float64 bound
                    "auto_lirpa_vs_own_f64": float(rel_diff(t32_1, t64_1).max()) if n1 else None,
                    "auto_lirpa_vs_own_f64_batched": float(rel_diff(t32, t64).max()),
                    "rel_diff_auto_lirpa_vs_own_f64_per_image": [float(v) for v in rel_diff(t32_1, t64_1)],
                    "rel_diff_ours_vs_own_f64_per_image": [float(v) for v in rel_diff(o32[:n1], o64[:n1])],
                    "verified_ours_f64": int((o64.min(1).values > 0).sum()),
                    "verified_auto_lirpa_f64": int((t64.min(1).values > 0).sum())})
                if explained:
                    no_flip = [float(d) for d, e in zip(d64_1, explained) if e["pool_argmax_flips"] == 0]
                    row["explain_f64"] = {
                        "ours_on_their_intermediate_max": max(e["ours_on_their_intermediate"] for e in explained),
                        "pool_argmax_flips": sum(e["pool_argmax_flips"] for e in explained),
                        "flips_at_ties": sum(e["flips_at_ties"] for e in explained),
                        "images_with_flips": sum(e["pool_argmax_flips"] > 0 for e in explained),
                        "max_rel_diff_images_without_flips": max(no_flip) if no_flip else None,
                        "per_image": explained}
                line64 = (f"\n    float64: equal(batched) {row['equal_batched_f64']!s:5s} ({d64_b.max():.1e}) "
                          f"equal(per image, {n1}) {row['equal_per_image_f64']!s:5s} ({worst(d64_1)}); "
                          f"float32 vs own float64 (per image): ours {worst(rel_diff(o32[:n1], o64[:n1]))}, "
                          f"auto_LiRPA {worst(rel_diff(t32_1, t64_1))}; batched auto_LiRPA "
                          f"{row['auto_lirpa_vs_own_f64_batched']:.1e}; verified "
                          f"{row['verified_ours_f64']}/{row['verified_auto_lirpa_f64']}")
                if explained:
                    e = row["explain_f64"]
                    nf = e["max_rel_diff_images_without_flips"]
                    line64 += (f"\n    explain (float64, per image): ours on auto_LiRPA's intermediate bounds "
                               f"{e['ours_on_their_intermediate_max']:.1e}; max-pool argmax picks that differ "
                               f"{e['pool_argmax_flips']} ({e['flips_at_ties']} at ties) on {e['images_with_flips']} "
                               f"of {n1} images; images without one: max rel diff "
                               f"{'-' if nf is None else f'{nf:.1e}'}")
            # timing (float32): interleaved rounds over the same batches
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                for fn, acc in ((ours32, t_ours), (theirs32, t_theirs)):
                    t0 = time.perf_counter()
                    for s in range(0, args.images, args.batch):
                        fn(x_all[s:s + args.batch], y_all[s:s + args.batch])
                    acc.append(time.perf_counter() - t0)
            mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
            row.update({"seconds_ours": mo, "seconds_auto_lirpa": mt, "ratio": mo / mt,
                        "seconds_ours_all": t_ours, "seconds_auto_lirpa_all": t_theirs})
            results.append(row)
            print(f"{name:32s} eps {eps:<6g} {method:5s} equal(batched) {row['equal_batched']!s:5s} "
                  f"(max rel diff {d32_b.max():.1e}) equal(per image, {n1}) {row['equal_per_image']!s:5s} "
                  f"({worst(d32_1)}; vs our float64: ours {row['ours_vs_f64']:.1e}, auto_LiRPA "
                  f"{row['auto_lirpa_vs_f64'] if n1 else float('nan'):.1e})  verified "
                  f"{row['verified_ours']}/{row['verified_auto_lirpa']}  time ours {mo:.3f} s, auto_LiRPA "
                  f"{mt:.3f} s, ratio {mo / mt:.2f}{line64}", flush=True)
            if args.json:  # after every row, so that an interrupted run keeps what it measured
                Path(args.json).write_text(json.dumps({"summary": None, "rows": results}, indent=2) + "\n")
    load1 = os.getloadavg()
    summary = (f"auto_LiRPA {auto_LiRPA.__version__}, torch {torch.__version__}, threads {args.threads}, "
               f"{args.images} images, batch {args.batch}, medians of {args.repeats} interleaved rounds; "
               f"CPU flags: {cpu_flags()}; load average (1/5/15 min) at start "
               f"{'/'.join(f'{v:.1f}' for v in load0)}, at end {'/'.join(f'{v:.1f}' for v in load1)}")
    print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
