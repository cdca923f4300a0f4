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
import math
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import smoothguard
from smoothguard.contract import ContractError, atomic_output, check_model_finite
from smoothguard.models.registry import get_model

FORMAT = "smoothguard-checkpoint/1"
DEFAULT_MODEL = "lenet_fmnist_gaussian025.pt"
REQUIRED_META = ("arch", "num_classes", "in_shape", "mean", "std")


class CheckpointError(ContractError):
    """A checkpoint file is unsafe, malformed or incompatible; the message names the file,
    what is wrong and what was expected."""


def _build_classifier(meta: dict) -> nn.Module:
    if meta.get("arch") == "factory":  # import-model --factory: the file holds weights and a reference, no code
        raise CheckpointError(f"its model was built by your factory {meta.get('factory')!r}, not a registry "
                              f"architecture; load it with --model-factory {meta.get('factory')} --weights FILE "
                              "(Python: smoothguard.models.foreign.load_factory_model(factory, FILE))")
    return get_model(meta["arch"], meta["num_classes"], meta["in_shape"], meta["mean"], meta["std"],
                     **meta.get("model_options", {}))


def _build_denoiser(meta: dict) -> nn.Module:
    from smoothguard.models.denoiser import get_denoiser

    return get_denoiser(meta["arch"], meta["in_shape"], **meta.get("model_options", {}))


# kind -> builder(meta) -> nn.Module: every kind of checkpoint, declared here once
MODEL_KINDS: dict[str, Callable[[dict], nn.Module]] = {"classifier": _build_classifier, "denoiser": _build_denoiser}


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
    with atomic_output(path, "checkpoint") as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw checkpoint dict safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the path of a .pt file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists()
                              else f"checkpoint {path} is not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); expected a smoothguard checkpoint "
                              "written by `smoothguard train` or save_checkpoint()")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own first line advises weights_only=False, which would run a pickle's code:
        # report only the unpickler's finding
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith(("Unsupported", "Trying to", "Can only"))),
                      "not loadable with weights_only=True")
        raise CheckpointError(
            f"refusing to load {path}: it is not a file of tensors and plain data that loads safely (a text or "
            f"corrupt file, or a pickle holding objects or code; {detail}); expected a smoothguard checkpoint "
            "(`smoothguard train`, save_checkpoint(), or `smoothguard import-model` for weights from elsewhere)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - zip errors, truncated files, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a smoothguard checkpoint (expected format {FORMAT!r}); weights trained "
                              "elsewhere (a state dict, Cohen et al.'s checkpoint) become one with `smoothguard "
                              "import-model` (README: 'Your own model')")
    try:
        payload["meta"] = json.loads(payload["meta_json"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed metadata ({exc})") from exc
    check_meta(payload["meta"], path)
    sd = payload.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: state_dict must be a dict of parameter names to tensors; got "
                              f"{type(sd).__name__}")
    return payload


def check_meta(meta: Any, path: str | os.PathLike = "checkpoint") -> dict:
    """The checkpoint metadata contract: a JSON object whose fields have the types the
    commands rely on (a classifier: arch, num_classes >= 2, in_shape (C, H, W), one mean
    and one positive std per channel; ``model_options`` an object; ``noise_sd`` >= 0)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object (dict); got a {type(meta).__name__}")
    kind = meta.get("kind", "classifier")
    if not isinstance(kind, str):
        raise CheckpointError(f"{path}: metadata 'kind' must be a string; got {kind!r}")
    if "model_options" in meta and not isinstance(meta["model_options"], dict):
        raise CheckpointError(f"{path}: metadata 'model_options' must be a JSON object (dict); got "
                              f"{type(meta['model_options']).__name__}")
    if kind == "classifier":
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise CheckpointError(f"{path}: metadata lacks {', '.join(missing)} (a classifier needs "
                                  f"{', '.join(REQUIRED_META)})")
    shape = meta.get("in_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise CheckpointError(f"{path}: metadata in_shape must be [C, H, W] of positive integers; got {shape!r}")
    k = meta.get("num_classes")
    if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 2):
        raise CheckpointError(f"{path}: metadata num_classes must be an integer >= 2; got {k!r}")
    for key in ("mean", "std"):
        v = meta.get(key)
        if v is None and kind != "classifier":
            continue
        if v is not None and not (isinstance(v, list) and all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in v)
                and (shape is None or len(v) == shape[0])):
            raise CheckpointError(f"{path}: metadata {key} must be a list of one finite number per channel; got {v!r}")
    if isinstance(meta.get("std"), list) and any(e <= 0 for e in meta["std"]):
        raise CheckpointError(f"{path}: metadata std must be positive (it divides); got {meta['std']!r}")
    sd = meta.get("noise_sd")
    if sd is not None and not (isinstance(sd, (int, float)) and not isinstance(sd, bool) and math.isfinite(sd)
                               and sd >= 0):
        raise CheckpointError(f"{path}: metadata noise_sd must be a number >= 0 or absent; got {sd!r}")
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", kind: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint, in eval mode on ``device``; returns (model, meta).

    ``kind`` (``"classifier"``, ``"denoiser"``): the kind of model the caller needs; a
    checkpoint of another kind is refused with a :class:`CheckpointError` saying which it
    is. The weights must be finite (a NaN weight makes every logit NaN)."""
    payload = read_checkpoint(path)
    meta = payload["meta"]
    found = meta.get("kind", "classifier")
    if found not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind {found!r}; known: {', '.join(MODEL_KINDS)}")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} is a {found} checkpoint; a {kind} checkpoint is needed here")
    try:
        model = MODEL_KINDS[found](meta)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata ({exc})") from exc
    try:
        check_model_finite(model, f"checkpoint {path}")
    except ContractError as exc:
        raise CheckpointError(str(exc)) from None
    return model.to(device).eval(), meta


def default_model_path() -> Path:
    """Path of the embedded LeNet (Gaussian noise sd 0.25, Fashion-MNIST)."""
    return Path(str(resources.files("smoothguard.models").joinpath("weights", DEFAULT_MODEL)))


def load_default_model(device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The embedded model that ``smoothguard demo`` and the CLI defaults use."""
    return load_checkpoint(default_model_path(), device)
