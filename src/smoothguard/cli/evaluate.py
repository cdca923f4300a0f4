"""``smoothguard evaluate``: a worst-case robustness table from a cascade of attacks (by
default FGSM and AutoAttack's standard suite), an image grid, and on request accuracy-vs-eps
curves and restart-loss histograms (Madry et al. 2018, Table 1 and Figure 2)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.contract import ContractError, check_eps, check_fraction, check_int, check_norm, check_positive, write_text_atomic
from smoothguard.defaults import (APGD_STEPS, ATTACK_BATCH, EPS, FAB_STEPS, N_TARGETS, PGD_STEPS,
                                  SQUARE_QUERIES, batch_for, describe_batch)
from smoothguard.cli.common import (DataSelection, add_attack_speed_arguments, add_data_arguments,
                                    add_model_factory_arguments, load_model_arg, parse_floats, progress)

HELP = "evaluate robustness: a worst-case cascade of attacks (by default FGSM + AutoAttack's standard suite)"
DESCRIPTION = (
    "Runs a cascade of attacks, each only on the points still robust after the ones before it, so each row "
    "is the running worst case and the last row the worst case per example. Default cascade: FGSM, then "
    "AutoAttack's standard suite (APGD-CE, APGD-T and FAB-T against the 9 highest wrong classes, Square with "
    "5000 queries); --attacks adds PGD (k steps, r restarts), PGD with the C&W loss, APGD-DLR and transfer "
    "rows. Writes table.md/.csv/.json, per_example.tsv and a clean/perturbation/adversarial image grid into "
    "--out-dir; --curves adds accuracy-vs-eps curves for linf and l2 and --loss-restarts N a histogram of PGD "
    "losses over N random restarts (Madry et al. Figure 2). eps in [0,1] pixel units."
)

DEFAULT_EPS = EPS  # one default per norm, shared with the library (smoothguard.defaults)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from smoothguard.evaluation.robustness import CASCADE_ATTACKS, DEFAULT_CASCADE

    p.add_argument("--model", default=None, help="checkpoint (default: the embedded Fashion-MNIST LeNet)")
    add_model_factory_arguments(p)
    add_data_arguments(p, default=DEFAULT_DATA)
    g = p.add_argument_group("threat model and attacks")
    g.add_argument("--norm", default="linf", help="linf or l2")
    g.add_argument("--eps", type=float, default=None, help="radius in [0,1] pixel units (default: linf 0.1, l2 1.0)")
    g.add_argument("--attacks", default=",".join(DEFAULT_CASCADE),
                   help=f"comma-separated rows, in cascade order; allowed: {', '.join(CASCADE_ATTACKS)}")
    g.add_argument("--steps", type=int, default=PGD_STEPS, help="PGD steps (PGD, CW-loss PGD and transfer rows)")
    g.add_argument("--restarts", type=int, default=10, help="PGD random restarts")
    g.add_argument("--step-size", type=float, default=None, help="PGD step in pixel units (default 2.5*eps/steps)")
    g.add_argument("--apgd-steps", type=int, default=APGD_STEPS, help="APGD iterations (paper: 100)")
    g.add_argument("--fab-steps", type=int, default=FAB_STEPS, help="FAB iterations per target (paper: 100)")
    g.add_argument("--apgd-targets", type=int, default=N_TARGETS,
                   help="target classes of the apgd-t and fab-t rows (the highest-scoring wrong classes)")
    g.add_argument("--queries", type=int, default=SQUARE_QUERIES, help="Square query budget per point")
    g.add_argument("--transfer-from", default=None,
                   help="comma-separated surrogate checkpoints: PGD crafted on each, evaluated on --model")
    g.add_argument("--eot", type=int, default=1, help="gradient samples per step (stochastic models)")
    g.add_argument("--independent", action="store_true",
                   help="run every attack on every clean-correct point (each row's own accuracy; slower)")
    g.add_argument("--masking-tolerance", type=float, default=0.005,
                   help="fraction of points black-box/transfer rows may fool beyond the white-box rows "
                        "before the gradient-masking warning")
    g.add_argument("--batch", type=int, default=None,
                   help=f"images per attack call (default: {describe_batch(ATTACK_BATCH)}; "
                        "recorded in table.json)")
    add_attack_speed_arguments(g)
    c = p.add_argument_group("curves and figures (opt-in: each costs about as much as the cascade)")
    c.add_argument("--curves", action="store_true",
                   help="also compute accuracy-vs-eps curves for linf and l2 (PGD-CE then APGD-DLR at each eps)")
    c.add_argument("--no-curves", action="store_true", help=argparse.SUPPRESS)  # deprecated: curves are opt-in now
    c.add_argument("--eps-grid", default=None, help="with --curves: eps values of the --norm curve (comma-separated)")
    c.add_argument("--eps-grid-linf", default=None,
                   help="with --curves: eps values of the linf curve (default 0,.02,.05,.075,.1,.15,.2,.3)")
    c.add_argument("--eps-grid-l2", default=None,
                   help="with --curves: eps values of the l2 curve (default 0,.25,.5,1,1.5,2,3)")
    c.add_argument("--curve-steps", type=int, default=None,
                   help="with --curves: steps of the curve attacks (default 20)")
    c.add_argument("--loss-restarts", type=int, default=0,
                   help="PGD random restarts for the loss histogram of Madry et al. Figure 2 (default 0: no "
                        "histogram; the paper's figure uses 50)")
    c.add_argument("--loss-examples", type=int, default=5, help="examples in the loss histogram")
    c.add_argument("--grid-examples", type=int, default=8, help="examples in the image grid (0: skip it)")
    c.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument("--out-dir", required=True, help="folder for the tables and figures (files are replaced)")


def _positive_int(name: str, v: int, minimum: int = 1) -> None:
    check_int(name, v, minimum=minimum)


def validate(args: argparse.Namespace) -> tuple[float, list[str], int, dict[str, list[float]], list[str]]:
    """Check every option before any model or data is loaded (errors name the option; the
    Namespace is left as parsed). Returns the radius (--eps, else the --norm's default), the
    attack rows, the curve steps, the eps grid of each norm and the --transfer-from
    checkpoints."""
    from smoothguard.evaluation.robustness import CASCADE_ATTACKS

    check_norm(args.norm, name="--norm")
    eps = DEFAULT_EPS[args.norm] if args.eps is None else args.eps
    check_eps(eps, args.norm, "--eps")
    attack_list = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attack_list if a not in CASCADE_ATTACKS + ("fgm",)]
    if bad or (not attack_list and not args.transfer_from):
        raise ValueError(f"--attacks must be a comma-separated subset of {', '.join(CASCADE_ATTACKS)}; "
                         f"got {bad[0] if bad else args.attacks!r}")
    for name, v, lo in (("--steps", args.steps, 1), ("--restarts", args.restarts, 1),
                        ("--apgd-steps", args.apgd_steps, 1), ("--apgd-targets", args.apgd_targets, 1),
                        ("--fab-steps", args.fab_steps, 1),
                        ("--queries", args.queries, 2), ("--eot", args.eot, 1),
                        ("--loss-restarts", args.loss_restarts, 0),
                        ("--loss-examples", args.loss_examples, 1), ("--grid-examples", args.grid_examples, 0),
                        ("--skip", args.skip, 1)):
        _positive_int(name, v, lo)
    if args.batch is not None:  # None: ATTACK_BATCH of the device, resolved by options()
        _positive_int("--batch", args.batch, 1)
    if args.max < -1 or args.max == 0:
        raise ValueError(f"--max must be a positive count or -1 (all); got {args.max}")
    if args.step_size is not None:
        check_positive("--step-size (pixel units)", args.step_size)
    check_fraction("--masking-tolerance", args.masking_tolerance, low_open=False, high_open=True)
    if args.no_curves:
        print("smoothguard evaluate: --no-curves is deprecated and has no effect: curves are opt-in (--curves) "
              "since the cascade's cost alone is what a default run should pay", file=sys.stderr)
        if args.curves:
            raise ValueError("--curves and --no-curves contradict each other (curves are opt-in: drop --no-curves)")
    curve_opts = [o for o, v in (("--eps-grid", args.eps_grid), ("--eps-grid-linf", args.eps_grid_linf),
                                 ("--eps-grid-l2", args.eps_grid_l2), ("--curve-steps", args.curve_steps))
                  if v is not None]
    if curve_opts and not args.curves:
        raise ValueError(f"{curve_opts[0]} shapes the accuracy-vs-eps curves, which are opt-in: add --curves")
    curve_steps = check_int("--curve-steps", 20 if args.curve_steps is None else args.curve_steps, minimum=1)
    from smoothguard.evaluation.robustness import DEFAULT_EPS_GRID

    grids = {}
    for norm, given in (("linf", args.eps_grid_linf), ("l2", args.eps_grid_l2)):
        text = given
        if text is None and args.eps_grid is not None and norm == args.norm:
            text = args.eps_grid
        opt = f"--eps-grid-{norm}" if given is not None or norm != args.norm else "--eps-grid"
        grid = list(DEFAULT_EPS_GRID[norm]) if text is None else parse_floats(text, opt)
        if not grid or any(e < 0 for e in grid) or (norm == "linf" and any(e > 1 for e in grid)):
            raise ValueError(f"{opt} must be comma-separated eps values >= 0"
                             + (" and <= 1" if norm == "linf" else "") + f"; got {text!r}")
        grids[norm] = grid
    sources = [s.strip() for s in args.transfer_from.split(",") if s.strip()] if args.transfer_from else []
    for s in sources:
        if not Path(s).exists():
            raise FileNotFoundError(f"--transfer-from: no such checkpoint {s!r}")
    return eps, attack_list, curve_steps, grids, sources


def _robustness():
    """smoothguard.evaluation.robustness, imported when first needed (as everywhere here)."""
    from smoothguard.evaluation import robustness

    return robustness


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``smoothguard evaluate`` does: run the cascade of ``attacks`` (each only on the
    points still robust, unless ``independent``) at radius ``eps`` in ``norm`` on the images
    of ``data``, ``batch`` images per attack call, against ``model`` (a checkpoint; None: the
    embedded one) or ``model_factory`` with ``weights``; PGD rows with ``steps``,
    ``restarts`` and ``step_size`` (None: 2.5 * eps / steps), APGD with ``apgd_steps``,
    targeted rows against ``apgd_targets`` classes, FAB with ``fab_steps``, Square with
    ``queries``, transfer rows crafted on each of ``transfer_from``; ``eot`` gradient
    samples per step; ``masking_tolerance`` for the gradient-masking warning. With
    ``curves``, accuracy-vs-eps curves at the eps of ``eps_grid_linf`` and ``eps_grid_l2``
    (``curve_steps`` steps); ``loss_restarts`` > 0: the restart-loss histogram of
    ``loss_examples`` images; ``grid_examples`` images in the image grid; figures only with
    ``plots``. Everything is written into ``out_dir``; ``argv``: the command line recorded
    in table.json."""

    out_dir: Path
    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    data: DataSelection = field(default_factory=DataSelection)
    norm: str = "linf"
    eps: float = EPS["linf"]
    attacks: tuple[str, ...] = field(default_factory=lambda: tuple(_robustness().DEFAULT_CASCADE))
    steps: int = PGD_STEPS
    restarts: int = 10
    step_size: float | None = None
    apgd_steps: int = APGD_STEPS
    fab_steps: int = FAB_STEPS
    apgd_targets: int = N_TARGETS
    queries: int = SQUARE_QUERIES
    transfer_from: tuple[str, ...] = ()
    eot: int = 1
    independent: bool = False
    masking_tolerance: float = 0.005
    batch: int = ATTACK_BATCH["cpu"]
    channels_last: bool | None = None
    conv_grad: bool | None = None  # None: the runtime's rule (on for CPU)
    curves: bool = False
    eps_grid_linf: tuple[float, ...] = field(default_factory=lambda: tuple(_robustness().DEFAULT_EPS_GRID["linf"]))
    eps_grid_l2: tuple[float, ...] = field(default_factory=lambda: tuple(_robustness().DEFAULT_EPS_GRID["l2"]))
    curve_steps: int = 20
    loss_restarts: int = 0
    loss_examples: int = 5
    grid_examples: int = 8
    plots: bool = True
    seed: int = 0
    device: Any = "cpu"  # a torch.device or its name
    argv: tuple[str, ...] = ()


def options(args: argparse.Namespace) -> EvaluateOptions:
    """The checked, typed options of the command line (``--batch`` not given: the default of
    the device the common options resolved)."""
    eps, attack_list, curve_steps, grids, sources = validate(args)
    batch = batch_for(ATTACK_BATCH, args.device, args.batch)
    return EvaluateOptions(out_dir=Path(args.out_dir), model=args.model, model_factory=args.model_factory,
                           weights=args.weights, data=DataSelection.from_args(args), norm=args.norm, eps=eps,
                           attacks=tuple(attack_list), steps=args.steps, restarts=args.restarts,
                           step_size=args.step_size, apgd_steps=args.apgd_steps, fab_steps=args.fab_steps,
                           apgd_targets=args.apgd_targets, queries=args.queries, transfer_from=tuple(sources),
                           eot=args.eot, independent=args.independent, masking_tolerance=args.masking_tolerance,
                           batch=batch, channels_last=args.channels_last, conv_grad=args.conv_grad, curves=args.curves,
                           eps_grid_linf=tuple(grids["linf"]), eps_grid_l2=tuple(grids["l2"]),
                           curve_steps=curve_steps, loss_restarts=args.loss_restarts,
                           loss_examples=args.loss_examples, grid_examples=args.grid_examples,
                           plots=not args.no_plots, seed=args.seed, device=args.device, argv=tuple(args.argv))


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _per_example_tsv(ev, indices: torch.Tensor) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["idx", "label", "clean_pred", "adv_pred", "norm", "fooled_by", "robust"])
    for i in range(ev.n):
        w.writerow([int(indices[i]), int(ev.y[i]), int(ev.clean_pred[i]), int(ev.adv_pred[i]),
                    repr(float(ev.norms[i])), ev.fooled_by_name(i) or "-", int(ev.robust[i])])
    return buf.getvalue()


class _Bar:
    """Adapts the library's ``progress(label, n)`` callback to one tqdm bar per row."""

    def __init__(self) -> None:
        self.bar = None
        self.label = None

    def start_row(self, label: str, total: int) -> None:
        """evaluate_robustness announces each row's number of points: the bar's total."""
        self.close()
        self.label = label
        self.bar = progress(total=total, desc=label, unit="img", leave=False)

    def iteration(self, label: str, i: int, total: int) -> None:
        """Square's query loop: the bar moves only per chunk of images, so show the query count."""
        if self.bar is not None and label == self.label:
            self.bar.set_postfix_str(f"query {i}/{total}")

    def __call__(self, label: str, n: int) -> None:
        if label != self.label or self.bar is None:
            self.close()
            self.label = label
            self.bar = progress(desc=label, unit="img", leave=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    return evaluate(options(args))


def evaluate(opts: EvaluateOptions) -> int:
    """Run the cascade (and the curves and figures asked for), write the tables: the exit code."""
    from smoothguard import runtime
    from smoothguard.cli.attack import check_shape, model_settings
    from smoothguard.evaluation.robustness import (
        accuracy_vs_eps,
        build_cascade,
        evaluate_robustness,
        json_safe,
        restart_loss_distribution,
        select_grid_examples,
    )

    t_all = time.perf_counter()
    model, meta = load_model_arg(opts.model, opts.device, opts.model_factory, opts.weights)
    # the library's one speed rule; the sidecar records the choice of the last model prepared
    model, speed = runtime.for_gradients(model, opts.channels_last, opts.conv_grad)
    data = opts.data.load()
    check_shape(meta, data, "--model")
    sources = []
    for s in opts.transfer_from:
        sm, smeta = load_model_arg(s, opts.device)
        sm, speed = runtime.for_gradients(sm, opts.channels_last, opts.conv_grad)
        check_shape(smeta, data, "--transfer-from")
        sources.append((Path(s).name, sm))
    out_dir = Path(opts.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ContractError(f"--out-dir {opts.out_dir}: cannot create the folder ({e.strerror or e})") from None
    model_name, model_sha = model_settings(opts.model, opts.model_factory, opts.weights)

    rows = build_cascade(model, opts.norm, opts.eps, attacks=list(opts.attacks), steps=opts.steps,
                         restarts=opts.restarts, step_size=opts.step_size, apgd_steps=opts.apgd_steps,
                         apgd_targets=opts.apgd_targets, fab_steps=opts.fab_steps, square_queries=opts.queries,
                         sources=sources,
                         eot=opts.eot, seed=opts.seed)
    x, y = data.images, data.labels
    bar = _Bar()
    print(f"evaluate: {len(y)} images of {opts.data.name}, {opts.norm} eps {opts.eps:g}, "
          f"{'independent' if opts.independent else 'cascade'} of {len(rows)} attacks", file=sys.stderr)
    with warnings.catch_warnings():
        # the library records its RobustnessWarnings in the result; we print them once below
        from smoothguard.attacks import RobustnessWarning

        warnings.simplefilter("ignore", RobustnessWarning)
        try:
            ev = evaluate_robustness(model, x, y, rows, batch_size=opts.batch, independent=opts.independent,
                                     masking_tolerance=opts.masking_tolerance, progress=bar)
        finally:
            bar.close()

    settings = {
        "command": "smoothguard " + " ".join(opts.argv),
        "model": model_name, "model_sha256": model_sha, "model_arch": meta.get("arch"),
        "model_noise_sd": meta.get("noise_sd"), "model_objective": meta.get("objective"),
        **opts.data.settings(),
        "norm": opts.norm, "eps": opts.eps, "attacks": list(opts.attacks), "steps": opts.steps,
        "restarts": opts.restarts, "step_size": opts.step_size, "apgd_steps": opts.apgd_steps,
        "apgd_targets": opts.apgd_targets, "fab_steps": opts.fab_steps,
        "queries": opts.queries, "transfer_from": list(opts.transfer_from), "eot": opts.eot, "seed": opts.seed,
        "independent": opts.independent, "batch": opts.batch, "device": str(opts.device),
        "threads": torch.get_num_threads(),
        "speed": speed.settings(),  # the runtime's rule-based layout/rewrite choice
    }
    title = (f"{model_name} on {len(y)} {opts.data.name} images, {opts.norm} eps = {opts.eps:g}")
    md = ev.to_markdown(title)
    print(md)
    for w in ev.warnings:
        print(f"smoothguard evaluate: warning: {w}", file=sys.stderr)

    result = {"settings": settings, "evaluation": ev.to_dict()}
    figures: list[str] = []
    if opts.curves:
        curves = []
        for norm, grid in (("linf", list(opts.eps_grid_linf)), ("l2", list(opts.eps_grid_l2))):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve = accuracy_vs_eps(model, x, y, norm, grid, steps=opts.curve_steps,
                                        seed=opts.seed, batch_size=opts.batch, progress=bar)
            bar.close()
            curves.append(curve)
            print(f"accuracy vs eps ({norm}, {' + '.join(curve.attacks)}): "
                  + ", ".join(f"{e:g}: {100 * a:.1f}%" for e, a in zip(curve.eps, curve.accuracy)),
                  file=sys.stderr)
        result["curves"] = [c.to_dict() for c in curves]
        if opts.plots:
            from smoothguard.evaluation.attack_plots import plot_accuracy_vs_eps

            figures += [str(p) for p in plot_accuracy_vs_eps(
                curves, out_dir / "accuracy_vs_eps",
                marks=[(opts.norm, opts.eps, ev.robust_accuracy, "full evaluation (worst case)")])]
    if opts.loss_restarts > 0:
        correct = (ev.clean_pred == ev.y).nonzero().squeeze(1).cpu()
        pick = correct[:opts.loss_examples]
        losses = None
        if pick.numel():
            losses = restart_loss_distribution(model, x[pick], y[pick], opts.norm, opts.eps, steps=opts.steps,
                                               restarts=opts.loss_restarts, step_size=opts.step_size,
                                               seed=opts.seed)
            result["restart_losses"] = {"idx": [int(data.indices[i]) for i in pick],
                                        "losses": losses.tolist(), "steps": opts.steps}
            if ev.losses.get("pgd") is not None:  # the report draws the same "all points" panel as the PNG here
                result["restart_losses"]["pooled"] = ev.losses["pgd"].detach().cpu().flatten().tolist()
        if losses is not None and opts.plots:
            from smoothguard.evaluation.attack_plots import plot_restart_losses

            pooled = ev.losses.get("pgd")
            figures += [str(p) for p in plot_restart_losses(
                losses, out_dir / "restart_losses",
                labels=[f"idx {int(data.indices[i])} ({opts.norm} eps {opts.eps:g})" for i in pick],
                pooled=pooled)]
    if opts.grid_examples > 0 and opts.plots:
        from smoothguard.evaluation.attack_plots import plot_adversarial_grid

        pick = select_grid_examples(ev, opts.grid_examples)
        if len(pick):  # none when the model misclassifies every image: nothing to show
            figures += [str(p) for p in plot_adversarial_grid(ev, x, pick.tolist(), out_dir / "examples",
                                                              class_names=data.info.class_names)]
        else:
            print("evaluate: no correctly classified image, so no adversarial-example grid", file=sys.stderr)
    result["figures"] = figures
    result["seconds_total"] = time.perf_counter() - t_all

    _atomic_write(out_dir / "table.md", md)
    _atomic_write(out_dir / "table.csv", ev.to_csv())
    _atomic_write(out_dir / "per_example.tsv", _per_example_tsv(ev, data.indices))
    _atomic_write(out_dir / "table.json", json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    print(f"evaluate: worst-case robust accuracy {100 * ev.robust_accuracy:.2f}% (clean "
          f"{100 * ev.clean_accuracy:.2f}%), attacks {ev.seconds:.1f} s, total {result['seconds_total']:.1f} s; "
          f"wrote {out_dir}/table.md, table.csv, table.json, per_example.tsv"
          + (f" and {len(figures)} figures" if figures else ""), file=sys.stderr)
    return 0
