"""``smoothguard verify``: deterministic certificates (IBP / CROWN / CROWN-IBP), one row per image."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.cli.common import DataSelection
from smoothguard.defaults import VERIFY_BATCH
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
                   help="images per bound computation (default: " + ", ".join(
                       f"{v} for {k.replace('_', '-')}" for k, v in VERIFY_BATCH.items()) + ")")
    g.add_argument("--max-floats", type=int, default=None,
                   help="crown: cap on one chunk of the coefficient matrix, in floats (default 2**23 = 32 MiB)")
    g.add_argument("--out", default=None,
                   help="result TSV (flushed per group; rerun with the same --out to resume). Default: stdout")
    g.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")


def validate(args: argparse.Namespace) -> tuple[float, int]:
    """Check every option before any model or data is loaded (errors name the option);
    returns the radius and the batch (not given: the method's, smoothguard.defaults.VERIFY_BATCH)."""
    from smoothguard.cli.common import validate_selection
    from smoothguard.contract import check_choice, check_eps, check_int
    from smoothguard.verification import METHODS, NORMS

    check_choice("--norm", args.norm, NORMS)
    check_choice("--method", args.method, METHODS)
    eps = check_eps(args.eps, args.norm, "--eps")
    batch = VERIFY_BATCH[args.method.replace("-", "_")] if args.batch is None else args.batch
    check_int("--batch", batch, 1)
    if args.max_floats is not None:
        check_int("--max-floats", args.max_floats, 1)
    validate_selection(args)
    return eps, batch


@dataclass(frozen=True)
class VerifyOptions:
    """What ``smoothguard verify`` does: bound ``method`` (ibp, crown, crown-ibp) at radius
    ``eps`` in ``norm`` on the images of ``data``, ``batch`` images per bound computation
    (CROWN's coefficient chunks capped at ``max_floats``; None: the library's cap), for
    ``model`` (a checkpoint; None: the embedded one) or ``model_factory`` with ``weights``.
    Rows go to ``out`` (None: stdout), resumed unless ``overwrite``; ``world``: torchrun's
    ranks (None: one process); ``argv``: the command line recorded in the sidecar."""

    norm: str = "linf"
    eps: float = 0.1
    method: str = "crown"
    batch: int = VERIFY_BATCH["crown"]
    max_floats: int | None = None
    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    data: DataSelection = field(default_factory=DataSelection)
    out: str | None = None
    overwrite: bool = False
    device: Any = "cpu"  # a torch.device or its name
    world: Any = None  # a smoothguard.distributed.World
    argv: tuple[str, ...] = ()


def options(args: argparse.Namespace) -> VerifyOptions:
    """The checked, typed options of the command line."""
    eps, batch = validate(args)
    return VerifyOptions(norm=args.norm, eps=eps, method=args.method, batch=batch, max_floats=args.max_floats,
                         model=args.model, model_factory=args.model_factory, weights=args.weights,
                         data=DataSelection.from_args(args), out=args.out, overwrite=args.overwrite,
                         device=args.device, world=args.world, argv=tuple(args.argv))


def summarize(rows: list[list[str]]) -> dict:
    """Clean and verified accuracy over the rows of a verify result file."""
    n = len(rows)
    clean = sum(int(r[1]) == int(r[2]) for r in rows)
    verified = sum(int(r[3]) for r in rows)
    return {"n": n, "clean_accuracy": clean / n if n else float("nan"),
            "verified_accuracy": verified / n if n else float("nan"),
            "total_seconds": sum(float(r[5]) for r in rows)}


def run(args: argparse.Namespace) -> int:
    return verify(options(args))


def verify(opts: VerifyOptions) -> int:
    """Verify every selected image, write the rows and the summary: the exit code."""
    import torch

    from smoothguard.cli._smoothing_run import run_rows
    from smoothguard.cli.attack import check_shape, model_settings
    from smoothguard.cli.common import load_model_arg
    from smoothguard.evaluation.resultfile import sidecar_path
    from smoothguard.contract import write_text_atomic
    from smoothguard.verification import MAX_FLOATS, to_ops
    from smoothguard.verification import verify as verify_images

    model, meta = load_model_arg(opts.model, opts.device, opts.model_factory, opts.weights)
    model.eval()
    data = opts.data.load()
    check_shape(meta, data, "--model")
    to_ops(model, tuple(data.info.input_shape))  # an unsupported layer fails before any row
    max_floats = opts.max_floats or MAX_FLOATS
    model_name, model_sha = model_settings(opts.model, opts.model_factory, opts.weights)
    settings = {
        "command": "smoothguard " + " ".join(opts.argv),
        "model": model_name, "model_sha256": model_sha, **opts.data.settings(), "norm": opts.norm, "eps": opts.eps,
        "method": opts.method, "batch": opts.batch, "max_floats": max_floats, "device": str(opts.device),
    }

    def compute(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> list[list]:
        res = verify_images(model, x, y, opts.eps, opts.norm, opts.method, max_floats)
        return [[int(i), int(lab), int(cp), int(v), float(m)]
                for i, lab, cp, v, m in zip(idx.tolist(), y.tolist(), res.clean_pred.tolist(),
                                            res.verified.tolist(), res.margin_lb.tolist())]

    # the one per-image row loop of certify/predict/attack: resumable --out, torchrun
    # sharding into per-rank part files merged by rank 0; a row does not depend on the
    # other images of its batch
    all_rows = run_rows(opts, data, COLUMNS, "verify", settings, KEY_SETTINGS, opts.batch, compute)
    if all_rows is None:
        return 0
    summary = {**summarize(all_rows), "eps": opts.eps, "norm": opts.norm, "method": opts.method}
    print(f"verify {opts.method} ({opts.norm}, eps {opts.eps:g}): {summary['n']} images\n"
          f"  clean accuracy    {summary['clean_accuracy']:.4f}\n"
          f"  verified accuracy {summary['verified_accuracy']:.4f}",
          file=sys.stderr if not opts.out else sys.stdout)
    if opts.out:
        side = sidecar_path(opts.out)
        meta_json = json.loads(side.read_text())
        meta_json["summary"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                for k, v in summary.items()}
        write_text_atomic(side, json.dumps(meta_json, indent=2, sort_keys=True) + "\n")
    return 0
