"""``smoothguard train``: train a model with one of the objectives."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import torch

from smoothguard.cli._conventions import DEFAULT_TRAIN_DATA, add_deprecated
from smoothguard.cli._objective_args import add_objective_arguments, objective_kwargs
from smoothguard.cli.common import add_data_arguments, load_data, progress
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


def require_out_dir(args: argparse.Namespace) -> None:
    if not getattr(args, "out_dir", None):
        raise ValueError("--out-dir is required: the folder for log.tsv, checkpoint.pt and model.pt")


def validate(args: argparse.Namespace) -> None:
    """The option checks that need no data or model (also run on ``smoothguard run`` steps)."""
    TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, optimizer=args.optimizer,
                momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                lr_step=args.lr_step, gamma=args.gamma, seed=args.seed)
    if getattr(args, "noise_sd", 0.0) is not None and args.noise_sd < 0:
        raise ValueError(f"--noise-sd must be >= 0 (pixel units), got {args.noise_sd}")


def run(args: argparse.Namespace) -> int:
    require_out_dir(args)
    objective = get_objective(args.objective, **objective_kwargs(args))  # bad flags fail before any loading
    train, test = load_train_test(args)
    info = train.info
    model_options = {"noise_injection": args.noise_injection} if args.noise_injection else {}
    torch.manual_seed(derive_seed(args.seed, "init"))  # the initial weights follow --seed too
    model = get_model(args.arch, info.num_classes, info.input_shape, info.mean, info.std,
                      **model_options).to(args.device)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, lr_step=args.lr_step, gamma=args.gamma,
        seed=args.seed,
    )
    meta = {
        "arch": args.arch, "num_classes": info.num_classes, "in_shape": list(info.input_shape),
        "mean": list(info.mean), "std": list(info.std), "dataset": info.name,
        "class_names": list(info.class_names), "train_size": len(train), "model_options": model_options,
        "command": "smoothguard " + " ".join(shlex.quote(a) for a in args.argv),
    }
    world = getattr(args, "world", None)  # torchrun: the minibatches are split across the ranks
    rank0 = world is None or world.rank == 0
    trainer = Trainer(model, objective, config, meta=meta, callback=_Bar() if rank0 else None, world=world)
    fit_in_out_dir(trainer, train, test, args)
    if rank0:
        print(f"wrote {Path(args.out_dir) / MODEL_NAME} and {Path(args.out_dir) / LOG_NAME}")
    return 0


def load_train_test(args: argparse.Namespace):
    """The train and test splits of ``--data``, cut to ``--max-train`` / ``--max-test``."""
    train = load_data(args, split="train", select=False)
    test = load_data(args, split="test", select=False)
    if args.max_train != -1:
        train = train.subset(max_count=args.max_train)
    if args.max_test != -1:
        test = test.subset(max_count=args.max_test)
    return train, test


def fit_in_out_dir(trainer: Trainer, train, test, args: argparse.Namespace) -> None:
    """``trainer.fit`` into ``--out-dir``, resuming from its checkpoint with ``--resume`` and
    refusing to start over an existing run without it (shared by train and train-denoiser)."""
    require_out_dir(args)
    out = Path(args.out_dir)
    if args.resume:
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
