"""``smoothguard attack``: run one attack on every selected image, one row per image."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.attacks.registry import COMMAND_ATTACKS, get_attack_entry
from smoothguard.cli._provenance import model_settings  # noqa: F401 - also imported from here by _smoothing_run
from smoothguard.contract import check_eps, check_int, check_norm, check_positive, write_text_atomic
from smoothguard.defaults import ATTACK_BATCH, EPS, batch_for, default_eps, describe_batch
from smoothguard.evaluation.formats import ATTACK, summarize_attack
from smoothguard.cli.common import (DataSelection, add_attack_speed_arguments, add_data_arguments,
                                    add_model_factory_arguments, load_model_arg, validate_selection)

HELP = "attack a model (PGD, APGD, C&W, Square, ...): per-image adversarial rows and robust accuracy"
DESCRIPTION = (
    "Runs one attack against the model on every selected image within the threat model "
    "||delta||_p <= eps (pixel units, images in [0,1]). Rows: idx label clean_pred adv_pred norm success time "
    "(success: the adversarial point is misclassified; a clean misclassification counts as a success). "
    "With --target-model the attack is crafted on --model and evaluated on the target (transfer). "
    "Rows are flushed one group at a time; rerunning with the same --out resumes."
)
COLUMNS = list(ATTACK.columns)
ATTACK_NAMES = tuple(COMMAND_ATTACKS)
KEY_SETTINGS = ["model_sha256", "target_sha256", "data", "root", "split", "skip", "attack", "norm", "eps",
                "steps", "restarts", "step_size", "loss", "queries", "eot", "seed",
                "batch", "conv_grad"]  # random starts are drawn per batch: rows depend on --batch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint to attack (default: the embedded Fashion-MNIST LeNet)")
    add_model_factory_arguments(p)
    add_data_arguments(p, default=DEFAULT_DATA)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="pgd", help=f"one of: {', '.join(ATTACK_NAMES)}")
    g.add_argument("--norm", default="linf", help="threat model: linf or l2 (fgsm: linf; fgm, cw, ddn: l2)")
    g.add_argument("--eps", default=None,
                   help="radius in [0,1] pixel units (default: linf 0.1, l2 1.0); the minimal-perturbation "
                        "attacks cw, ddn and fab also accept 'none' (no bound)")
    g.add_argument("--steps", type=int, default=None,
                   help="iterations (default: pgd 40, apgd 100, ddn 100, cw 1000; not used by fgsm/fgm/square/nattack)")
    g.add_argument("--restarts", type=int, default=1, help="random restarts (pgd, apgd)")
    g.add_argument("--step-size", type=float, default=None, help="pgd step in pixel units (default 2.5*eps/steps)")
    g.add_argument("--loss", default="ce", help="ce, cw (C&W margin) or dlr (pgd, apgd, fgsm, fgm, ddn)")
    g.add_argument("--queries", type=int, default=None,
                   help="query budget per image (default: square 5000, AutoAttack's; nattack 10000)")
    g.add_argument("--eot", type=int, default=1, help="gradient samples per step (stochastic models)")
    g.add_argument("--target-model", default=None,
                   help="transfer: craft the examples on --model and evaluate them on this checkpoint")
    g.add_argument("--batch", type=int, default=None,
                   help=f"images per attack call (default: {describe_batch(ATTACK_BATCH)}; "
                        "rows depend on it: a resume key)")
    add_attack_speed_arguments(g)
    g.add_argument("--out", default=None,
                   help="result TSV (flushed per group; rerun with the same --out to resume). Default: stdout")
    g.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")


def parse_eps(text: str | None, attack: str, norm: str = "linf") -> float | None:
    """--eps: a radius, or 'none' (no bound) for the minimal-perturbation attacks; not given:
    the default radius of the norm (smoothguard.defaults.EPS)."""
    minimal = [e.name for e in COMMAND_ATTACKS.values() if e.cls.minimal]
    if text is None:
        return default_eps(norm)
    if str(text).lower() == "none":
        if attack not in minimal:
            raise ValueError(f"--eps none (minimal perturbation) is only allowed for --attack "
                             f"{', '.join(minimal)}, not {attack}")
        return None
    try:
        eps = float(text)
    except ValueError:
        raise ValueError(f"--eps must be a positive number in [0,1] pixel units (or 'none' for "
                         f"{', '.join(minimal)}); got {text!r}") from None
    return check_positive("--eps", eps)


def validate(args: argparse.Namespace) -> float | None:
    """Check every option before any model or data is loaded (errors name the option);
    returns the radius (None: no bound)."""
    entry = get_attack_entry(args.attack)
    check_norm(args.norm, name="--norm")
    if args.norm not in entry.norms:
        raise ValueError(f"--norm {args.norm} is not supported by --attack {args.attack}; "
                         f"allowed: {', '.join(entry.norms)}")
    eps = parse_eps(args.eps, args.attack, args.norm)
    if eps is not None:
        check_eps(eps, args.norm, "--eps")
    if args.loss not in ("ce", "cw", "dlr"):
        raise ValueError(f"--loss must be one of ce, cw, dlr; got {args.loss!r}")
    if args.loss != "ce" and not entry.takes("loss"):
        raise ValueError(f"--loss applies to --attack {', '.join(_taking('loss'))}; {args.attack} has its own loss")
    if args.steps is not None:
        check_int("--steps", args.steps, minimum=1)
    check_int("--restarts", args.restarts, minimum=1)
    if args.restarts > 1 and not entry.takes("restarts"):
        raise ValueError(f"--restarts applies to --attack {', '.join(_taking('restarts'))}; got --attack {args.attack}")
    if args.step_size is not None:
        check_positive("--step-size (pixel units)", args.step_size)
    if args.queries is not None:
        if not entry.takes("queries"):
            raise ValueError(f"--queries applies to --attack {', '.join(_taking('queries'))}; got --attack {args.attack}")
        check_int("--queries", args.queries, minimum=2)
    check_int("--eot", args.eot, minimum=1)
    if args.batch is not None:  # None: ATTACK_BATCH of the device, resolved by options()
        check_int("--batch", args.batch, minimum=1)
    validate_selection(args)
    return eps


@dataclass(frozen=True)
class AttackOptions:
    """What ``smoothguard attack`` does: run ``attack`` (with its ``norm``, radius ``eps``
    -- None: no bound, for the minimal-perturbation attacks --, ``steps``, ``restarts``,
    ``step_size``, ``loss``, ``queries`` and ``eot``; None: the attack's own default) on the
    images of ``data``, ``batch`` images per call, against ``model`` (a checkpoint; None:
    the embedded one) or ``model_factory`` with ``weights``; with ``target_model`` the
    examples are evaluated on that checkpoint (transfer). Rows go to ``out`` (None: stdout),
    resumed unless ``overwrite``; ``world``: torchrun's ranks (None: one process);
    ``argv``: the command line recorded in the sidecar."""

    attack: str = "pgd"
    norm: str = "linf"
    eps: float | None = EPS["linf"]
    steps: int | None = None
    restarts: int = 1
    step_size: float | None = None
    loss: str = "ce"
    queries: int | None = None
    eot: int = 1
    batch: int = ATTACK_BATCH["cpu"]
    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    target_model: str | None = None
    data: DataSelection = field(default_factory=DataSelection)
    channels_last: bool | None = None
    conv_grad: bool | None = None  # None: the runtime's rule (on for CPU)
    out: str | None = None
    overwrite: bool = False
    seed: int = 0
    device: Any = "cpu"  # a torch.device or its name
    world: Any = None  # a smoothguard.distributed.World
    argv: tuple[str, ...] = ()


def options(args: argparse.Namespace) -> AttackOptions:
    """The checked, typed options of the command line (``--batch`` not given: the default of
    the device the common options resolved)."""
    eps = validate(args)
    batch = batch_for(ATTACK_BATCH, args.device, args.batch)
    return AttackOptions(attack=args.attack, norm=args.norm, eps=eps, steps=args.steps, restarts=args.restarts,
                         step_size=args.step_size, loss=args.loss, queries=args.queries, eot=args.eot, batch=batch,
                         model=args.model, model_factory=args.model_factory, weights=args.weights,
                         target_model=args.target_model, data=DataSelection.from_args(args),
                         channels_last=args.channels_last, conv_grad=args.conv_grad, out=args.out,
                         overwrite=args.overwrite, seed=args.seed,
                         device=args.device, world=args.world, argv=tuple(args.argv))


def _taking(option: str) -> list[str]:
    return [name for name, e in COMMAND_ATTACKS.items() if e.takes(option)]


def build_attack(name: str, model, norm: str, eps: float | None, *, steps: int | None, restarts: int,
                 step_size: float | None, loss: str, queries: int | None, eot: int, seed: int):
    """The library attack for the command-line options (the registry's entry builds it)."""
    return get_attack_entry(name).build(model, eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
                                        loss=loss, eot=eot, queries=queries, seed=seed)


def check_shape(meta: dict, data, option: str) -> None:
    """The model of ``option`` and the data belong together: classes and (C, H, W) (the contract's rule)."""
    from smoothguard.contract import check_model_data

    check_model_data(meta.get("num_classes", data.info.num_classes), meta.get("in_shape"), data.info.num_classes,
                     data.info.input_shape, model=option, data=f"--data {data.info.name}")


def summarize(rows: list[list[str]], eps: float | None) -> dict:
    """Clean / robust accuracy and perturbation norms over the rows of a result file."""
    return summarize_attack(rows, eps)


def _write_summary(out: str, summary: dict) -> None:
    from smoothguard.evaluation.resultfile import sidecar_path

    side = sidecar_path(out)
    meta = json.loads(side.read_text())
    meta["summary"] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    write_text_atomic(side, json.dumps(meta, indent=2, sort_keys=True) + "\n", "settings file")


def run(args: argparse.Namespace) -> int:
    return attack(options(args))


def attack(opts: AttackOptions) -> int:
    """Attack every selected image, write the rows and the summary: the exit code."""
    from smoothguard import runtime
    from smoothguard.attacks import TransferAttack
    from smoothguard.cli._smoothing_run import run_rows

    model, meta = load_model_arg(opts.model, opts.device, opts.model_factory, opts.weights)
    model, speed = runtime.for_gradients(model, opts.channels_last, opts.conv_grad)  # the library's one speed rule
    data = opts.data.load()
    check_shape(meta, data, "--model")
    target = None
    if opts.target_model:
        target, tmeta = load_model_arg(opts.target_model, opts.device)
        target, _ = runtime.for_gradients(target, opts.channels_last, opts.conv_grad)
        check_shape(tmeta, data, "--target-model")
    atk = build_attack(opts.attack, model, opts.norm, opts.eps, steps=opts.steps, restarts=opts.restarts,
                       step_size=opts.step_size, loss=opts.loss, queries=opts.queries, eot=opts.eot, seed=opts.seed)
    if target is not None:
        atk = TransferAttack(atk, target)

    model_name, model_sha = model_settings(opts.model, opts.model_factory, opts.weights)
    target_name, target_sha = model_settings(opts.target_model) if opts.target_model else (None, None)
    settings = {
        "command": "smoothguard " + " ".join(opts.argv),
        "model": model_name, "model_sha256": model_sha, "target_model": target_name, "target_sha256": target_sha,
        **opts.data.settings(),
        "attack": opts.attack, "norm": opts.norm, "eps": opts.eps, "steps": opts.steps,
        "restarts": opts.restarts, "step_size": opts.step_size, "loss": opts.loss, "queries": opts.queries,
        "eot": opts.eot, "seed": opts.seed, "batch": opts.batch, "device": str(opts.device),
        "conv_grad": speed.conv_grad,  # as the rule resolved it; not bit-exact: a resumed file must keep it
        "attack_repr": repr(atk.source_attack if target is not None else atk),
    }
    def compute(x, y, idx):
        res = atk.run(x, y)
        succ = res.adv_pred.cpu() != y  # untargeted; a clean misclassification counts
        return [[int(i), int(lab), int(cp), int(ap), float(nv), int(s)]
                for i, lab, cp, ap, nv, s in zip(idx.tolist(), y.tolist(), res.clean_pred.tolist(),
                                                 res.adv_pred.tolist(), res.norms.tolist(), succ.tolist())]

    # the one per-image row loop of certify/predict: resumable --out, torchrun sharding into
    # per-rank part files merged by rank 0 (attack rows depend on the batch an image was in:
    # an attack's random starts are drawn per batch from --seed)
    def show_queries(bar) -> None:  # Square reports its query loop every 100 queries: the bar moves meanwhile
        source = atk.source_attack if target is not None else atk
        source.on_iteration = lambda i, total: bar.set_postfix_str(f"query {i}/{total}")

    all_rows = run_rows(opts, data, COLUMNS, "attack", settings, KEY_SETTINGS, opts.batch, compute,
                        on_bar=show_queries)
    if all_rows is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    summary = summarize(all_rows, opts.eps)
    eps_txt = "none (minimal)" if opts.eps is None else f"{opts.eps:g}"
    where = f" on target {opts.target_model}" if opts.target_model else ""
    print(f"attack {opts.attack} ({opts.norm}, eps {eps_txt}){where}: {summary['n']} images\n"
          f"  clean accuracy  {summary['clean_accuracy']:.4f}\n"
          f"  robust accuracy {summary['robust_accuracy']:.4f}\n"
          f"  success rate on correctly classified {summary['success_rate_on_correct']:.4f}\n"
          f"  mean {opts.norm} norm of successful perturbations {summary['mean_norm_successful']:.4f} "
          f"(median {summary['median_norm_successful']:.4f}; max over all rows {summary['max_norm']:.4f})",
          file=sys.stderr if not opts.out else sys.stdout)
    if opts.out:
        _write_summary(opts.out, summary)
    return 0
