"""Checkpoints that rebuild their model with no user code and can never run code.

A checkpoint is a ``torch.save`` of a plain dict::

    {"format": "smoothguard-checkpoint/1",
     "meta_json": "<JSON: arch, num_classes, in_shape, mean, std, dataset, training
                   settings (objective, noise_sd, seed, ...), metrics, package version>",
     "state_dict": {name: tensor},
     "train_state": {...}  # optional: optimizer/scheduler state and epoch, for --resume}

It is loaded with ``torch.load(..., weights_only=True)``, whose unpickler only admits
tensors and primitive containers: a file carrying a pickled object that would execute
code is refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import smoothguard
from smoothguard.models.registry import get_model

FORMAT = "smoothguard-checkpoint/1"
DEFAULT_MODEL = "lenet_fmnist_gaussian025.pt"
REQUIRED_META = ("arch", "num_classes", "in_shape", "mean", "std")


class CheckpointError(ValueError):
    """A checkpoint file is unsafe, malformed or incompatible."""


def _build_classifier(meta: dict) -> nn.Module:
    return get_model(meta["arch"], meta["num_classes"], meta["in_shape"], meta["mean"], meta["std"],
                     **meta.get("model_options", {}))


# kind -> builder(meta) -> nn.Module. Other modules (denoisers, ...) register here.
MODEL_KINDS: dict[str, Callable[[dict], nn.Module]] = {"classifier": _build_classifier}


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (a temporary file renamed into place).

    ``meta`` must be JSON-serializable and hold at least arch, num_classes, in_shape,
    mean and std; the package version is added.
    """
    meta = dict(meta)
    meta.setdefault("kind", "classifier")
    meta.setdefault("smoothguard_version", smoothguard.__version__)
    missing = [k for k in REQUIRED_META if k not in meta] if meta["kind"] == "classifier" else []
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
    # unwrap DistributedDataParallel / torch.compile wrappers
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "meta_json": json.dumps(meta, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw checkpoint dict safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"(weights_only load failed: {str(exc).splitlines()[0]})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - zip errors, truncated files, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a smoothguard checkpoint (expected format {FORMAT!r})")
    try:
        payload["meta"] = json.loads(payload["meta_json"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed metadata ({exc})") from exc
    return payload


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint, in eval mode on ``device``; returns (model, meta)."""
    payload = read_checkpoint(path)
    meta = payload["meta"]
    kind = meta.get("kind", "classifier")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    try:
        model = MODEL_KINDS[kind](meta)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata ({exc})") from exc
    return model.to(device).eval(), meta


def default_model_path() -> Path:
    """Path of the embedded LeNet (Gaussian noise sd 0.25, Fashion-MNIST)."""
    return Path(str(resources.files("smoothguard.models").joinpath("weights", DEFAULT_MODEL)))


def load_default_model(device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The embedded model that ``smoothguard demo`` and the CLI defaults use."""
    return load_checkpoint(default_model_path(), device)
