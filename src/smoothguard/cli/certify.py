"""``smoothguard certify``: Cohen et al.'s CERTIFY on every selected image."""

from __future__ import annotations

import argparse

from smoothguard.cli._smoothing_run import (
    ADAPTIVE_GROUP,
    KEY_SETTINGS,
    add_smoothing_arguments,
    build_smoothed,
    run_rows,
)
from smoothguard.contract import ContractError, check_int
from smoothguard.evaluation.formats import ADAPTIVE_CERTIFY_COLUMNS, CERTIFY_COLUMNS

DEFAULT_N = 100_000

HELP = "certify the smoothed classifier (Cohen et al. CERTIFY): certified radius per image, TSV rows"
DESCRIPTION = (
    "For each selected image: predicted class of the smoothed classifier and a certified radius "
    "(pixel units; l2 for --noise gaussian, l1 for uniform and laplace: the sidecar's 'norm'), valid with "
    "probability >= 1 - alpha. Rows: idx label predict radius correct time "
    "(Cohen et al.'s format; predict -1 = abstain). With --out, rows are flushed one by one and "
    "rerunning resumes after the last complete row."
)
COLUMNS = list(CERTIFY_COLUMNS)  # declared once, in evaluation/formats.py


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_smoothing_arguments(p)
    p.add_argument("--n0", type=int, default=100, help="noise samples to select the top class")
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=None,
                   help=f"noise samples to estimate its probability (default {DEFAULT_N:,}; under torchrun write "
                        "--n-samples); not with --radii, whose budget is --n-max")
    g = p.add_argument_group("adaptive certification at table radii (fewer samples, same guarantee)")
    g.add_argument("--radii", default=None,
                   help="comma-separated radii in the noise's norm (l2 for gaussian, l1 for uniform and laplace), "
                        "e.g. 0.25,0.5,0.75: certify the largest of them per image with a sequential test that stops "
                        "as soon as the answer is clear (rows add n_used; each row is written as its image finishes)")
    g.add_argument("--n-max", type=int, default=100_000, help="adaptive mode: most estimation samples per image")
    g.add_argument("--futility-alpha", type=float, default=0.05,
                   help="adaptive mode: stop early once a larger radius is out of reach with this confidence "
                        "level (does not affect the guarantee; smaller = closer to fixed n_max, more samples)")
    g.add_argument("--sequential", choices=["cs", "bonferroni"], default="cs",
                   help="adaptive mode's test: 'cs' (default) an anytime-valid confidence sequence looked at after "
                        "every 100 samples at no cost in alpha; 'bonferroni' Clopper-Pearson at alpha / (number of "
                        "looks) on a geometric schedule (the method is a resume key; see BENCHMARKS.md)")
    g.add_argument("--budget", type=int, default=None,
                   help="anytime mode without a grid: up to this many estimation samples per image, stopping once "
                        "the certified radius (confidence-sequence bound) can no longer grow by more than "
                        "--tolerance; rows add n_used. Not with --n or --radii")
    g.add_argument("--tolerance", type=float, default=0.01,
                   help="anytime mode (--budget): stop when the radius could grow by at most this much (in the noise's "
                        "norm, pixel units)")


def run(args: argparse.Namespace) -> int:
    check_int("--n0", args.n0, minimum=1)
    if getattr(args, "budget", None) is not None:
        if args.n is not None or getattr(args, "radii", None):
            raise ContractError("--budget (anytime certification) replaces --n and --radii; drop "
                                + ("--n" if args.n is not None else "--radii"))
        return _run_anytime(args)
    if getattr(args, "radii", None):
        if args.n is not None:  # it would be silently ignored: the adaptive budget is --n-max
            raise ContractError(f"--n {args.n} has no effect with --radii (adaptive certification); its sample "
                                "budget is --n-max. Drop --n, or drop --radii for fixed-n CERTIFY")
        return _run_adaptive(args)
    args.n = DEFAULT_N if args.n is None else check_int("--n", args.n, minimum=1)
    smoothed, settings, data = build_smoothed(args)
    settings.update(n0=args.n0, n=args.n, r_max=smoothed.noise.r_max(args.n, args.alpha))
    from smoothguard.smoothing import image_seed

    def compute(x, y, idx, emit):
        res = smoothed.certify_batch(x, args.n0, args.n, args.alpha, args.batch,
                                     seeds=[image_seed(args.seed, i) for i in idx.tolist()])
        for i, lab, p, r, t in zip(idx.tolist(), y.tolist(), res.prediction.tolist(), res.radius.tolist(),
                                   res.seconds.tolist()):
            emit([int(i), int(lab), int(p), float(r), int(p == lab)], t)

    # several images per call so the n0 selection samples of several images share a batch
    group = max(1, min(16, args.batch // max(args.n0, 1)))
    run_rows(args, data, COLUMNS, "certify", settings, KEY_SETTINGS + ["n0", "n"], group, compute, streaming=True)
    return 0


def _run_adaptive(args: argparse.Namespace) -> int:
    from smoothguard.cli.common import parse_floats
    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import (certify_adaptive, certify_sequential, cs_schedule, grid_schedule,
                                                 grid_thresholds)

    radii = parse_floats(args.radii, "--radii")
    if not radii or any(r < 0 for r in radii):
        raise ValueError(f"--radii needs radii >= 0, e.g. 0.25,0.5,0.75; got {args.radii!r}")
    if args.n_max < 1:
        raise ValueError(f"--n-max must be >= 1, got {args.n_max}")
    if not 0.0 < args.futility_alpha < 1.0:
        raise ValueError(f"--futility-alpha must be in (0, 1), got {args.futility_alpha}")
    smoothed, settings, data = build_smoothed(args)
    # the p_A each radius needs under the noise (checked here: before any file is written)
    thresholds = grid_thresholds(smoothed, sorted({0.0, *radii})).tolist()
    sequential = getattr(args, "sequential", "bonferroni")
    if sequential == "cs":
        schedule, method = cs_schedule(args.n_max), certify_sequential
    else:
        schedule, method = grid_schedule(args.n_max, thresholds, args.alpha), certify_adaptive
    settings.update(n0=args.n0, n=args.n_max, n_max=args.n_max, radii=sorted(radii), schedule=schedule,
                    futility_alpha=args.futility_alpha, mode="adaptive", sequential=sequential)

    def compute(x, y, idx, emit):
        method(smoothed, x, radii, args.n0, args.n_max, args.alpha, args.batch, schedule=schedule,
               seeds=[image_seed(args.seed, i) for i in idx.tolist()], futility_alpha=args.futility_alpha,
               on_done=_emit_certified(idx, y, emit))

    run_rows(args, data, ADAPTIVE_COLUMNS, "certify", settings, KEY_SETTINGS + ["n0", "n_max", "radii", "schedule", "futility_alpha", "mode", "sequential"],
             ADAPTIVE_GROUP, compute, streaming=True)
    return 0


ADAPTIVE_COLUMNS = list(ADAPTIVE_CERTIFY_COLUMNS)


def _emit_certified(idx, y, emit):
    """The adaptive procedures' ``on_done``: one row per image as soon as it finishes."""
    def on_done(positions, res):
        for j, pos in enumerate(positions.tolist()):
            p, lab = int(res.prediction[j]), int(y[pos])
            emit([int(idx[pos]), lab, p, float(res.radius[j]), int(p == lab), int(res.n_used[j])],
                 float(res.seconds[j]))
    return on_done


def _run_anytime(args: argparse.Namespace) -> int:
    """``certify --budget N``: a radius per image from the confidence sequence, no grid."""
    import math

    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import certify_anytime, cs_schedule

    budget = check_int("--budget", args.budget, minimum=1)
    if not (isinstance(args.tolerance, float) and math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise ContractError(f"--tolerance must be a finite radius >= 0 (pixel units), got {args.tolerance}")
    if not 0.0 < args.futility_alpha < 1.0:
        raise ContractError(f"--futility-alpha must be in (0, 1), got {args.futility_alpha}")
    smoothed, settings, data = build_smoothed(args)
    schedule = cs_schedule(budget)
    settings.update(n0=args.n0, n=budget, budget=budget, tolerance=args.tolerance, schedule=schedule,
                    futility_alpha=args.futility_alpha, mode="anytime", sequential="cs")

    def compute(x, y, idx, emit):
        certify_anytime(smoothed, x, args.n0, budget, args.alpha, args.batch, tolerance=args.tolerance,
                        schedule=schedule, seeds=[image_seed(args.seed, i) for i in idx.tolist()],
                        futility_alpha=args.futility_alpha, on_done=_emit_certified(idx, y, emit))

    run_rows(args, data, ADAPTIVE_COLUMNS, "certify", settings,
             KEY_SETTINGS + ["n0", "budget", "tolerance", "schedule", "futility_alpha", "mode", "sequential"],
             ADAPTIVE_GROUP, compute, streaming=True)
    return 0
