"""``smoothguard certify``: Cohen et al.'s CERTIFY on every selected image."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from smoothguard.cli._smoothing_run import (
    ADAPTIVE_GROUP,
    check_adaptive_budget,
    KEY_SETTINGS,
    SmoothingOptions,
    add_smoothing_arguments,
    build_smoothed,
    run_rows,
    smoothing_options,
    validate_smoothing_arguments,
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


def validate(args: argparse.Namespace) -> list[float] | None:
    """Check every option before any model or data is loaded (errors name the option, in the
    order certify always checked them: its own, then the smoothing options); returns the
    --radii as given (None: no --radii)."""
    import math

    check_int("--n0", args.n0, minimum=1)
    radii = None
    if args.budget is not None:
        if args.n is not None or args.radii:
            raise ContractError("--budget (anytime certification) replaces --n and --radii; drop "
                                + ("--n" if args.n is not None else "--radii"))
        check_int("--budget", args.budget, minimum=1)
        if not (isinstance(args.tolerance, float) and math.isfinite(args.tolerance) and args.tolerance >= 0):
            raise ContractError(f"--tolerance must be a finite radius >= 0 (pixel units), got {args.tolerance}")
        if not 0.0 < args.futility_alpha < 1.0:
            raise ContractError(f"--futility-alpha must be in (0, 1), got {args.futility_alpha}")
    elif args.radii:
        if args.n is not None:  # it would be silently ignored: the adaptive budget is --n-max
            raise ContractError(f"--n {args.n} has no effect with --radii (adaptive certification); its sample "
                                "budget is --n-max. Drop --n, or drop --radii for fixed-n CERTIFY")
        from smoothguard.cli.common import parse_floats

        radii = parse_floats(args.radii, "--radii")
        if not radii or any(r < 0 for r in radii):
            raise ValueError(f"--radii needs radii >= 0, e.g. 0.25,0.5,0.75; got {args.radii!r}")
        check_adaptive_budget(args.n_max, args.futility_alpha)
    elif args.n is not None:
        check_int("--n", args.n, minimum=1)
    validate_smoothing_arguments(args)
    return radii


@dataclass(frozen=True)
class CertifyOptions:
    """What ``smoothguard certify`` does with the smoothed classifier of ``smoothing``: per
    image, select the top class with ``n0`` samples, then, in one of three modes,

    * fixed (neither ``radii`` nor ``budget``): estimate its probability with ``n`` samples
      (Cohen et al.'s CERTIFY);
    * adaptive (``radii``, in the noise's norm): certify the largest of them with the
      sequential test ``sequential`` ("cs" or "bonferroni") on at most ``n_max`` samples;
    * anytime (``budget``): up to that many samples, stopping once the radius can no longer
      grow by more than ``tolerance``;

    the adaptive and anytime modes stop early at confidence ``futility_alpha``."""

    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    n0: int = 100
    n: int = DEFAULT_N
    radii: tuple[float, ...] | None = None
    n_max: int = 100_000
    futility_alpha: float = 0.05
    sequential: str = "cs"
    budget: int | None = None
    tolerance: float = 0.01


def options(args: argparse.Namespace) -> CertifyOptions:
    """The checked, typed options of the command line."""
    radii = validate(args)
    return CertifyOptions(smoothing=smoothing_options(args), n0=args.n0,
                          n=DEFAULT_N if args.n is None else args.n,
                          radii=None if radii is None else tuple(radii), n_max=args.n_max,
                          futility_alpha=args.futility_alpha, sequential=args.sequential, budget=args.budget,
                          tolerance=args.tolerance)


def run(args: argparse.Namespace) -> int:
    return certify(options(args))


def certify(opts: CertifyOptions) -> int:
    """Certify every selected image and write the rows: the exit code."""
    if opts.budget is not None:
        return _run_anytime(opts)
    if opts.radii:
        return _run_adaptive(opts)
    s = opts.smoothing
    smoothed, settings, data = build_smoothed(s)
    settings.update(n0=opts.n0, n=opts.n, r_max=smoothed.noise.r_max(opts.n, s.alpha))
    from smoothguard.smoothing import image_seed

    def compute(x, y, idx, emit):
        res = smoothed.certify_batch(x, opts.n0, opts.n, s.alpha, s.batch,
                                     seeds=[image_seed(s.seed, i) for i in idx.tolist()])
        for i, lab, p, r, t in zip(idx.tolist(), y.tolist(), res.prediction.tolist(), res.radius.tolist(),
                                   res.seconds.tolist()):
            emit([int(i), int(lab), int(p), float(r), int(p == lab)], t)

    # several images per call so the n0 selection samples of several images share a batch
    group = max(1, min(16, s.batch // max(opts.n0, 1)))
    run_rows(s, data, COLUMNS, "certify", settings, KEY_SETTINGS + ["n0", "n"], group, compute, streaming=True)
    return 0


def _run_adaptive(opts: CertifyOptions) -> int:
    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import (certify_adaptive, certify_sequential, cs_schedule, grid_schedule,
                                                 grid_thresholds)

    s, radii = opts.smoothing, list(opts.radii)
    smoothed, settings, data = build_smoothed(s)
    # the p_A each radius needs under the noise (checked here: before any file is written)
    thresholds = grid_thresholds(smoothed, sorted({0.0, *radii})).tolist()
    sequential = opts.sequential
    if sequential == "cs":
        schedule, method = cs_schedule(opts.n_max), certify_sequential
    else:
        schedule, method = grid_schedule(opts.n_max, thresholds, s.alpha), certify_adaptive
    settings.update(n0=opts.n0, n=opts.n_max, n_max=opts.n_max, radii=sorted(radii), schedule=schedule,
                    futility_alpha=opts.futility_alpha, mode="adaptive", sequential=sequential)

    def compute(x, y, idx, emit):
        method(smoothed, x, radii, opts.n0, opts.n_max, s.alpha, s.batch, schedule=schedule,
               seeds=[image_seed(s.seed, i) for i in idx.tolist()], futility_alpha=opts.futility_alpha,
               on_done=_emit_certified(idx, y, emit))

    run_rows(s, data, ADAPTIVE_COLUMNS, "certify", settings, KEY_SETTINGS + ["n0", "n_max", "radii", "schedule", "futility_alpha", "mode", "sequential"],
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


def _run_anytime(opts: CertifyOptions) -> int:
    """``certify --budget N``: a radius per image from the confidence sequence, no grid."""
    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import certify_anytime, cs_schedule

    s, budget = opts.smoothing, opts.budget
    smoothed, settings, data = build_smoothed(s)
    schedule = cs_schedule(budget)
    settings.update(n0=opts.n0, n=budget, budget=budget, tolerance=opts.tolerance, schedule=schedule,
                    futility_alpha=opts.futility_alpha, mode="anytime", sequential="cs")

    def compute(x, y, idx, emit):
        certify_anytime(smoothed, x, opts.n0, budget, s.alpha, s.batch, tolerance=opts.tolerance,
                        schedule=schedule, seeds=[image_seed(s.seed, i) for i in idx.tolist()],
                        futility_alpha=opts.futility_alpha, on_done=_emit_certified(idx, y, emit))

    run_rows(s, data, ADAPTIVE_COLUMNS, "certify", settings,
             KEY_SETTINGS + ["n0", "budget", "tolerance", "schedule", "futility_alpha", "mode", "sequential"],
             ADAPTIVE_GROUP, compute, streaming=True)
    return 0
