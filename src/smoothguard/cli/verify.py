"""``smoothguard verify``: deterministic certificates (IBP / CROWN / CROWN-IBP), one row per image."""

from __future__ import annotations

import argparse
import json
import math
import sys

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.evaluation.formats import VERIFY  # the format's one declaration

HELP = "deterministic verification (IBP, CROWN, CROWN-IBP): per-image verified rows and verified accuracy"
DESCRIPTION = (
    "Proves, image by image, that no input within ||delta||_p <= eps (pixel units, images in [0,1]) "
    "changes the model's class from the label: sound lower bounds on logit[label] - logit[j] for every "
    "other class j (margin_lb is their minimum; verified = margin_lb > 0). Rows: idx label clean_pred verified "
    "margin_lb time. Methods: ibp (Gowal et al. 2018), crown (Zhang et al. 2018; memory and time grow with the "
    "square of the widest layer), crown-ibp (Zhang et al. 2020). Rows are flushed one group at a time; rerunning "
    "with the same --out resumes; under torchrun each rank verifies its share."
)

COLUMNS = list(VERIFY.columns)
KEY_SETTINGS = ["model_sha256", "data", "root", "split", "skip", "norm", "eps", "method"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from smoothguard.cli.common import add_data_arguments, add_model_factory_arguments

    p.add_argument("--model", default=None, help="checkpoint to verify (default: the embedded Fashion-MNIST LeNet)")
    add_model_factory_arguments(p)
    add_data_arguments(p, default=DEFAULT_DATA)
    g = p.add_argument_group("verification")
    g.add_argument("--norm", default="linf", help="threat model: linf or l2")
    g.add_argument("--eps", type=float, default=0.1, help="radius in [0,1] pixel units")
    g.add_argument("--method", default="crown", help="ibp, crown or crown-ibp")
    g.add_argument("--batch", type=int, default=None,
                   help="images per bound computation (default: 200 for ibp and crown-ibp, 16 for crown)")
    g.add_argument("--max-floats", type=int, default=None,
                   help="crown: cap on one chunk of the coefficient matrix, in floats (default 2**23 = 32 MiB)")
    g.add_argument("--out", default=None,
                   help="result TSV (flushed per group; rerun with the same --out to resume). Default: stdout")
    g.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")


def validate(args: argparse.Namespace) -> None:
    """Check every option before any model or data is loaded (errors name the option)."""
    from smoothguard.cli.common import validate_selection
    from smoothguard.contract import check_choice, check_eps, check_int
    from smoothguard.verification import METHODS, NORMS

    check_choice("--norm", args.norm, NORMS)
    check_choice("--method", args.method, METHODS)
    args.eps = check_eps(args.eps, args.norm, "--eps")
    if args.batch is None:
        args.batch = 16 if args.method == "crown" else 200
    check_int("--batch", args.batch, 1)
    if args.max_floats is not None:
        check_int("--max-floats", args.max_floats, 1)
    validate_selection(args)


def summarize(rows: list[list[str]]) -> dict:
    """Clean and verified accuracy over the rows of a verify result file."""
    n = len(rows)
    clean = sum(int(r[1]) == int(r[2]) for r in rows)
    verified = sum(int(r[3]) for r in rows)
    return {"n": n, "clean_accuracy": clean / n if n else float("nan"),
            "verified_accuracy": verified / n if n else float("nan"),
            "total_seconds": sum(float(r[5]) for r in rows)}


def run(args: argparse.Namespace) -> int:
    import torch

    from smoothguard.cli._smoothing_run import run_rows
    from smoothguard.cli.attack import check_shape, model_settings
    from smoothguard.cli.common import load_data, load_model_arg
    from smoothguard.evaluation.resultfile import sidecar_path
    from smoothguard.contract import write_text_atomic
    from smoothguard.verification import MAX_FLOATS, to_ops, verify

    validate(args)
    model, meta = load_model_arg(args.model, args.device, args.model_factory, args.weights)
    model.eval()
    data = load_data(args)
    check_shape(meta, data, "--model")
    to_ops(model, tuple(data.info.input_shape))  # an unsupported layer fails before any row
    max_floats = args.max_floats or MAX_FLOATS
    model_name, model_sha = model_settings(args.model, args.model_factory, args.weights)
    settings = {
        "command": "smoothguard " + " ".join(getattr(args, "argv", [])),
        "model": model_name, "model_sha256": model_sha, "data": args.data, "root": args.root, "split": args.split,
        "skip": args.skip, "max": args.max, "norm": args.norm, "eps": args.eps, "method": args.method,
        "batch": args.batch, "max_floats": max_floats, "device": str(args.device),
    }

    def compute(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> list[list]:
        res = verify(model, x, y, args.eps, args.norm, args.method, max_floats)
        return [[int(i), int(lab), int(cp), int(v), float(m)]
                for i, lab, cp, v, m in zip(idx.tolist(), y.tolist(), res.clean_pred.tolist(),
                                            res.verified.tolist(), res.margin_lb.tolist())]

    # the one per-image row loop of certify/predict/attack: resumable --out, torchrun
    # sharding into per-rank part files merged by rank 0; a row does not depend on the
    # other images of its batch
    all_rows = run_rows(args, data, COLUMNS, "verify", settings, KEY_SETTINGS, args.batch, compute)
    if all_rows is None:
        return 0
    summary = {**summarize(all_rows), "eps": args.eps, "norm": args.norm, "method": args.method}
    print(f"verify {args.method} ({args.norm}, eps {args.eps:g}): {summary['n']} images\n"
          f"  clean accuracy    {summary['clean_accuracy']:.4f}\n"
          f"  verified accuracy {summary['verified_accuracy']:.4f}",
          file=sys.stderr if not args.out else sys.stdout)
    if args.out:
        side = sidecar_path(args.out)
        meta_json = json.loads(side.read_text())
        meta_json["summary"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                for k, v in summary.items()}
        write_text_atomic(side, json.dumps(meta_json, indent=2, sort_keys=True) + "\n")
    return 0
