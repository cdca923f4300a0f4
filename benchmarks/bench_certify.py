"""Certify speed, side by side in one run: our SmoothedClassifier vs the straightforward
implementation of Cohen et al.'s CERTIFY, and the bare forward pass.

    python benchmarks/bench_certify.py [--images 20] [--n 10000] [--threads 2] [--retain-memory]
    python benchmarks/bench_certify.py --defaults [--rounds 3] [--images 20] [--n 10000] [--threads 2]

``--defaults`` (issue 18): what a user gets without knowing a knob, against Cohen et al.'s
straightforward implementation: the README's snippet ``SmoothedClassifier(model, 10, 0.25)``
with its default speed configuration (smoothguard.runtime.fastest_exact, printed), the same
with one worker (the rule's alternative), and the command line ``smoothguard certify`` in a
subprocess (its per-row ``time`` column summed, and its whole wall time with the start-up).
The variants run in rotating order, ``--rounds`` times; the library's and the CLI's
predictions and radii must be identical (same per-image seeds, same counts), else it stops.

For each model (the embedded LeNet; a Madry CNN trained briefly with Gaussian noise):
  * bare forward: model(batch of 400) in fp32, contiguous NCHW, images/s;
  * straightforward: per image, x.repeat(400) + sigma * randn, argmax, bincount (fp32, NCHW,
    batch 400, torch.no_grad) -- CERTIFY with n0 = 100, n = N;
  * ours fp32: SmoothedClassifier (channels_last, inference_mode, several images per batch);
  * ours fp32 + jit: the same with jit=True (TorchScript freeze: conv+ReLU fusion);
  * ours fp32 + jit + 2 workers: forward passes in 2 threads of 1 intra-op thread each while
    the main thread draws the next noise (identical counts);
  * ours bf16: precision="bf16" (autocast + channels_last), on the first --bf16-images images
    (on CPUs without native bf16 it is far slower, so it can be timed on fewer images);
  * ours bf16 + 2 workers: the same in the two-thread pipeline.
The variants are interleaved image by image so machine noise hits all of them alike.
With --retain-memory the whole process keeps freed memory (what the smoothguard CLI does):
glibc then stops page-faulting every big activation in afresh, which speeds up the
straightforward NCHW rows the most (1.28x for Madry CNN on the AVX-512 machine).
Prints a Markdown table (wall time, noisy images/s, speed-up vs straightforward, fraction of
predictions/radii that differ from the straightforward run's (independent noise), and, for
our variants, which all draw the same noise, the predictions that differ from ours fp32 and
the votes moved: sum |counts - counts_fp32| / 2 over all samples, a lower bound on the
fraction of noisy images whose vote changed, exact unless changes cancel within a class).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from smoothguard.data import load_dataset
from smoothguard.models import get_model, load_checkpoint, load_default_model, save_checkpoint
from smoothguard.smoothing import SmoothedClassifier
from smoothguard.smoothing.stats import lower_confidence_bound, radius_from_bound
from smoothguard.training import TrainConfig, Trainer, get_objective
from smoothguard.utils import retain_freed_memory

SIGMA, ALPHA, N0 = 0.25, 0.001, 100


def straightforward_certify(model, x, n0, n, alpha, sigma, batch=400):
    """Cohen et al.'s CERTIFY (n0 selection samples, then n estimation samples), written
    the obvious way (the reference for speed)."""

    def sample(num):
        counts = torch.zeros(10, dtype=torch.long, device=x.device)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                b = min(batch, remaining)
                xb = x.unsqueeze(0).repeat(b, 1, 1, 1)
                preds = model(xb + torch.randn_like(xb) * sigma).argmax(1)
                counts += torch.bincount(preds, minlength=10)
                remaining -= b
        return counts

    c_a = int(sample(n0).argmax())
    n_a = int(sample(n)[c_a])
    p = lower_confidence_bound(n_a, n, alpha)
    return (c_a, float(radius_from_bound(p, sigma))) if p >= 0.5 else (-1, 0.0)


def madry_model(cache: Path, root=None):
    if cache.exists():
        return load_checkpoint(cache)[0]
    train = load_dataset("fashion-mnist", "train", root=root).subset(max_count=10_000)
    info = train.info
    torch.manual_seed(0)
    model = get_model("madry_cnn", 10, info.input_shape, info.mean, info.std)
    Trainer(model, get_objective("gaussian", noise_sd=SIGMA), TrainConfig(epochs=1, lr=0.01)).fit(train)
    meta = {"arch": "madry_cnn", "num_classes": 10, "in_shape": list(info.input_shape), "mean": list(info.mean),
            "std": list(info.std), "note": "benchmark model: 1 epoch gaussian on 10k images"}
    save_checkpoint(cache, model, meta)
    return model.eval()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model, shape, batch=400, reps=20):
    device = next(model.parameters()).device
    x = torch.rand(batch, *shape, device=device)
    with torch.no_grad():
        model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        _sync(device)
    return batch * reps / (time.perf_counter() - t0)


def bench(name, model, images, n, ours_batch, bf16_images):
    import copy

    device = next(model.parameters()).device
    base = copy.deepcopy(model).eval()  # contiguous weights for the reference
    variants = {
        "ours fp32": SmoothedClassifier(copy.deepcopy(model), 10, SIGMA),
        "ours fp32 + jit": SmoothedClassifier(copy.deepcopy(model), 10, SIGMA, jit=True),
        "ours fp32 + jit + 2 workers": SmoothedClassifier(copy.deepcopy(model), 10, SIGMA, jit=True, workers=2),
        "ours bf16": SmoothedClassifier(copy.deepcopy(model), 10, SIGMA, precision="bf16"),
        "ours bf16 + 2 workers": SmoothedClassifier(copy.deepcopy(model), 10, SIGMA, precision="bf16", workers=2),
    }
    if device.type != "cpu":  # the worker pipeline overlaps CPU noise drawing with CPU forwards
        del variants["ours fp32 + jit + 2 workers"], variants["ours bf16 + 2 workers"]
    fwd = bare_forward(base, images.shape[1:])
    times = {"straightforward": [], **{k: [] for k in variants}}
    out = {k: [] for k in times}
    counts = {k: [] for k in variants}  # (selection, estimation) counts, for same-noise comparisons
    for i in range(len(images)):
        x = images[i].to(device)
        t0 = time.perf_counter()
        out["straightforward"].append(straightforward_certify(base, x, N0, n, ALPHA, SIGMA))
        times["straightforward"].append(time.perf_counter() - t0)
        for k, g in variants.items():
            if k.startswith("ours bf16") and i >= bf16_images:
                continue
            threads = torch.get_num_threads()
            if g.workers > 1:  # the workers share the cores instead of each op using all of them
                torch.set_num_threads(max(1, threads // g.workers))
            _sync(device)
            t0 = time.perf_counter()
            r = g.certify_batch(x[None], N0, n, ALPHA, ours_batch, seeds=[i])
            times[k].append(time.perf_counter() - t0)
            torch.set_num_threads(threads)
            out[k].append((int(r.prediction[0]), float(r.radius[0])))
            counts[k].append(torch.cat([r.counts_selection[0], r.counts_estimation[0]]))
    rows = [f"| {name} | bare forward (batch 400, fp32 NCHW) | - | - | {fwd:,.0f} | - | - | - |"]
    ref = out["straightforward"]
    for k, ts in times.items():
        m = len(ts)
        if m == 0:  # --bf16-images 0: bf16 not timed
            continue
        t = sum(ts)
        speedup = sum(times["straightforward"][:m]) / t
        changed = np.mean([a[0] != b[0] for a, b in zip(out[k], ref)])
        dr = np.mean([abs(a[1] - b[1]) for a, b in zip(out[k], ref)])
        same = "-"
        if k in counts:  # every variant of ours draws the same noise (seeds=[i]) as ours fp32
            mine, fp32 = torch.stack(counts[k]), torch.stack(counts["ours fp32"][:m])
            moved = float((mine - fp32).abs().sum()) / 2 / (m * (N0 + n))
            flips = np.mean([a[0] != b[0] for a, b in zip(out[k], out["ours fp32"])])
            same = f"{flips:.0%} / {moved:.4%}"
        rows.append(f"| {name} | {k} | {m} | {t:.2f} | {m * (N0 + n) / t:,.0f} | {speedup:.2f}x | "
                    f"{changed:.0%} / {dr:.4f} | {same} |")
    return rows


def _cli_certify(model_arg, root, images, n, threads, out):
    """``smoothguard certify`` in its own process: (rows, summed time column, wall seconds)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "smoothguard", "certify", *model_arg, "--data", "fashion-mnist", "--skip", "20",
           "--max", str(images), "--n0", str(N0), "--n", str(n), "--alpha", str(ALPHA), "--sigma", str(SIGMA),
           "--threads", str(threads), "--seed", "0", "--out", str(out), "--overwrite"]
    if root:
        cmd += ["--root", str(root)]
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [line.split("\t") for line in Path(out).read_text().splitlines()[1:]]
    rows.sort(key=lambda r: int(r[0]))
    return [(int(r[2]), float(r[3])) for r in rows], sum(float(r[-1]) for r in rows), wall, " ".join(cmd[1:])


def defaults(name, model, model_arg, data, n, threads, rounds, root, tmp):
    """The --defaults section for one model: rows of a Markdown table."""
    import copy

    from smoothguard.smoothing import image_seed

    images, indices = data.images, data.indices.tolist()
    seeds = [image_seed(0, i) for i in indices]  # what the CLI draws with --seed 0
    base = copy.deepcopy(model).eval()
    lib = SmoothedClassifier(copy.deepcopy(model), 10, SIGMA)  # the README's snippet
    one = SmoothedClassifier(copy.deepcopy(model), 10, SIGMA, workers=1)
    print(f"{name}: library default speed configuration: {lib.speed}", flush=True)
    times = {k: [] for k in ("cohen", "library", "library 1 worker", "cli rows", "cli wall")}
    cmd = None
    for r in range(rounds):
        order = ["cohen", "library", "library 1 worker", "cli"]
        order = order[r % 4:] + order[:r % 4]  # rotate: no variant always runs first or last
        for k in order:
            if k == "cohen":
                t0 = time.perf_counter()
                for i in range(len(images)):
                    straightforward_certify(base, images[i], N0, n, ALPHA, SIGMA)
                times[k].append(time.perf_counter() - t0)
            elif k.startswith("library"):
                g = lib if k == "library" else one
                t0 = time.perf_counter()
                got = []
                for i in range(len(images)):  # one image per call, as the README's snippet
                    res = g.certify_batch(images[i][None], N0, n, ALPHA, seeds=[seeds[i]])
                    got.append((int(res.prediction[0]), float(res.radius[0])))
                times[k].append(time.perf_counter() - t0)
                if k == "library":
                    lib_rows = got
                elif got != lib_rows:
                    raise SystemExit(f"{name}: one worker and the default differ: {got} vs {lib_rows}")
            else:
                rows, per_row, wall, cmd = _cli_certify(model_arg, root, len(images), n, threads, tmp / "c.tsv")
                times["cli rows"].append(per_row)
                times["cli wall"].append(wall)
                cli_rows = rows
        if cli_rows != lib_rows:
            raise SystemExit(f"{name}: the CLI's rows differ from the library's: {cli_rows} vs {lib_rows}")
    m = len(images) * (N0 + n)
    out = []
    for k, ts in times.items():
        ratios = [c / t for c, t in zip(times["cohen"], ts)]
        out.append(f"| {name} | {k} | {' / '.join(f'{t:.1f}' for t in ts)} | {m / float(np.median(ts)):,.0f} | "
                   f"{' / '.join(f'{x:.2f}x' for x in ratios)} | **{float(np.median(ratios)):.2f}x** |")
    print(f"{name}: identical predictions and radii, library and CLI, in all {rounds} rounds; CLI command: {cmd}",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--defaults", action="store_true",
                    help="library defaults and the CLI against the straightforward implementation (issue 18)")
    ap.add_argument("--rounds", type=int, default=3, help="--defaults: interleaved repeats")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=400, help="forward batch of our implementation")
    ap.add_argument("--bf16-images", type=int, default=5, help="images on which bf16 is timed")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default="lenet,madry_cnn",
                    help="lenet (embedded), madry_cnn (1 epoch Gaussian), cifar_resnet20/cifar_resnet110 (random "
                         "weights on the 1x28x28 images: for speed only)")
    ap.add_argument("--root", default=None, help="Fashion-MNIST directory (default: the Debian package's)")
    ap.add_argument("--retain-memory", action="store_true",
                    help="keep freed memory in the process (smoothguard.utils.retain_freed_memory, what the CLI "
                         "does): process-wide, so it applies to every row, the straightforward one included")
    args = ap.parse_args()
    if args.retain_memory and not retain_freed_memory():
        raise SystemExit("--retain-memory: not available here (needs Linux with glibc)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset("fashion-mnist", "test", root=args.root).subset(skip=20, max_count=args.images)
    models = {}
    for name in args.models.split(","):
        if name == "lenet":
            models[name] = load_default_model()[0]
        elif name == "madry_cnn":
            models[name] = madry_model(Path("runs/bench_madry_cnn.pt"), args.root)
        else:
            torch.manual_seed(0)
            info = data.info
            models[name + " (random weights)"] = get_model(name, 10, info.input_shape, info.mean, info.std).eval()
    if args.defaults:
        import tempfile

        from smoothguard import runtime

        print(f"torch {torch.__version__}, {args.threads} threads, CPU flags {runtime.cpu_flags()}, sigma {SIGMA}, "
              f"n0 {N0}, n {args.n}, {args.images} Fashion-MNIST test images (--skip 20), {args.rounds} rounds\n")
        table = ["| model | variant | wall s per round | noisy images/s (median round) | speed-up vs Cohen per round "
                 "| median |", "|---|---|---|---:|---|---:|"]
        with tempfile.TemporaryDirectory() as tmp:
            for name, model in models.items():
                arg = [] if name == "lenet" else ["--model", "runs/bench_madry_cnn.pt"]
                table += defaults(name, model, arg, data, args.n, args.threads, args.rounds, args.root, Path(tmp))
        print("\n".join(table))
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    memory = "freed memory retained (whole process)" if args.retain_memory else "default allocator"
    print(f"torch {torch.__version__}, {where}, {memory}, sigma {SIGMA}, n0 {N0}, n {args.n}, "
          f"{args.images} Fashion-MNIST test images (--skip 20), our batch {args.batch}\n")
    print("| model | variant | images | wall s | noisy images/s | speed-up vs straightforward (same images) "
          "| predictions changed / mean abs radius change vs straightforward (independent noise) "
          "| predictions changed / votes moved vs ours fp32 (same noise) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        for row in bench(name, model.to(device), data.images, args.n, args.batch, args.bf16_images):
            print(row, flush=True)


if __name__ == "__main__":
    main()
