"""``smoothguard smooth-eval``: smoothed inference as an empirical defense (Nemcovsky,
Zheltonozhskii, Baskin et al.), clean and attacked accuracy over a grid of sigma, m and
vote methods, with attacks crafted the paper's way (PGD through one noise draw per step)
and the honest way (EPGD, m draws per step), transfer from the base model and NAttack."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.contract import check_eps, check_int, check_norm, check_positive, write_text_atomic
from smoothguard.defaults import SMOOTH_EVAL_BATCH, batch_for, describe_batch
from smoothguard.cli.common import (DataSelection, add_data_arguments, add_model_factory_arguments, load_model_arg,
                                    parse_floats)

HELP = "smoothed inference as a defense: accuracy vs sigma, m and vote method under PGD, EPGD, transfer, NAttack"
DESCRIPTION = (
    "For every combination of --sigmas (noise sd, pixel units; 0 = the base model), --m (noise draws per "
    "prediction) and --methods (hard: majority of argmaxes, soft: mean probabilities, soft_logits: mean logits "
    "as in the paper's code, weighted: 2^-rank votes), the smoothed classifier's accuracy on clean images and "
    "under each of --attacks: pgd (PGD on the smoothed model with ONE noise draw per step, the paper's "
    "evaluation, which overstates robustness), epgd (EPGD: CE averaged over m draws per step, the honest "
    "white-box attack), transfer (PGD crafted on the base model without noise) and nattack (score-based, on "
    "the smoothed probabilities). Attacked points are classified with the same per-image noise as the clean "
    "ones. Per-image predictions go row by row into a resumable TSV (rerun to resume; changed settings are "
    "refused); the table (terminal/Markdown/CSV/JSON) and plots of accuracy vs m and vs sigma go to --out-dir. "
    "Shards images across ranks under torchrun (write --max-images)."
)

DEFAULTS = {"sigmas": "0,0.1,0.25", "m": "1,8,32", "methods": "hard,soft,weighted", "attacks": "pgd,epgd,transfer"}
KEY_SETTINGS = ["model_sha256", "data", "root", "split", "skip", "sigmas", "m", "methods", "attacks", "norm", "eps",
                "steps", "step_size", "queries", "population", "seed", "noise_block", "pgd_variant"]
# how the 'pgd' attack on a noisy model is run; recorded so that files of another variant are not resumed
PGD_VARIANT = "one draw per step, highest-loss iterate (no stop at a first success)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from smoothguard.evaluation.smoothed_inference import SMOOTH_ATTACKS, TABLE_FORMATS
    from smoothguard.smoothing.inference import VOTE_METHODS

    p.add_argument("--model", default=None, help="checkpoint (default: the embedded Fashion-MNIST LeNet, sigma 0.25)")
    add_model_factory_arguments(p)
    add_data_arguments(p, default=DEFAULT_DATA)
    g = p.add_argument_group("grid")
    g.add_argument("--sigmas", default=DEFAULTS["sigmas"],
                   help="comma-separated noise sds in [0,1] pixel units (0: no noise, the base model)")
    g.add_argument("--m", "--draws", dest="m", default=DEFAULTS["m"],
                   help="comma-separated noise draws per prediction (integers >= 1); under torchrun write --draws "
                        "(torchrun's own parser takes --m for one of its options)")
    g.add_argument("--methods", default=DEFAULTS["methods"], help=f"vote methods, subset of {', '.join(VOTE_METHODS)}")
    a = p.add_argument_group("attacks")
    a.add_argument("--attacks", default=DEFAULTS["attacks"],
                   help=f"subset of {', '.join(SMOOTH_ATTACKS)} (or 'none': clean accuracy only)")
    a.add_argument("--norm", default="linf", help="threat model: linf or l2")
    a.add_argument("--eps", type=float, default=0.1, help="radius in [0,1] pixel units")
    a.add_argument("--steps", type=int, default=20, help="steps of pgd, epgd and transfer (PGD)")
    a.add_argument("--step-size", type=float, default=None, help="step in pixel units (default 2.5*eps/steps)")
    a.add_argument("--queries", type=int, default=2000, help="nattack: query budget per image (each query m passes)")
    a.add_argument("--population", type=int, default=100, help="nattack: candidates per iteration (paper: 300)")
    r = p.add_argument_group("run")
    r.add_argument("--batch", type=int, default=None,
                   help=f"noisy images per forward pass (votes, smoothed model; default: "
                        f"{describe_batch(SMOOTH_EVAL_BATCH)}; recorded in table.json)")
    r.add_argument("--attack-batch", type=int, default=4096,
                   help="most noisy images per attack step (epgd runs on ~attack-batch/m images at a time)")
    r.add_argument("--group", type=int, default=50, help="images per group (rows are written per group)")
    r.add_argument("--out-dir", default="smoothguard-smooth-eval", help="folder for the table and the plots")
    r.add_argument("--out", default=None, help="per-image result TSV (default OUT_DIR/smooth_eval.tsv); resumable")
    r.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    r.add_argument("--format", default="table", choices=TABLE_FORMATS, help="format of the table printed")
    r.add_argument("--no-plots", action="store_true", help="write the tables only")


def _names(text: str, option: str, allowed: tuple[str, ...], allow_none: bool = False) -> tuple[str, ...]:
    items = [v.strip() for v in str(text).split(",") if v.strip()]
    if allow_none and items == ["none"]:
        return ()
    bad = [v for v in items if v not in allowed]
    if bad or (not items and not allow_none):
        raise ValueError(f"{option} must be a comma-separated subset of {', '.join(allowed)}; got "
                         f"{bad[0] if bad else text!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{option} lists a value twice: {text!r}")
    return tuple(items)


def validate(args: argparse.Namespace):
    """Check every option before any model or data is loaded; returns the grid."""
    from smoothguard.evaluation.smoothed_inference import SMOOTH_ATTACKS, SmoothEvalGrid
    from smoothguard.smoothing.inference import VOTE_METHODS

    sigmas = parse_floats(args.sigmas, "--sigmas")
    if not sigmas or any(not math.isfinite(s) or s < 0 for s in sigmas):
        raise ValueError(f"--sigmas must be comma-separated noise sds >= 0 in pixel units, e.g. 0,0.1,0.25; "
                         f"got {args.sigmas!r}")
    try:
        ms = [int(v) for v in args.m.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--m must be comma-separated integers >= 1, e.g. 1,8,32; got {args.m!r}") from None
    if not ms or any(v < 1 for v in ms):
        raise ValueError(f"--m must be comma-separated integers >= 1, e.g. 1,8,32; got {args.m!r}")
    for name, vals in (("--sigmas", sigmas), ("--m", ms)):
        if len(set(vals)) != len(vals):
            raise ValueError(f"{name} lists a value twice: {vals}")
    methods = _names(args.methods, "--methods", VOTE_METHODS)
    attacks = _names(args.attacks, "--attacks", SMOOTH_ATTACKS, allow_none=True)
    check_norm(args.norm, name="--norm")
    check_eps(args.eps, args.norm, "--eps")
    if args.step_size is not None:
        check_positive("--step-size (pixel units)", args.step_size)
    for name, v, lo in (("--steps", args.steps, 1), ("--population", args.population, 2),
                        ("--batch", args.batch, 1), ("--attack-batch", args.attack_batch, 1),
                        ("--group", args.group, 1), ("--skip", args.skip, 1)):
        if v is not None or name != "--batch":  # --batch None: SMOOTH_EVAL_BATCH of the device (run)
            check_int(name, v, minimum=lo)
    if "nattack" in attacks and args.queries < args.population + 1:
        raise ValueError(f"--queries must be >= --population + 1 = {args.population + 1} (one clean query and "
                         f"one full population); got {args.queries}")
    if args.max < -1 or args.max == 0:
        raise ValueError(f"--max must be a positive count or -1 (all); got {args.max}")
    return SmoothEvalGrid(tuple(sigmas), tuple(ms), methods, attacks)


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


@dataclass(frozen=True)
class SmoothEvalCommandOptions:
    """What ``smoothguard smooth-eval`` does: evaluate every combination of ``grid`` (sigmas,
    m, vote methods, attacks) with the attack and run settings ``evaluation`` (the
    library's :class:`~smoothguard.evaluation.smoothed_inference.SmoothEvalOptions`) for
    ``model`` (a checkpoint; None: the embedded one) or ``model_factory`` with ``weights``
    on the images of ``data``, ``group`` images per group. Rows go to ``out`` (None:
    ``out_dir``/smooth_eval.tsv), resumed unless ``overwrite``; the table (printed as
    ``format``), its files and, with ``plots``, the plots go to ``out_dir``; ``world``:
    torchrun's ranks (None: one process); ``argv``: the command line recorded in
    table.json."""

    grid: Any  # a smoothguard.evaluation.smoothed_inference.SmoothEvalGrid
    evaluation: Any  # a smoothguard.evaluation.smoothed_inference.SmoothEvalOptions
    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    data: DataSelection = field(default_factory=DataSelection)
    group: int = 50
    out_dir: Path = Path("smoothguard-smooth-eval")
    out: str | None = None
    overwrite: bool = False
    format: str = "table"
    plots: bool = True
    world: Any = None  # a smoothguard.distributed.World
    argv: tuple[str, ...] = ()


def options(args: argparse.Namespace) -> SmoothEvalCommandOptions:
    """The checked, typed options of the command line (``--batch`` not given: the default of
    the device the common options resolved)."""
    from smoothguard.evaluation.smoothed_inference import SmoothEvalOptions

    grid = validate(args)
    batch = batch_for(SMOOTH_EVAL_BATCH, args.device, args.batch)
    evaluation = SmoothEvalOptions(norm=args.norm, eps=args.eps, steps=args.steps, step_size=args.step_size,
                                   queries=args.queries, population=args.population, batch=batch,
                                   attack_batch=args.attack_batch, seed=args.seed, device=args.device)
    return SmoothEvalCommandOptions(grid=grid, evaluation=evaluation, model=args.model,
                                    model_factory=args.model_factory, weights=args.weights,
                                    data=DataSelection.from_args(args), group=args.group, out_dir=Path(args.out_dir),
                                    out=args.out, overwrite=args.overwrite, format=args.format,
                                    plots=not args.no_plots, world=args.world, argv=tuple(args.argv))


def run(args: argparse.Namespace) -> int:
    return smooth_eval(options(args))


def smooth_eval(cmd: SmoothEvalCommandOptions) -> int:
    """Evaluate every selected image, write the rows, the table and the plots: the exit code."""
    from smoothguard.cli._smoothing_run import run_rows
    from smoothguard.cli._provenance import model_settings
    from smoothguard.cli.attack import check_shape
    from smoothguard.evaluation.resultfile import read_complete_rows
    from smoothguard.evaluation.robustness import json_safe
    from smoothguard.evaluation.smoothed_inference import (
        ATTACK_DESCRIPTIONS,
        make_compute,
        plot_accuracy_vs,
        render_table,
        summarize,
    )
    from smoothguard.smoothing import NOISE_BLOCK

    grid, opts = cmd.grid, cmd.evaluation
    t_all = time.perf_counter()
    torch.manual_seed(opts.seed)  # the global generator feeds noise-injection layers (PNI / CNI)
    base, meta = load_model_arg(cmd.model, opts.device, cmd.model_factory, cmd.weights)
    base.eval()
    data = cmd.data.load()
    check_shape(meta, data, "--model")
    out_dir = Path(cmd.out_dir)
    dest = replace(cmd, out=cmd.out or str(out_dir / "smooth_eval.tsv"))  # where run_rows writes
    model_name, model_sha = model_settings(cmd.model, cmd.model_factory, cmd.weights)
    settings = {
        "command": "smoothguard " + " ".join(cmd.argv),
        "model": model_name, "model_sha256": model_sha, "model_arch": meta.get("arch"),
        "model_noise_sd": meta.get("noise_sd"), "model_objective": meta.get("objective"),
        **cmd.data.settings(),
        "sigmas": list(grid.sigmas), "m": list(grid.ms), "methods": list(grid.methods), "attacks": list(grid.attacks),
        "norm": opts.norm, "eps": opts.eps, "steps": opts.steps, "step_size": opts.step_size,
        "queries": opts.queries if "nattack" in grid.attacks else None,
        "population": opts.population if "nattack" in grid.attacks else None,
        "seed": opts.seed, "noise_block": min(NOISE_BLOCK, opts.batch), "pgd_variant": PGD_VARIANT, "batch": opts.batch,
        "attack_batch": opts.attack_batch, "group": cmd.group, "device": str(opts.device),
        "threads": torch.get_num_threads(),
    }
    caught: dict[str, int] = {}
    compute = make_compute(opts, grid, base, int(meta["num_classes"]), caught)
    n_comb = len(grid.combinations())
    print(f"smooth-eval: {len(data)} images of {cmd.data.name}, {n_comb} combinations (sigma x m x method) x "
          f"{1 + len(grid.attacks)} evaluations, {opts.norm} eps {opts.eps:g}", file=sys.stderr)
    run_rows(dest, data, grid.columns(), "smooth-eval", settings, KEY_SETTINGS, cmd.group, compute)
    world = cmd.world
    for msg, count in caught.items():
        expected = " (expected for 'pgd': the paper's single-draw attack; compare epgd)" \
            if "stochastic" in msg else ""
        print(f"smoothguard smooth-eval: warning ({count}x){expected}: {msg}", file=sys.stderr)
    if world is not None and world.rank != 0:
        return 0

    done, _, _ = read_complete_rows(dest.out, grid.columns())
    wanted = [int(i) for i in data.indices.tolist()]
    rows = [done[i] for i in wanted if i in done]
    table = summarize(rows, grid)
    title = (f"Smoothed inference: {model_name} on {len(rows)} {cmd.data.name} images, {opts.norm} eps = {opts.eps:g}, "
             f"{opts.steps} attack steps")
    notes = [f"{a}: {ATTACK_DESCRIPTIONS[a]}" for a in grid.attacks]
    if grid.attacks and 0 in grid.sigmas:
        notes.append("sigma 0 is the base model: pgd = PGD on it (one draw of its own noise per step if it has "
                     "noise-injection layers), epgd = PGD with EOT over m of its passes for such a noisy model, "
                     "transfer = PGD with its noise switched off; for a deterministic model the three coincide")
    print(render_table(table, cmd.format, title, notes), end="")
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds_rows = sum(float(r[-1]) for r in rows)
    result = {"settings": settings, "grid": {"sigmas": list(grid.sigmas), "m": list(grid.ms),
                                              "methods": list(grid.methods), "attacks": list(grid.attacks)},
              "rows": [r.to_dict() for r in table], "notes": notes, "warnings": caught,
              "seconds_this_run": time.perf_counter() - t_all, "seconds_rows_total": seconds_rows,
              "result_file": str(dest.out)}
    figures: list[str] = []
    if cmd.plots and rows:
        for xname in ("m", "sigma"):
            figures += [str(p) for p in plot_accuracy_vs(table, grid, xname, out_dir / f"accuracy_vs_{xname}",
                                                         title=title)]
    result["figures"] = figures
    _atomic_write(out_dir / "table.md", render_table(table, "markdown", title, notes))
    _atomic_write(out_dir / "table.csv", render_table(table, "csv"))
    _atomic_write(out_dir / "table.json", json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    print(f"smooth-eval: {len(rows)} images, {time.perf_counter() - t_all:.1f} s this run "
          f"({seconds_rows:.1f} s of image rows in total); wrote {out_dir}/table.md, table.csv, table.json"
          + (f" and {len(figures)} figures" if figures else ""), file=sys.stderr)
    return 0
