"""``smoothguard demo``: certify the embedded model on bundled images, print the table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dataclasses import dataclass

from smoothguard.cli._conventions import add_deprecated
from smoothguard.defaults import SAMPLING_BATCH, describe_batch

HELP = "certify the embedded model on 100 bundled images (sigma 0.25, n 10,000): table, plot, TSV"
DESCRIPTION = (
    "The hello world of smoothguard. Needs no data and no arguments: certifies the embedded "
    "Gaussian-trained Fashion-MNIST LeNet with randomized smoothing (Cohen et al. CERTIFY, "
    "sigma 0.25, n0 100, n 10,000, alpha 0.001) on 100 of the bundled test images, prints the "
    "certified-accuracy table and writes the result TSV and a plot into --out-dir. Rerunning "
    "resumes (or reuses) the TSV."
)
BUNDLED = 500  # images in the bundled demo set


@dataclass(frozen=True)
class DemoOptions:
    """What ``smoothguard demo`` does: certify ``max`` of the bundled images (evenly spread)
    with ``n`` noise samples each into ``out_dir``."""

    out_dir: Path = Path("smoothguard-demo")
    max: int = 100
    n: int = 10_000
    batch: int | None = None  # None: certify's default for the device (smoothguard.defaults.SAMPLING_BATCH)
    precision: str = "fp32"
    seed: int = 0
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 1 <= self.max <= BUNDLED:
            raise ValueError(f"--max must be between 1 and {BUNDLED} (the bundled images), got {self.max}")

    @property
    def tsv(self) -> Path:
        return Path(self.out_dir) / "certify.tsv"

    def certify_argv(self) -> list[str]:
        """The ``smoothguard certify`` command line the demo runs (as a user would type it)."""
        argv = ["certify", "--data", "demo", "--skip", str(max(1, BUNDLED // self.max)), "--max", str(self.max),
                "--sigma", "0.25", "--alpha", "0.001", "--n0", "100", "--n", str(self.n),
                "--precision", self.precision, "--out", str(self.tsv), "--seed", str(self.seed),
                "--device", self.device]
        return argv + (["--batch", str(self.batch)] if self.batch is not None else []) \
            + (["--threads", str(self.threads)] if self.threads is not None else [])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="smoothguard-demo", help="folder for the TSV and the plot")
    p.add_argument("--max", type=int, default=100, help=f"number of bundled images to certify (at most {BUNDLED})")
    add_deprecated(p, "demo", "max", type=int)
    p.add_argument("--n", type=int, default=10_000, help="noise samples per image for the estimate")
    p.add_argument("--batch", type=int, default=None,
                   help=f"noisy images per forward pass (default: {describe_batch(SAMPLING_BATCH)})")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32 or bf16 autocast")


def options(args: argparse.Namespace) -> DemoOptions:
    """The typed options of the command line (--device as the user wrote it)."""
    argv = list(getattr(args, "argv", []))
    device = next((a.split("=", 1)[1] for a in argv if a.startswith("--device=")), None) or \
        (argv[argv.index("--device") + 1] if "--device" in argv[:-1] else "auto")
    return DemoOptions(out_dir=Path(args.out_dir), max=args.max, n=args.n, batch=args.batch,
                       precision=args.precision, seed=args.seed, threads=args.threads, device=device)


def run(args: argparse.Namespace) -> int:
    return demo(options(args))


def demo(opts: DemoOptions) -> int:
    """Certify, print the table, draw the plot: returns certify's exit code (0 when it worked)."""
    from smoothguard.cli import main
    from smoothguard.evaluation import analyze_files, read_results
    from smoothguard.evaluation.plots import plot_certified_accuracy

    Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
    print(f"Certifying {opts.max} bundled Fashion-MNIST test images with the embedded LeNet "
          f"(sigma 0.25, n {opts.n}, alpha 0.001) ...", file=sys.stderr)
    t0 = time.perf_counter()
    rc = main(opts.certify_argv())  # certify's own parser and checks: the demo cannot miss an option it gains
    if rc != 0:
        return rc
    wall = time.perf_counter() - t0
    tsv = opts.tsv
    table = analyze_files([tsv], radii=[0.0, 0.25, 0.5, 0.75, 1.0])
    print()
    print(table.render("table"), end="")
    res = read_results(tsv)
    paths = plot_certified_accuracy([res], ["embedded LeNet, sigma=0.25"], Path(opts.out_dir) / "certified_accuracy")
    print(f"\nwall time {wall:.1f} s")
    print(f"results: {tsv}")
    print("plot:    " + ", ".join(str(p) for p in paths))
    print("next:    smoothguard analyze " + str(tsv) + "   |   smoothguard certify --help")
    return 0
