"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import torch

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.data import DATASETS, Dataset, load_dataset


def common_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available)")
    g.add_argument("--seed", type=int, default=0, help="random seed (noise, shuffling, attacks)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; set it when running processes side by side)")
    return p


RETAIN_MEMORY_ENV = "SMOOTHGUARD_RETAIN_MEMORY"


def apply_common(args: argparse.Namespace) -> None:
    from smoothguard.utils import resolve_device, retain_freed_memory

    retain = os.environ.get(RETAIN_MEMORY_ENV, "1")
    if retain not in ("0", "1"):
        raise ValueError(f"{RETAIN_MEMORY_ENV} must be 0 or 1, got {retain!r}")
    if retain == "1":  # this process is ours: keep freed memory for the next batch (utils.retain_freed_memory)
        retain_freed_memory()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    from smoothguard.distributed import init_distributed

    args.world, args.device = init_distributed(args.device)


def add_data_arguments(p: argparse.ArgumentParser, default: str = "demo", split: str = "test",
                       selection: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, choices=DATASETS, help="dataset name")
    g.add_argument("--root", default=None,
                   help="folder with the dataset files (Fashion-MNIST default: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--split", default=split, choices=["train", "test"], help="dataset split")
    g.add_argument("--image-size", type=int, default=32,
                   help="imagefolder only: images are resized to this many pixels per side (1..1024)")
    g.add_argument("--channels", type=int, default=3, choices=[1, 3], help="imagefolder only: 1 (gray) or 3 (RGB)")
    if selection:
        g.add_argument("--skip", type=int, default=1, help="use every SKIP-th example (index 0, SKIP, 2*SKIP, ...)")
        g.add_argument("--max", "--max-images", dest="max", type=int, default=-1,
                       help="use at most MAX examples (-1: all selected); under torchrun write --max-images "
                            "(torchrun's own parser mistakes --max for its --max-restarts)")


@dataclass(frozen=True)
class DataSelection:
    """The images a command reads: ``--data`` (``name``), ``--root``, ``--split``,
    ``--image-size``, ``--channels`` and the ``--skip`` / ``--max`` selection (a command
    without the selection options, such as train, reads every image: skip 1, max -1)."""

    name: str = DEFAULT_DATA
    root: str | None = None
    split: str = "test"
    image_size: int = 32
    channels: int = 3
    skip: int = 1
    max: int = -1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DataSelection":
        return cls(args.data, args.root, args.split, args.image_size, args.channels,
                   getattr(args, "skip", 1), getattr(args, "max", -1))

    def load(self, split: str | None = None, select: bool = True) -> Dataset:
        """The dataset (``split`` instead of ``self.split`` if given), cut to the selection
        unless ``select`` is False."""
        ds = load_dataset(self.name, split or self.split, self.root, image_size=self.image_size,
                          channels=self.channels)
        return ds.subset(skip=self.skip, max_count=self.max) if select else ds

    def settings(self) -> dict[str, Any]:
        """The sidecar's record of the selection."""
        return {"data": self.name, "root": self.root, "split": self.split, "skip": self.skip, "max": self.max}


def add_model_factory_arguments(p: argparse.ArgumentParser) -> None:
    """``--model-factory`` / ``--weights`` beside a command's ``--model`` (read by load_model_arg)."""
    p.add_argument("--model-factory", default=None, metavar="MODULE:CALLABLE",
                   help="instead of --model: your architecture, built by MODULE:CALLABLE (or path/to/file.py:CALLABLE; "
                        "your code is imported and called with no arguments; its model takes [0, 1] images)")
    p.add_argument("--weights", default=None,
                   help="with --model-factory: a state dict of its model, or a checkpoint written by "
                        "`smoothguard import-model --factory`")


def load_model_arg(path: str | None, device: torch.device, factory: str | None = None,
                   weights: str | None = None):
    """Load ``--model`` (default: the embedded model), or the model of ``--model-factory``
    (with ``--weights``): the one loader every command's ``--model`` goes through."""
    from smoothguard.models import load_checkpoint, load_default_model
    from smoothguard.models.checkpoint import CheckpointError, read_checkpoint

    if factory is not None:
        if path is not None:
            raise CheckpointError("give --model CHECKPOINT or --model-factory MODULE:CALLABLE, not both")
        from smoothguard.models.foreign import load_factory_model

        return load_factory_model(factory, weights, device)
    if weights is not None:
        raise CheckpointError("--weights goes with --model-factory; a smoothguard checkpoint is --model FILE (import "
                              "other weights with `smoothguard import-model`)")
    if path is None:
        return load_default_model(device)

    if str(path) == "":
        raise CheckpointError("--model is empty; give a checkpoint path or leave the option out (embedded model)")

    kind = read_checkpoint(path)["meta"].get("kind", "classifier")
    if kind != "classifier":
        raise CheckpointError(f"--model {path} is a {kind} checkpoint, not a classifier"
                              + (" (pass it as --denoiser, with a classifier as --model)" if kind == "denoiser" else ""))
    return load_checkpoint(path, device, kind="classifier")


def validate_selection(args: argparse.Namespace | DataSelection) -> None:
    """The --skip/--max selection every per-image command takes."""
    from smoothguard.contract import ContractError, check_int

    check_int("--skip", args.skip, minimum=1)
    if args.max < -1 or args.max == 0:
        raise ContractError(f"--max must be a positive count or -1 (all); got {args.max}")


def add_attack_speed_arguments(p: argparse.ArgumentParser) -> None:
    """The speed options of the commands that take gradients (attack, evaluate)."""
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model's convolutions in channels_last memory format (faster on CPUs with "
                        "oneDNN; same results up to float rounding). Default: on for CPU")
    p.add_argument("--conv-grad", action=argparse.BooleanOptionalAction, default=None,
                   help="take the input gradient of the first convolutions (<= 3 input channels) by GEMM + "
                        "shifted sums (LeNet's forward+backward 0.73x the time on an AVX-512 CPU, ~0.83x on "
                        "AVX2); gradients equal up to float rounding, so l_2 norms can move in their last "
                        "float32 digit; --no-conv-grad gives oneDNN's own backward. Recorded as conv_grad in "
                        "the sidecar. Default: on for CPU")


def parse_floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from exc


def progress(iterable=None, **kwargs: Any):
    """A tqdm progress bar on stderr (disabled when SMOOTHGUARD_NO_PROGRESS is set)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", bool(os.environ.get("SMOOTHGUARD_NO_PROGRESS")))
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
