"""``smoothguard predict``: Cohen et al.'s PREDICT on every selected image."""

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
from smoothguard.evaluation.formats import ADAPTIVE_PREDICT_COLUMNS, PREDICT_COLUMNS

HELP = "predict with the smoothed classifier (Cohen et al. PREDICT, abstains when unsure), TSV rows"
DESCRIPTION = (
    "For each selected image: the smoothed classifier's class, or -1 (abstain) when a two-sided "
    "binomial test on the top two counts is not significant at alpha. Rows: idx label predict correct time."
)
COLUMNS = list(PREDICT_COLUMNS)  # declared once, in evaluation/formats.py
DEFAULT_N = 100_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_smoothing_arguments(p)
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=None,
                   help=f"noise samples per image (default {DEFAULT_N:,}; under torchrun write --n-samples); not with "
                        "--adaptive, whose budget is --n-max")
    g = p.add_argument_group("adaptive PREDICT (fewer samples, same guarantee)")
    g.add_argument("--adaptive", action="store_true",
                   help="look at the counts after a growing schedule of samples and stop as soon as the top-two "
                        "test is decided (rows add n_used; each row is written as its image finishes); the test runs at "
                        "alpha / (number of looks)")
    g.add_argument("--n-max", type=int, default=100_000, help="adaptive mode: most noise samples per image")
    g.add_argument("--futility-alpha", type=float, default=0.05,
                   help="adaptive mode: abstain early once the test cannot reject by n_max with this confidence "
                        "level (does not affect the guarantee)")
    g.add_argument("--sequential", choices=["cs", "bonferroni"], default="bonferroni",
                   help="adaptive mode's test: 'bonferroni' (default) Cohen's binomial test at alpha / (number of "
                        "looks) on a geometric schedule; 'cs' anytime-valid confidence sequences (leader against every "
                        "other class at alpha / (K - 1)) looked at after every 100 samples. Measured on 500 "
                        "Fashion-MNIST images: 407 vs 418 samples per image, a tie (BENCHMARKS.md). A resume key")


def validate(args: argparse.Namespace) -> None:
    """Check every option before any model or data is loaded (errors name the option, in the
    order predict always checked them: its own, then the smoothing options)."""
    if args.adaptive:
        if args.n is not None:  # it would be silently ignored: the adaptive budget is --n-max
            raise ContractError(f"--n {args.n} has no effect with --adaptive; its sample budget is --n-max. "
                                "Drop --n, or drop --adaptive for fixed-n PREDICT")
        check_adaptive_budget(args.n_max, args.futility_alpha)
    elif args.n is not None:
        check_int("--n", args.n, minimum=1)
    validate_smoothing_arguments(args)


@dataclass(frozen=True)
class PredictOptions:
    """What ``smoothguard predict`` does with the smoothed classifier of ``smoothing``: per
    image, Cohen et al.'s PREDICT on ``n`` noise samples, or with ``adaptive`` a growing
    schedule of at most ``n_max`` samples tested by ``sequential`` ("bonferroni" or "cs"),
    abstaining early at confidence ``futility_alpha``."""

    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    n: int = DEFAULT_N
    adaptive: bool = False
    n_max: int = 100_000
    futility_alpha: float = 0.05
    sequential: str = "bonferroni"


def options(args: argparse.Namespace) -> PredictOptions:
    """The checked, typed options of the command line."""
    validate(args)
    return PredictOptions(smoothing=smoothing_options(args), n=DEFAULT_N if args.n is None else args.n,
                          adaptive=args.adaptive, n_max=args.n_max, futility_alpha=args.futility_alpha,
                          sequential=args.sequential)


def run(args: argparse.Namespace) -> int:
    return predict(options(args))


def predict(opts: PredictOptions) -> int:
    """Predict every selected image and write the rows: the exit code."""
    if opts.adaptive:
        return _run_adaptive(opts)
    s = opts.smoothing
    smoothed, settings, data = build_smoothed(s)
    settings.update(n=opts.n)
    from smoothguard.smoothing import image_seed

    def compute(x, y, idx, emit):
        res = smoothed.predict_batch(x, opts.n, s.alpha, s.batch,
                                     seeds=[image_seed(s.seed, i) for i in idx.tolist()])
        for i, lab, p, t in zip(idx.tolist(), y.tolist(), res.prediction.tolist(), res.seconds.tolist()):
            emit([int(i), int(lab), int(p), int(p == lab)], t)

    group = max(1, min(16, s.batch // max(opts.n, 1)))
    run_rows(s, data, COLUMNS, "predict", settings, KEY_SETTINGS + ["n"], group, compute, streaming=True)
    return 0


ADAPTIVE_COLUMNS = list(ADAPTIVE_PREDICT_COLUMNS)


def _run_adaptive(opts: PredictOptions) -> int:
    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import cs_schedule, default_schedule, predict_adaptive, predict_sequential

    s = opts.smoothing
    smoothed, settings, data = build_smoothed(s)
    sequential = opts.sequential
    if sequential == "cs":
        schedule, method = cs_schedule(opts.n_max), predict_sequential
    else:
        schedule, method = default_schedule(opts.n_max), predict_adaptive
    settings.update(n=opts.n_max, n_max=opts.n_max, schedule=schedule,
                    futility_alpha=opts.futility_alpha, mode="adaptive", sequential=sequential)

    def on_done(idx, y, emit):  # one row per image as soon as it finishes
        def done(positions, res):
            for j, pos in enumerate(positions.tolist()):
                p, lab = int(res.prediction[j]), int(y[pos])
                emit([int(idx[pos]), lab, p, int(p == lab), int(res.n_used[j])], float(res.seconds[j]))
        return done

    def compute(x, y, idx, emit):
        method(smoothed, x, opts.n_max, s.alpha, s.batch, schedule=schedule,
               seeds=[image_seed(s.seed, i) for i in idx.tolist()], futility_alpha=opts.futility_alpha,
               on_done=on_done(idx, y, emit))

    run_rows(s, data, ADAPTIVE_COLUMNS, "predict", settings, KEY_SETTINGS + ["n_max", "futility_alpha", "mode", "sequential"],
             ADAPTIVE_GROUP, compute, streaming=True)
    return 0
