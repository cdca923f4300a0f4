"""The per-image loop shared by ``certify`` and ``predict``: groups of images, rows
flushed to a resumable result file, a progress bar with images/s and running accuracy."""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.contract import ContractError, check_alpha, check_int, check_model_data, check_sigma
from smoothguard.cli._denoised import ApiOptions
from smoothguard.cli.common import (DataSelection, add_data_arguments, add_model_factory_arguments, load_model_arg,
                                    progress, validate_selection)
from smoothguard.defaults import SAMPLING_BATCH, batch_for, describe_batch
from smoothguard.distributed import World, barrier
from smoothguard.evaluation.resultfile import ResultWriter, format_value, merge_parts, read_complete_rows
from smoothguard.noise import NOISES
from smoothguard.smoothing import NOISE_BLOCK, SmoothedClassifier


def add_smoothing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint (default: the embedded Fashion-MNIST LeNet, sigma 0.25)")
    add_model_factory_arguments(p)
    add_data_arguments(p, default=DEFAULT_DATA)
    p.add_argument("--sigma", type=float, default=None,
                   help="noise sd in [0,1] pixel units. Default: the noise_sd the checkpoint (or, with --denoiser, "
                        "the denoiser) was trained at, else 0.25; a different explicit value is allowed and noted")
    p.add_argument("--noise", default=None, choices=sorted(NOISES),
                   help="noise distribution with sd --sigma: gaussian certifies l2 radii, uniform and laplace l1 "
                        "radii (smoothguard.noise). Default: the noise the model was trained with, else gaussian")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=None,
                   help=f"noisy images per forward pass (default: {describe_batch(SAMPLING_BATCH)}; recorded in the "
                        "sidecar). Results do not depend on it for batches >= 100")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32 (exact) or bf16 autocast (faster; may flip a few votes)")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model TorchScript-frozen (conv+ReLU fusion, batch-norm folding; checked against "
                        "the eager model, falls back to it with a warning). Off unless asked: its logits differ from "
                        "the eager model's in the last bits, which can move a vote (smoothguard.runtime)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads running forward passes concurrently while the main thread draws the next noise "
                        "(results identical); torch's threads are split among them while sampling. Default: the "
                        "rule of smoothguard.runtime (2 on a CPU with at least 2 threads, else 1), recorded in the "
                        "sidecar's 'speed'")
    p.add_argument("--out", default=None,
                   help="result TSV (flushed row by row; rerun with the same --out to resume). Default: stdout")
    p.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    from smoothguard.cli._denoised import add_query_arguments

    add_query_arguments(p)  # --denoiser, --api (denoised smoothing, query-only classifiers)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_adaptive_budget(n_max: int, futility_alpha: float) -> None:
    """The sample budget and futility level of the adaptive modes (certify --radii, predict
    --adaptive)."""
    if n_max < 1:
        raise ValueError(f"--n-max must be >= 1, got {n_max}")
    if not 0.0 < futility_alpha < 1.0:
        raise ValueError(f"--futility-alpha must be in (0, 1), got {futility_alpha}")


def validate_smoothing_arguments(args: argparse.Namespace) -> None:
    """Check the numeric options before any model or data is loaded."""
    for flag, value in (("model", args.model), ("denoiser", args.denoiser)):
        if value == "":  # "" would silently mean "the embedded model" / "no denoiser"
            raise ContractError(f"--{flag} is empty; give a checkpoint path or leave the option out")
    if args.sigma is not None:
        check_sigma(args.sigma, "--sigma")
    check_alpha(args.alpha, "--alpha")
    if args.batch is not None:  # None: SAMPLING_BATCH of the device, resolved by smoothing_options()
        check_int("--batch", args.batch, minimum=1)
    validate_selection(args)
    if args.workers is not None:
        check_int("--workers", args.workers, minimum=1)


DEFAULT_SIGMA = 0.25


@dataclass(frozen=True)
class SmoothingOptions:
    """The smoothed classifier and the row loop ``certify`` and ``predict`` share: the base
    classifier ``model`` (a checkpoint; None: the embedded one) or ``model_factory`` with
    ``weights``, or the endpoint ``api``; optionally behind ``denoiser``; noise ``noise``
    (None: the model's) of sd ``sigma`` (None: the sd the model or denoiser was trained at,
    else 0.25); failure probability ``alpha``; ``batch`` noisy images per forward pass;
    ``precision``, ``jit`` and ``workers`` (None: the runtime's rule); the images of
    ``data``. Rows go to ``out`` (None: stdout), resumed unless ``overwrite``; ``world``:
    torchrun's ranks (None: one process); ``command`` names the command in its stderr notes."""

    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    api: ApiOptions | None = None
    denoiser: str | None = None
    data: DataSelection = field(default_factory=DataSelection)
    sigma: float | None = None
    noise: str | None = None
    alpha: float = 0.001
    batch: int = SAMPLING_BATCH["cpu"]
    precision: str = "fp32"
    jit: bool | None = None
    workers: int | None = None
    out: str | None = None
    overwrite: bool = False
    seed: int = 0
    device: Any = "cpu"  # a torch.device or its name
    world: Any = None  # a smoothguard.distributed.World
    command: str = "certify"


def smoothing_options(args: argparse.Namespace) -> SmoothingOptions:
    """The checked, typed smoothing options of a certify/predict command line (``--batch``
    not given: the default of the device the common options resolved)."""
    validate_smoothing_arguments(args)
    batch = batch_for(SAMPLING_BATCH, args.device, args.batch)
    return SmoothingOptions(model=args.model, model_factory=args.model_factory, weights=args.weights,
                            api=ApiOptions.from_args(args), denoiser=args.denoiser, data=DataSelection.from_args(args),
                            sigma=args.sigma, noise=args.noise, alpha=args.alpha, batch=batch,
                            precision=args.precision, jit=args.jit, workers=args.workers, out=args.out,
                            overwrite=args.overwrite, seed=args.seed, device=args.device, world=args.world,
                            command=args.command)


def resolve_sigma(sigma: float | None, trained_sd: Any, source: str, command: str = "certify") -> tuple[float, str]:
    """``sigma`` (--sigma), or by default the noise sd the model was trained at
    (``trained_sd``, from the checkpoint ``source``), else 0.25. Returns (sigma, where it
    came from). An explicit sigma that differs from the training one is allowed and noted on
    stderr (as ``command``)."""
    trained = float(trained_sd) if isinstance(trained_sd, (int, float)) and trained_sd > 0 else None
    if sigma is None:
        if trained is None:
            return DEFAULT_SIGMA, "default"
        print(f"{command}: sigma {trained:g} (the noise_sd {source} was trained at)", file=sys.stderr)
        return trained, "checkpoint"
    if trained is not None and not math.isclose(sigma, trained, rel_tol=1e-9):
        print(f"{command}: note: --sigma {sigma:g} differs from the noise_sd {trained:g} {source} was "
              "trained at (allowed; recorded in the result sidecar)", file=sys.stderr)
    return float(sigma), "flag"


def build_smoothed(opts: SmoothingOptions) -> tuple[SmoothedClassifier, dict[str, Any], Any]:
    """The smoothed classifier, the sidecar's settings and the selected images."""
    if opts.api is not None:  # a query-only classifier behind an HTTP endpoint ("" is refused)
        from smoothguard.cli._denoised import api_classifier

        data = opts.data.load()
        model, meta, extra = api_classifier(opts.api, opts.model, opts.data.name, data.info)
    else:
        model, meta = load_model_arg(opts.model, opts.device, opts.model_factory, opts.weights)
        data = opts.data.load()
        extra = {}
    check_model_data(meta["num_classes"], meta.get("in_shape"), data.info.num_classes, data.info.input_shape,
                     model="--api endpoint" if opts.api is not None and opts.api.url
                     else f"--model {opts.model or '(embedded)'}",
                     data=f"--data {opts.data.name}")
    trained_sd, sd_source = meta.get("noise_sd"), "the model"
    if opts.denoiser:  # denoised smoothing: x -> f(D(x)), noise added before D
        from smoothguard.cli._denoised import denoised_labels, load_denoiser, load_denoiser_arg

        if extra.get("denoiser"):
            raise ValueError(f"the endpoint already applies denoiser {extra['denoiser']}; drop --denoiser")
        if isinstance(model, torch.nn.Module):
            model, den_settings = load_denoiser_arg(opts.denoiser, model, data.info.input_shape, opts.device)
        else:
            den, den_settings = load_denoiser(opts.denoiser, data.info.input_shape, opts.device)
            model = denoised_labels(den, model)
        extra.update(den_settings)
        trained_sd, sd_source = den_settings.get("denoiser_noise_sd"), "the denoiser"
    sigma, sigma_source = resolve_sigma(opts.sigma, trained_sd, sd_source, opts.command)
    trained_noise = meta.get("noise", "gaussian") if not opts.denoiser else "gaussian"
    noise = opts.noise or trained_noise
    if noise != trained_noise:
        print(f"{opts.command}: note: --noise {noise} differs from the {trained_noise} noise "
              "the model was trained with (allowed; recorded in the result sidecar)", file=sys.stderr)
    is_module = isinstance(model, torch.nn.Module)
    # every speed choice (layout, rewrite, workers, threads, jit) is the library's own rule
    # (smoothguard.runtime.fastest_exact) unless a flag overrides it: the CLI and
    # SmoothedClassifier(model, K, sigma) run a model the same way
    smoothed = SmoothedClassifier(model, meta["num_classes"], sigma, precision=opts.precision,
                                  jit=opts.jit, workers=opts.workers,
                                  device=None if is_module else opts.device, in_shape=data.info.input_shape,
                                  noise=noise)
    from smoothguard.cli._provenance import model_settings

    model_name, model_sha = model_settings(opts.model, opts.model_factory, opts.weights)
    settings = {
        "model": model_name,
        "model_sha256": None if extra.get("api") else model_sha,
        "model_arch": meta.get("arch"),
        "model_noise_sd": meta.get("noise_sd"),
        **opts.data.settings(),
        "sigma": sigma, "sigma_source": sigma_source, "noise": noise, "norm": smoothed.noise.norm,
        "alpha": opts.alpha, "seed": opts.seed, "precision": opts.precision,
        "batch": opts.batch, "noise_block": min(NOISE_BLOCK, opts.batch), "denoiser": None,
        "device": str(opts.device), "speed": smoothed.speed.settings(),
    }
    settings.update(extra)
    return smoothed, settings, data


ESTIMATE_MIN_SECONDS = 30.0  # shorter runs need no forecast


def _print_estimate(kind: str, remaining: int, per_image: float, bar) -> None:
    """After the second group of images: how long the rest will take at its measured speed
    (stderr). The first group is not used: it pays the one-time jit trace and thread start."""
    seconds = remaining * per_image
    if remaining > 0 and seconds >= ESTIMATE_MIN_SECONDS:
        when = f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
        bar.write(f"{kind}: {per_image:.2f} s per image so far; the other {remaining} images should take about "
                  f"{when}", file=sys.stderr)


# images per call of the adaptive procedures: their early looks are a few hundred samples
# per image, so many images must share the forward batches (each row is still written as
# soon as its image finishes: the procedures' on_done)
ADAPTIVE_GROUP = 64

KEY_SETTINGS = ["model_sha256", "data", "root", "split", "skip", "sigma", "noise", "alpha", "seed", "precision",
                "noise_block", "denoiser", "denoiser_sha256"]


class RowDestination(Protocol):
    """Where :func:`run_rows` writes: ``out`` (the result file, None: stdout), ``overwrite``
    (start it afresh) and ``world`` (torchrun's ranks; None: one process). A command's typed options (certify, predict, attack, verify) or its parsed
    Namespace (smooth-eval)."""

    out: str | None
    overwrite: bool
    world: Any


def run_rows(
    dest: RowDestination,
    data,
    columns: Sequence[str],
    kind: str,
    settings: dict[str, Any],
    key_settings: Sequence[str],
    group: int,
    compute: Callable[..., list[list[Any]] | None],
    on_bar: Callable[[Any], None] | None = None,
    streaming: bool = False,
) -> list[list[str]] | None:
    """Compute rows for every selected image not yet in ``--out``; return all rows of the
    run (resumed and new, formatted, in index order), or None on ranks other than 0.

    Under torchrun (WORLD_SIZE > 1) rank r takes the selected images r, r + K, ..., writes
    and resumes its own part file ``OUT.partR-of-K``, and rank 0 merges the parts into
    ``OUT`` in index order once all are complete. Per-image seeds make every row the
    same as in a single-process run. ``on_bar(bar)`` gets the progress bar once it exists
    (for progress inside a group, e.g. Square's query loop).

    ``compute(x, y, idx)`` returns a group's rows without the time column, which is then the
    group's wall time over its images. With ``streaming``, ``compute(x, y, idx, emit)``
    instead calls ``emit(row, seconds)`` for each image as soon as it is done (any order),
    with ``seconds`` the time attributable to that image; each row is written at once.
    """
    world = dest.world or World()
    if world.distributed and not dest.out:
        raise ValueError("under torchrun, --out is required (each rank writes its own part file)")
    positions = list(range(len(data)))
    out = dest.out
    if world.distributed:
        positions = positions[world.rank::world.size]
        out = f"{dest.out}.part{world.rank}-of-{world.size}"
    if out:
        # resumed rows must belong to this run's (this rank's) selection of images
        writer = ResultWriter(out, columns, kind, settings, key_settings, overwrite=dest.overwrite,
                              allowed=[int(data.indices[i]) for i in positions]).open()
    else:
        writer = None
        print("\t".join(columns), flush=True)
    done = writer.done if writer else {}
    printed: dict[int, list[str]] = {}
    todo = [i for i in positions if int(data.indices[i]) not in done]
    # a "correct" column, where there is one, drives the running accuracy shown
    correct_col = columns.index("correct") if "correct" in columns else None
    n_correct = sum(int(r[correct_col]) for r in done.values()) if correct_col is not None else 0
    n_rows = len(done)
    bar = progress(total=len(positions), initial=len(positions) - len(todo), desc=kind, unit="img",
                   **({"disable": True} if world.rank != 0 else {}))
    if on_bar is not None:
        on_bar(bar)
    t_start = time.perf_counter()
    computed = 0

    def emit(row: list[Any], seconds: float) -> None:
        nonlocal n_correct, n_rows, computed
        row.append(seconds)
        if writer:
            writer.write(row)
        else:
            printed[int(row[0])] = [format_value(v) for v in row]
            print("\t".join(printed[int(row[0])]), flush=True)
        n_correct += int(row[correct_col]) if correct_col is not None else 0
        n_rows += 1
        computed += 1
        bar.update(1)
        bar.set_postfix(**({"acc": f"{n_correct / max(n_rows, 1):.3f}"} if correct_col is not None else {}),
                        img_s=f"{computed / (time.perf_counter() - t_start):.2f}")

    try:
        for start in range(0, len(todo), group):
            pos = torch.tensor(todo[start:start + group])
            t0, before = time.perf_counter(), computed
            if streaming:
                compute(data.images[pos], data.labels[pos], data.indices[pos], emit)
            else:
                rows = compute(data.images[pos], data.labels[pos], data.indices[pos])
                per_image = (time.perf_counter() - t0) / max(len(rows), 1)
                for row in rows:
                    emit(row, per_image)
            if start == group and world.rank == 0:  # the second group: past the one-time start-up (jit, threads)
                per_image = (time.perf_counter() - t0) / max(computed - before, 1)
                _print_estimate(kind, len(todo) - computed, per_image, bar)
    finally:
        bar.close()
        if writer:
            writer.close()
    if world.distributed:
        barrier()
        if world.rank == 0:
            parts = [f"{dest.out}.part{r}-of-{world.size}" for r in range(world.size)]
            expected = [int(i) for i in data.indices.tolist()]
            if not merge_parts(dest.out, parts, columns, kind, settings, key_settings, expected):
                raise ValueError(f"some rows are missing from the parts of {dest.out}; rerun to complete them")
            print(f"{kind}: merged {world.size} parts into {dest.out} ({len(expected)} rows)", file=sys.stderr)
        barrier()
        if world.rank != 0:
            return None
        merged, _, _ = read_complete_rows(dest.out, columns)
        return [merged[k] for k in sorted(merged)]
    elif writer:
        print(f"{kind}: {n_rows} rows in {out} ({computed} computed now, {n_rows - computed} resumed)"
              + (f"; accuracy of the smoothed classifier {n_correct / max(n_rows, 1):.4f}"
                 if correct_col is not None else ""), file=sys.stderr)
    rows_by_idx = writer.done if writer else printed
    return [rows_by_idx[k] for k in sorted(rows_by_idx)]
