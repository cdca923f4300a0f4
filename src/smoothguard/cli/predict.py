"""``smoothguard predict``: Cohen et al.'s PREDICT on every selected image."""

from __future__ import annotations

import argparse

from smoothguard.cli._smoothing_run import KEY_SETTINGS, add_smoothing_arguments, build_smoothed, run_rows

HELP = "predict with the smoothed classifier (Cohen et al. PREDICT, abstains when unsure), TSV rows"
DESCRIPTION = (
    "For each selected image: the smoothed classifier's class, or -1 (abstain) when a two-sided "
    "binomial test on the top two counts is not significant at alpha. Rows: idx label predict correct time."
)
COLUMNS = ["idx", "label", "predict", "correct", "time"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_smoothing_arguments(p)
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=100_000, help="noise samples per image (under torchrun write --n-samples)")


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    smoothed, settings, data = build_smoothed(args)
    settings.update(n=args.n)
    from smoothguard.smoothing import image_seed

    def compute(x, y, idx):
        res = smoothed.predict_batch(x, args.n, args.alpha, args.batch,
                                     seeds=[image_seed(args.seed, i) for i in idx.tolist()])
        return [[int(i), int(lab), int(p), int(p == lab)]
                for i, lab, p in zip(idx.tolist(), y.tolist(), res.prediction.tolist())]

    group = max(1, min(16, args.batch // max(args.n, 1)))
    run_rows(args, data, COLUMNS, "predict", settings, KEY_SETTINGS + ["n"], group, compute)
    return 0
