"""``smoothguard predict``: Cohen et al.'s PREDICT on every selected image."""

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
from smoothguard.evaluation.formats import ADAPTIVE_PREDICT_COLUMNS, PREDICT_COLUMNS

HELP = "predict with the smoothed classifier (Cohen et al. PREDICT, abstains when unsure), TSV rows"
DESCRIPTION = (
    "For each selected image: the smoothed classifier's class, or -1 (abstain) when a two-sided "
    "binomial test on the top two counts is not significant at alpha. Rows: idx label predict correct time."
)
COLUMNS = list(PREDICT_COLUMNS)  # declared once, in evaluation/formats.py


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_smoothing_arguments(p)
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=None,
                   help="noise samples per image (default 100,000; under torchrun write --n-samples); not with "
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


def run(args: argparse.Namespace) -> int:
    if getattr(args, "adaptive", False):
        if args.n is not None:  # it would be silently ignored: the adaptive budget is --n-max
            raise ContractError(f"--n {args.n} has no effect with --adaptive; its sample budget is --n-max. "
                                "Drop --n, or drop --adaptive for fixed-n PREDICT")
        return _run_adaptive(args)
    args.n = 100_000 if args.n is None else check_int("--n", args.n, minimum=1)
    smoothed, settings, data = build_smoothed(args)
    settings.update(n=args.n)
    from smoothguard.smoothing import image_seed

    def compute(x, y, idx, emit):
        res = smoothed.predict_batch(x, args.n, args.alpha, args.batch,
                                     seeds=[image_seed(args.seed, i) for i in idx.tolist()])
        for i, lab, p, t in zip(idx.tolist(), y.tolist(), res.prediction.tolist(), res.seconds.tolist()):
            emit([int(i), int(lab), int(p), int(p == lab)], t)

    group = max(1, min(16, args.batch // max(args.n, 1)))
    run_rows(args, data, COLUMNS, "predict", settings, KEY_SETTINGS + ["n"], group, compute, streaming=True)
    return 0


ADAPTIVE_COLUMNS = list(ADAPTIVE_PREDICT_COLUMNS)


def _run_adaptive(args: argparse.Namespace) -> int:
    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import cs_schedule, default_schedule, predict_adaptive, predict_sequential

    if args.n_max < 1:
        raise ValueError(f"--n-max must be >= 1, got {args.n_max}")
    if not 0.0 < args.futility_alpha < 1.0:
        raise ValueError(f"--futility-alpha must be in (0, 1), got {args.futility_alpha}")
    smoothed, settings, data = build_smoothed(args)
    sequential = getattr(args, "sequential", "bonferroni")
    if sequential == "cs":
        schedule, method = cs_schedule(args.n_max), predict_sequential
    else:
        schedule, method = default_schedule(args.n_max), predict_adaptive
    settings.update(n=args.n_max, n_max=args.n_max, schedule=schedule,
                    futility_alpha=args.futility_alpha, mode="adaptive", sequential=sequential)

    def on_done(idx, y, emit):  # one row per image as soon as it finishes
        def done(positions, res):
            for j, pos in enumerate(positions.tolist()):
                p, lab = int(res.prediction[j]), int(y[pos])
                emit([int(idx[pos]), lab, p, int(p == lab), int(res.n_used[j])], float(res.seconds[j]))
        return done

    def compute(x, y, idx, emit):
        method(smoothed, x, args.n_max, args.alpha, args.batch, schedule=schedule,
               seeds=[image_seed(args.seed, i) for i in idx.tolist()], futility_alpha=args.futility_alpha,
               on_done=on_done(idx, y, emit))

    run_rows(args, data, ADAPTIVE_COLUMNS, "predict", settings, KEY_SETTINGS + ["n_max", "futility_alpha", "mode", "sequential"],
             ADAPTIVE_GROUP, compute, streaming=True)
    return 0
