"""``smoothguard demo``: certify the embedded model on bundled images, print the table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from smoothguard.cli import certify as certify_cmd

HELP = "certify the embedded model on 100 bundled images (sigma 0.25, n 10,000): table, plot, TSV"
DESCRIPTION = (
    "The hello world of smoothguard. Needs no data and no arguments: certifies the embedded "
    "Gaussian-trained Fashion-MNIST LeNet with randomized smoothing (Cohen et al. CERTIFY, "
    "sigma 0.25, n0 100, n 10,000, alpha 0.001) on 100 of the bundled test images, prints the "
    "certified-accuracy table and writes the result TSV and a plot into --out-dir. Rerunning "
    "resumes (or reuses) the TSV."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="smoothguard-demo", help="folder for the TSV and the plot")
    p.add_argument("--count", type=int, default=100, help="number of bundled images to certify (at most 500)")
    p.add_argument("--n", type=int, default=10_000, help="noise samples per image for the estimate")
    p.add_argument("--batch", type=int, default=400, help="noisy images per forward pass")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32 or bf16 autocast")


def run(args: argparse.Namespace) -> int:
    from smoothguard.evaluation import analyze_files
    from smoothguard.evaluation.plots import plot_certified_accuracy

    if not 1 <= args.count <= 500:
        raise ValueError(f"--count must be between 1 and 500 (the bundled images), got {args.count}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tsv = out_dir / "certify.tsv"
    skip = max(1, 500 // args.count)
    # certify's own parser fills every option it has, so the demo cannot miss one certify gains
    from smoothguard.cli.common import common_parent

    parser = argparse.ArgumentParser(prog="smoothguard certify", parents=[common_parent()])
    certify_cmd.add_arguments(parser)
    ns = parser.parse_args(["--data", "demo", "--skip", str(skip), "--max", str(args.count), "--sigma", "0.25",
                            "--alpha", "0.001", "--n0", "100", "--n", str(args.n), "--batch", str(args.batch),
                            "--precision", args.precision, "--out", str(tsv), "--seed", str(args.seed)])
    # the common options were applied already (threads, device, torchrun world)
    ns.threads, ns.device, ns.command = args.threads, args.device, "certify"
    ns.world, ns.argv = getattr(args, "world", None), ["certify"]
    print(f"Certifying {args.count} bundled Fashion-MNIST test images with the embedded LeNet "
          f"(sigma 0.25, n {args.n}, alpha 0.001) ...", file=sys.stderr)
    t0 = time.perf_counter()
    certify_cmd.run(ns)
    wall = time.perf_counter() - t0
    table = analyze_files([tsv], radii=[0.0, 0.25, 0.5, 0.75, 1.0])
    print()
    print(table.render("table"), end="")
    from smoothguard.evaluation import read_results

    res = read_results(tsv)
    paths = plot_certified_accuracy([res], ["embedded LeNet, sigma=0.25"], out_dir / "certified_accuracy")
    print(f"\nwall time {wall:.1f} s")
    print(f"results: {tsv}")
    print("plot:    " + ", ".join(str(p) for p in paths))
    print("next:    smoothguard analyze " + str(tsv) + "   |   smoothguard certify --help")
    return 0
