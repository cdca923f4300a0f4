"""``smoothguard train``: train a model with one of the objectives."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoothguard.cli._conventions import DEFAULT_TRAIN_DATA, add_deprecated
from smoothguard.cli._objective_args import add_objective_arguments, objective_kwargs
from smoothguard.cli.common import DataSelection, add_data_arguments, progress
from smoothguard.models import MODELS, get_model
from smoothguard.noise import NOISES
from smoothguard.training import TrainConfig, Trainer, get_objective
from smoothguard.training.registry import CLASSIFIER_OBJECTIVES
from smoothguard.training.trainer import CHECKPOINT_NAME, MODEL_NAME, LOG_NAME
from smoothguard.utils import derive_seed

HELP = "train a model (objectives: " + ", ".join(CLASSIFIER_OBJECTIVES) + ")"
DESCRIPTION = (
    "Train a model on [0,1] images with one of the objectives. Writes OUT_DIR/log.tsv (one row per "
    "epoch), OUT_DIR/checkpoint.pt (every epoch; --resume continues from it) and OUT_DIR/model.pt."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p, default=DEFAULT_TRAIN_DATA, split="train", selection=False)
    p.add_argument("--arch", default="lenet", choices=MODELS, help="architecture")
    p.add_argument("--objective", default="gaussian", choices=list(CLASSIFIER_OBJECTIVES),
                   help="training objective")
    p.add_argument("--noise-sd", type=float, default=None,
                   help="Gaussian noise sd in pixel units, = the certification sigma (gaussian, smoothadv, "
                        "stability, consistency; default 0.25)")
    p.add_argument("--noise", default=None, choices=sorted(NOISES),
                   help="gaussian objective: the noise distribution at sd --noise-sd (default gaussian: l2 "
                        "certificates; uniform or laplace: l1 certificates, see smoothguard.noise)")
    add_objective_arguments(p)
    add_loop_arguments(p)


def add_loop_arguments(p: argparse.ArgumentParser, *, lr: float = 0.01, lr_help: str = "initial learning rate",
                       optimizer: str = "sgd", weight_decay: float = 5e-4, lr_step: int = 10,
                       command: str = "train") -> None:
    """The trainer's options (shared by train and train-denoiser, which differ in defaults)."""
    p.add_argument("--epochs", type=int, default=10, help="number of epochs")
    p.add_argument("--batch", type=int, default=128, help="minibatch size")
    p.add_argument("--lr", type=float, default=lr, help=lr_help)
    p.add_argument("--optimizer", default=optimizer, choices=["sgd", "adam"], help="optimizer (sgd uses momentum)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=weight_decay, help="L2 weight decay")
    p.add_argument("--schedule", default="step", choices=["constant", "step", "cosine"], help="learning-rate schedule")
    p.add_argument("--lr-step", type=int, default=lr_step,
                   help="step schedule: multiply lr by --gamma every LR_STEP epochs")
    p.add_argument("--gamma", type=float, default=0.1, help="step schedule factor")
    p.add_argument("--max-train", type=int, default=-1, help="use only the first MAX_TRAIN training images (-1: all)")
    p.add_argument("--max-test", type=int, default=-1, help="evaluate on only the first MAX_TEST test images (-1: all)")
    p.add_argument("--out-dir", default=None, metavar="OUT_DIR",
                   help="output folder (required): log.tsv, checkpoint.pt, model.pt")
    add_deprecated(p, command, "out_dir")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")


class _Bar:
    def __init__(self) -> None:
        self.bar = None

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.bar = progress(total=steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False)

    def on_step(self, epoch: int, step: int, loss: float, acc: float) -> None:
        self.bar.update(1)
        if step % 20 == 0:
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        self.bar.close()
        keys = ["train_loss", "train_acc", "test_acc", "noisy_test_acc", "seconds"]
        print(f"epoch {row['epoch']}: lr {row['lr']:.4g} " + " ".join(
            f"{k} {row[k]:.4f}" for k in keys if k in row), flush=True)


def require_out_dir(out_dir: str | Path | None) -> Path:
    """``--out-dir`` as a path; refused when not given (shared by train and train-denoiser)."""
    if not out_dir:
        raise ValueError("--out-dir is required: the folder for log.tsv, checkpoint.pt and model.pt")
    return Path(out_dir)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The trainer's settings of the loop options (checked by TrainConfig itself)."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, optimizer=args.optimizer,
                       momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                       lr_step=args.lr_step, gamma=args.gamma, seed=args.seed)


def validate(args: argparse.Namespace) -> TrainConfig:
    """The option checks that need no data or model (also run on ``smoothguard run`` steps);
    returns the trainer's settings."""
    config = train_config(args)
    if args.noise_sd is not None and args.noise_sd < 0:
        raise ValueError(f"--noise-sd must be >= 0 (pixel units), got {args.noise_sd}")
    return config


@dataclass(frozen=True, kw_only=True)
class TrainingRun:
    """What every training command shares: the trainer's settings ``config``, the train
    split of ``data`` (at most ``max_train`` training and ``max_test`` test images, -1: all),
    continuing the output folder's checkpoint with ``resume``, on ``device``; ``world``:
    torchrun's ranks (None: one process); ``argv``: the command line recorded in the
    checkpoint."""

    config: TrainConfig = field(default_factory=TrainConfig)
    data: DataSelection = field(default_factory=lambda: DataSelection(DEFAULT_TRAIN_DATA, split="train"))
    max_train: int = -1
    max_test: int = -1
    resume: bool = False
    device: Any = "cpu"  # a torch.device or its name
    world: Any = None  # a smoothguard.distributed.World
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainOptions(TrainingRun):
    """What ``smoothguard train`` does: train ``arch`` (with ``noise_injection`` layers if
    given) on the train split of ``data`` with ``objective`` (its keyword arguments in
    ``objective_kwargs``; absent ones take the objective's paper defaults) under ``config``;
    at most ``max_train`` training and ``max_test`` test images (-1: all). Writes
    ``out_dir`` (log.tsv, checkpoint.pt, model.pt), continuing its checkpoint with
    ``resume``. ``world``: torchrun's ranks (None: one process); ``argv``: the command line
    recorded in the checkpoint."""

    out_dir: Path
    arch: str = "lenet"
    objective: str = "gaussian"
    objective_kwargs: dict[str, Any] = field(default_factory=dict)
    noise_injection: str | None = None


def options(args: argparse.Namespace) -> TrainOptions:
    """The checked, typed options of the command line: the trainer's settings and the flags
    an objective does not take are refused here, before any loading (the values of its
    flags by the objective itself, in :func:`train`)."""
    out_dir = require_out_dir(args.out_dir)
    kwargs = objective_kwargs(args)
    return TrainOptions(out_dir=out_dir, arch=args.arch, objective=args.objective,
                        objective_kwargs=kwargs, noise_injection=args.noise_injection,
                        config=train_config(args), data=DataSelection.from_args(args), max_train=args.max_train,
                        max_test=args.max_test, resume=args.resume, device=args.device, world=args.world,
                        argv=tuple(args.argv))


def run(args: argparse.Namespace) -> int:
    return train(options(args))


def train(opts: TrainOptions) -> int:
    """Build the objective and the model, train into ``opts.out_dir``: the exit code."""
    objective = get_objective(opts.objective, **opts.objective_kwargs)  # bad values fail before any loading
    train_set, test = load_train_test(opts.data, opts.max_train, opts.max_test)
    info = train_set.info
    model_options = {"noise_injection": opts.noise_injection} if opts.noise_injection else {}
    torch.manual_seed(derive_seed(opts.config.seed, "init"))  # the initial weights follow --seed too
    model = get_model(opts.arch, info.num_classes, info.input_shape, info.mean, info.std,
                      **model_options).to(opts.device)
    meta = {
        "arch": opts.arch, "num_classes": info.num_classes, "in_shape": list(info.input_shape),
        "mean": list(info.mean), "std": list(info.std), "dataset": info.name,
        "class_names": list(info.class_names), "train_size": len(train_set), "model_options": model_options,
        "command": "smoothguard " + " ".join(shlex.quote(a) for a in opts.argv),
    }
    rank0 = opts.world is None or opts.world.rank == 0  # torchrun: the minibatches are split across the ranks
    trainer = Trainer(model, objective, opts.config, meta=meta, callback=_Bar() if rank0 else None, world=opts.world)
    fit_in_out_dir(trainer, train_set, test, opts.out_dir, opts.resume)
    if rank0:
        print(f"wrote {opts.out_dir / MODEL_NAME} and {opts.out_dir / LOG_NAME}")
    return 0


def load_train_test(data: DataSelection, max_train: int = -1, max_test: int = -1):
    """The train and test splits of ``data``, cut to ``max_train`` / ``max_test`` (-1: all)."""
    train_set = data.load(split="train", select=False)
    test = data.load(split="test", select=False)
    if max_train != -1:
        train_set = train_set.subset(max_count=max_train)
    if max_test != -1:
        test = test.subset(max_count=max_test)
    return train_set, test


def fit_in_out_dir(trainer: Trainer, train, test, out_dir: str | Path | None, resume: bool) -> None:
    """``trainer.fit`` into ``out_dir`` (``--out-dir``), resuming from its checkpoint with
    ``resume`` and refusing to start over an existing run without it (shared by train and
    train-denoiser)."""
    out = require_out_dir(out_dir)
    if resume:
        trainer.resume_from(out / CHECKPOINT_NAME)
        if trainer.world.rank == 0:
            print(f"resuming from {out / CHECKPOINT_NAME} after epoch {trainer.start_epoch}")
    elif (out / CHECKPOINT_NAME).exists():
        raise ValueError(f"{out / CHECKPOINT_NAME} exists: pass --resume to continue it, or choose another --out-dir")
    try:
        trainer.fit(train, test, out)
    except KeyboardInterrupt:
        # the message main() prints: what a rerun does here (a rerun without --resume is refused)
        if (out / CHECKPOINT_NAME).exists():
            raise KeyboardInterrupt(f"{out / CHECKPOINT_NAME} holds the last finished epoch; rerun the same "
                                    "command with --resume to continue from it") from None
        raise KeyboardInterrupt("no epoch finished and no checkpoint was written; rerun the same command to "
                                "start again") from None
