"""``smoothguard train-denoiser``: train a DnCNN for denoised smoothing (Salman et al. 2020)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from smoothguard.cli._conventions import DEFAULT_TRAIN_DATA
from smoothguard.evaluation.resultfile import file_sha256
from smoothguard.cli.common import DataSelection, add_data_arguments
from smoothguard.cli.train import (TrainingRun, _Bar, add_loop_arguments, fit_in_out_dir, load_train_test,
                                  require_out_dir, train_config)
from smoothguard.models import DENOISERS, get_denoiser, load_checkpoint
from smoothguard.models.denoiser import DEFAULT_DEPTH, DEFAULT_WIDTH
from smoothguard.training import Trainer, get_objective
from smoothguard.training.trainer import LOG_NAME, MODEL_NAME
from smoothguard.utils import derive_seed

HELP = "train a denoiser for denoised smoothing (objectives: mse, stability, classification)"
DESCRIPTION = (
    "Train a denoiser D so that the off-the-shelf classifier f can be certified by smoothing f(D(x + d)) "
    "(Salman, Sun, Yang, Kapoor, Kolter, NeurIPS 2020). Objectives: mse = E||D(x+d) - x||^2 (no classifier "
    "needed); stability = E CE(f(D(x+d)), f(x)); classification = E CE(f(D(x+d)), y). The classifier is "
    "frozen (no gradient, eval mode, weights checked unchanged at the end). Hybrid: train with mse, then "
    "with stability from --init OUT_MSE/model.pt. Black box: --surrogates A.pt,B.pt computes the loss on "
    "surrogate classifiers, one per minibatch in turn, and never loads the target. Writes OUT/log.tsv, "
    "OUT/checkpoint.pt (every epoch; --resume) and OUT/model.pt (a 'denoiser' checkpoint for "
    "certify --denoiser)."
)
OBJECTIVE_NAMES = {"mse": "denoiser_mse", "stability": "denoiser_stability",
                   "classification": "denoiser_classification"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p, default=DEFAULT_TRAIN_DATA, split="train", selection=False)
    g = p.add_argument_group("classifier (white box) or surrogates (black box)")
    g.add_argument("--classifier", default=None,
                   help="checkpoint of the frozen classifier f (stability/classification; for mse only used to log "
                        "the accuracy of f(D(x)))")
    g.add_argument("--surrogates", default=None,
                   help="black-box mode: comma-separated surrogate classifier checkpoints, one per minibatch in turn "
                        "(the target is never used; give no --classifier)")
    p.add_argument("--objective", default="mse", choices=list(OBJECTIVE_NAMES), help="training objective")
    p.add_argument("--target", default="hard", choices=["hard", "soft"],
                   help="stability: cross-entropy against argmax f(x) (hard, the paper's code) or softmax f(x) (soft)")
    p.add_argument("--noise-sd", type=float, default=0.25, help="Gaussian noise sd in pixel units (= the certification sigma)")
    p.add_argument("--init", default=None,
                   help="start from this denoiser checkpoint (hybrid: the mse denoiser, then --objective stability); "
                        "its architecture is used")
    p.add_argument("--arch", default="dncnn", choices=DENOISERS, help="denoiser architecture")
    p.add_argument("--depth", type=int, default=None,
                   help=f"dncnn convolutions (default {DEFAULT_DEPTH}; paper 17; with --init: the init's)")
    p.add_argument("--width", type=int, default=None,
                   help=f"dncnn hidden channels (default {DEFAULT_WIDTH}; paper 64; with --init: the init's)")
    # the paper: Adam, lr 1e-3 from scratch (1e-5 when fine-tuning on ImageNet), no weight decay
    add_loop_arguments(p, lr=1e-3, optimizer="adam", weight_decay=0.0, lr_step=30, command="train-denoiser",
                       lr_help="initial learning rate (paper: Adam 1e-3 from scratch; 1e-5 fine-tuning on ImageNet)")


class _DenoiserBar(_Bar):
    """The epoch log of a denoiser: loss, test MSE/PSNR on noisy images, and accuracies of
    f(D(x)) only when a classifier is there to measure them (MSE training has none)."""

    def on_step(self, epoch: int, step: int, loss: float, acc: float) -> None:
        self.bar.update(1)
        if step % 20 == 0:
            post = {"loss": f"{loss:.4g}"}
            if acc == acc:  # not NaN: the objective returned logits
                post["acc"] = f"{acc:.3f}"
            self.bar.set_postfix(**post)

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        self.bar.close()
        fmt = {"train_loss": ".5f", "test_mse": ".5f", "test_psnr": ".2f", "train_acc": ".4f", "test_acc": ".4f",
               "noisy_test_acc": ".4f", "seconds": ".1f"}
        print(f"epoch {row['epoch']}: lr {row['lr']:.4g} " + " ".join(
            f"{k} {row[k]:{f}}" + (" dB" if k == "test_psnr" else "") for k, f in fmt.items() if k in row),
            flush=True)


def _load_classifier(path: str, device, info, role: str):
    model, meta = load_checkpoint(path, device)
    if meta.get("kind", "classifier") != "classifier":
        raise ValueError(f"--{role} {path} is a {meta.get('kind')!r} checkpoint; a classifier is needed")
    if tuple(meta["in_shape"]) != tuple(info.input_shape) or int(meta["num_classes"]) != info.num_classes:
        raise ValueError(f"--{role} {path} takes inputs {tuple(meta['in_shape'])} with {meta['num_classes']} classes; "
                         f"--data {info.name} has {tuple(info.input_shape)} with {info.num_classes}")
    return model, {"path": str(Path(path).resolve()), "sha256": file_sha256(path), "arch": meta.get("arch")}


def _build_denoiser(opts: "DenoiserOptions", info):
    if opts.init is None:
        options = {"depth": opts.depth or DEFAULT_DEPTH, "width": opts.width or DEFAULT_WIDTH}
        torch.manual_seed(derive_seed(opts.config.seed, "init"))  # the initial weights follow --seed too
        return get_denoiser(opts.arch, info.input_shape, **options).to(opts.device), opts.arch, options, None
    den, meta = load_checkpoint(opts.init, opts.device)
    if meta.get("kind") != "denoiser":
        raise ValueError(f"--init {opts.init} is a {meta.get('kind', 'classifier')!r} checkpoint; a denoiser is needed")
    if tuple(meta["in_shape"]) != tuple(info.input_shape):
        raise ValueError(f"--init {opts.init} denoises {tuple(meta['in_shape'])} images; --data {info.name} has "
                         f"{tuple(info.input_shape)}")
    options = dict(meta.get("model_options", {}))
    for name, given in (("depth", opts.depth), ("width", opts.width)):
        if given is not None and options.get(name) != given:
            raise ValueError(f"--{name} {given} differs from the --init denoiser's {name} {options.get(name)}; "
                             f"leave --{name} out")
    if meta["arch"] != opts.arch:
        raise ValueError(f"--init {opts.init} is a {meta['arch']!r} denoiser, not --arch {opts.arch!r}")
    init = {"path": str(Path(opts.init).resolve()), "sha256": file_sha256(opts.init),
            "objective": meta.get("objective")}
    return den.train(), meta["arch"], options, init


def validate(args: argparse.Namespace) -> tuple[str, ...]:
    """The option checks that need no data or model (also run on ``smoothguard run`` steps);
    returns the surrogate checkpoint paths (empty: white box or none)."""
    if not args.noise_sd > 0:
        raise ValueError(f"--noise-sd must be > 0 (pixel units), got {args.noise_sd}")
    if args.classifier and args.surrogates:
        raise ValueError("give --classifier (white box) or --surrogates (black box), not both: black-box training "
                         "never uses the target classifier")
    surrogate_paths = tuple(s for s in (args.surrogates or "").split(",") if s.strip())
    if args.surrogates is not None and not surrogate_paths:
        raise ValueError(f"--surrogates needs comma-separated checkpoint paths, got {args.surrogates!r}")
    if args.objective != "mse" and not (args.classifier or surrogate_paths):
        raise ValueError(f"--objective {args.objective} needs --classifier CKPT or --surrogates CKPT1,CKPT2,...")
    return surrogate_paths


@dataclass(frozen=True)
class DenoiserOptions(TrainingRun):
    """What ``smoothguard train-denoiser`` does: train an ``arch`` denoiser (``depth`` /
    ``width``, or those of the ``init`` checkpoint it starts from) with ``objective`` at
    ``noise_sd``, against the frozen ``classifier`` (white box) or the ``surrogates`` (black
    box, one per minibatch in turn), under ``config``, on the train split of ``data`` (at
    most ``max_train`` / ``max_test`` images, -1: all). Writes ``out_dir``, continuing its
    checkpoint with ``resume``; ``world``: torchrun's ranks; ``argv``: the command line
    recorded in the checkpoint."""

    out_dir: Path
    objective: str = "mse"
    target: str = "hard"
    noise_sd: float = 0.25
    classifier: str | None = None
    surrogates: tuple[str, ...] = ()
    init: str | None = None
    arch: str = "dncnn"
    depth: int | None = None
    width: int | None = None


def options(args: argparse.Namespace) -> DenoiserOptions:
    """The checked, typed options of the command line (the output folder first, as before)."""
    out_dir = require_out_dir(args.out_dir)
    surrogates = validate(args)
    return DenoiserOptions(out_dir=out_dir, objective=args.objective, target=args.target, noise_sd=args.noise_sd,
                           classifier=args.classifier, surrogates=surrogates, init=args.init, arch=args.arch,
                           depth=args.depth, width=args.width, config=train_config(args),
                           data=DataSelection.from_args(args), max_train=args.max_train, max_test=args.max_test,
                           resume=args.resume, device=args.device, world=args.world, argv=tuple(args.argv))


def run(args: argparse.Namespace) -> int:
    return train_denoiser(options(args))


def train_denoiser(opts: DenoiserOptions) -> int:
    """Load the data and the classifiers, build the denoiser, train into ``opts.out_dir``:
    the exit code."""
    train, test = load_train_test(opts.data, opts.max_train, opts.max_test)
    info = train.info
    surrogate_paths = list(opts.surrogates)
    paths = surrogate_paths or ([opts.classifier] if opts.classifier else [])
    role = "surrogates" if surrogate_paths else "classifier"
    loaded = [_load_classifier(p, opts.device, info, role) for p in paths]
    classifiers = [m for m, _ in loaded]
    records = [r for _, r in loaded]
    denoiser, arch, model_options, init = _build_denoiser(opts, info)
    obj_kwargs = {"noise_sd": opts.noise_sd, "classifier_ids": [r["sha256"] for r in records]}
    if opts.objective == "stability":
        obj_kwargs["target"] = opts.target
    objective = get_objective(OBJECTIVE_NAMES[opts.objective], classifiers=classifiers, **obj_kwargs)
    config = replace(opts.config, eval_noise_sd=opts.noise_sd)
    meta = {
        "kind": "denoiser", "arch": arch, "model_options": model_options, "in_shape": list(info.input_shape),
        "dataset": info.name, "train_size": len(train), "black_box": bool(surrogate_paths),
        "classifier": records[0] if (records and not surrogate_paths) else None,
        "surrogates": records if surrogate_paths else None, "init": init,
        "command": "smoothguard " + " ".join(shlex.quote(a) for a in opts.argv),
    }
    world = opts.world  # torchrun: the minibatches are split across the ranks
    rank0 = world is None or world.rank == 0
    trainer = Trainer(denoiser, objective, config, meta=meta, callback=_DenoiserBar() if rank0 else None, world=world)
    fit_in_out_dir(trainer, train, test, opts.out_dir, opts.resume)
    objective.assert_frozen()
    out = Path(opts.out_dir)
    if surrogate_paths:
        what = f" (the {len(classifiers)} surrogate classifiers' weights verified unchanged)"
    elif classifiers:
        what = " (the classifier's weights verified unchanged)"
    else:
        what = ""
    if rank0:
        print(f"wrote {out / MODEL_NAME} and {out / LOG_NAME}{what}")
    return 0
