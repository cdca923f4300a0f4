"""Models trained elsewhere: plain state dicts, Cohen et al.'s checkpoints, user factories.

Three ways in, all loading weights with ``torch.load(..., weights_only=True)`` (a file that
holds pickled objects, such as a whole model saved with ``torch.save(model)``, is refused:
a weights file never runs code):

* **a registry architecture** (``lenet``, ``madry_cnn``, ``cifar_resnet20``,
  ``cifar_resnet110``) from a plain state dict: the keys of the bare network
  (``features.0.weight``, ...), of smoothguard's ``Sequential(Normalize, net)``
  (``0.mean``, ``1.features.0.weight``, ...), each optionally behind DataParallel's
  ``module.``, or a training-script dict holding one under ``state_dict`` /
  ``model_state_dict`` / ``model``. :func:`import_registry_model`.
* **Cohen et al.'s released checkpoints** (locuslab/smoothing: ``{"arch": ...,
  "state_dict": ..., "optimizer": ...}`` with keys ``1.module.<net>`` from
  ``Sequential(NormalizeLayer, DataParallel(net))``; their NormalizeLayer stores no
  tensors). Their ``cifar_resnet20`` / ``cifar_resnet110`` (bearpaw's CIFAR ResNet) is the
  same network as ours, with other names; :func:`cohen_resnet_key` maps each key:
  ``conv1.`` -> ``conv.``, ``bn1.`` -> ``bn.`` (the stem), ``layer{s}.{i}.`` ->
  ``layers.{(s - 1) n + i}.`` (n = (depth - 2) / 6 blocks per stage), ``downsample.`` ->
  ``shortcut.`` (the 1x1 conv + batch norm of the first block of stages 2 and 3), ``fc.``
  -> ``fc.``; inside a block ``conv1/bn1/conv2/bn2`` keep their names. Their ReLU and
  ``AvgPool2d(8)`` hold no weights (on 32x32 inputs the pool is our global average
  pool). Every tensor must map, with the same shape, and every one of ours must be
  filled: nothing is dropped or left at its initial value. Their ImageNet ``resnet50``
  (torchvision's) is not a registry architecture: bring it through a factory.
* **a user factory** ``MODULE:CALLABLE`` (or ``path/to/file.py:CALLABLE``): the user's own
  code, named explicitly, imported and called with no arguments to build the
  ``nn.Module``; weights from a state dict or a checkpoint. A checkpoint of a factory
  model stores the weights and the factory *reference* (the string), never code, so
  loading it needs the same factory again (:func:`load_factory_model`,
  ``--model-factory MODULE:CALLABLE --weights FILE``). A factory that returns a model
  built by :func:`~smoothguard.models.get_model` gives a registry checkpoint that loads
  with no user code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from smoothguard.contract import ContractError, check_model_finite
from smoothguard.models.checkpoint import FORMAT, CheckpointError
from smoothguard.models.layers import Normalize
from smoothguard.models.registry import MODELS, get_model

# locuslab/smoothing code/datasets.py: the statistics of Cohen et al.'s NormalizeLayer
COHEN_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
COHEN_ARCHS = ("cifar_resnet20", "cifar_resnet110")  # importable; their resnet50 is torchvision's
_STATE_KEYS = ("state_dict", "model_state_dict", "model")


# ---------------------------------------------------------------------------------------
# reading weights files


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a weights file and what the file says about itself.

    Returns ``(state_dict, info)``: ``info["layout"]`` is ``"smoothguard"`` (a smoothguard
    checkpoint; ``info["meta"]`` its metadata), ``"cohen"`` (a dict with ``arch`` and
    ``state_dict``; ``info["arch"]``) or ``"plain"``. Loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} " + ("is a folder" if path.is_dir() else "does not exist"))
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects, not just tensors (a whole model saved with "
            "torch.save(model)?). Save the weights instead, torch.save(model.state_dict(), 'weights.pt'), "
            f"and import them with the architecture (weights_only load failed: {str(exc).splitlines()[0]})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - zip errors, truncated files, ...
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    info: dict[str, Any] = {"layout": "plain"}
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        from smoothguard.models.checkpoint import read_checkpoint

        full = read_checkpoint(path)
        return dict(full["state_dict"]), {"layout": "smoothguard", "meta": full["meta"]}
    sd: Any = payload
    if isinstance(payload, dict):
        for key in _STATE_KEYS:
            if isinstance(payload.get(key), dict):
                sd = payload[key]
                if key == "state_dict" and isinstance(payload.get("arch"), str):
                    info = {"layout": "cohen", "arch": payload["arch"]}
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        raise CheckpointError(
            f"{path}: no state dict found: expected a dict of parameter names to tensors, or a dict holding one "
            f"under {', '.join(repr(k) for k in _STATE_KEYS)}; got {type(payload).__name__}"
            + (f" with keys {sorted(map(str, payload))[:8]}" if isinstance(payload, dict) else ""))
    return dict(sd), info


def strip_data_parallel(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` that (Distributed)DataParallel puts in front of its network's keys,
    wherever it sits (``module.fc.weight``, ``1.module.fc.weight``)."""
    return {re.sub(r"(^|\.)module\.", r"\1", k): v for k, v in sd.items()}


def cohen_resnet_key(key: str, depth: int) -> str | None:
    """Our key (``1.``-prefixed) for a key of Cohen et al.'s / bearpaw's CIFAR ResNet of
    ``depth`` layers (``module.`` already stripped), or None when it has no counterpart."""
    n = (depth - 2) // 6
    m = re.fullmatch(r"layer([123])\.(\d+)\.(.+)", key)
    if m:
        stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if block >= n:
            return None
        if rest.startswith("downsample."):
            rest = "shortcut." + rest[len("downsample."):]
        return f"1.layers.{(stage - 1) * n + block}.{rest}"
    for theirs, ours in (("conv1.", "conv."), ("bn1.", "bn."), ("fc.", "fc.")):
        if key.startswith(theirs):
            return "1." + ours + key[len(theirs):]
    return None


def _describe_mismatch(source: Sequence[str], target: Sequence[str], limit: int = 5) -> str:
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the architecture's tensors missing from the file (e.g. "
                     f"{', '.join(missing[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's tensors unknown to it (e.g. {', '.join(unexpected[:limit])})")
    return "; ".join(parts)


def match_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, *, cohen_depth: int | None = None,
                     source: str = "weights") -> dict[str, torch.Tensor]:
    """``sd`` renamed to the keys of ``model`` (``Sequential(Normalize, net)`` or any module).

    Tries, after stripping DataParallel's ``module.``: the keys as they are; the bare
    network's keys (``1.`` added); with ``cohen_depth``, Cohen et al.'s CIFAR ResNet names.
    ``Normalize``'s ``0.mean`` / ``0.std`` are taken from ``model`` when the file has none.
    Every tensor of ``model`` must be filled and every tensor of the file used, with equal
    shapes; otherwise a :class:`CheckpointError` names the differences."""
    sd = strip_data_parallel(sd)
    target = model.state_dict()
    wrapped = isinstance(model, nn.Sequential) and len(model) > 0 and isinstance(model[0], Normalize)
    norm_keys = ["0.mean", "0.std"] if wrapped else []
    candidates: list[tuple[str, dict[str, torch.Tensor]]] = [("as stored", dict(sd))]
    if norm_keys:
        candidates.append(("the bare network (1. added)", {"1." + k: v for k, v in sd.items()}))
    if cohen_depth is not None:
        # their keys are "1.<net>" (Sequential(NormalizeLayer, DataParallel(net))) or bare "<net>"
        mapped: dict[str, torch.Tensor] = {}
        unmapped = []
        for k, v in sd.items():
            bare = k[2:] if k.startswith("1.") else k
            ours = cohen_resnet_key(bare, cohen_depth)
            if ours is None:
                unmapped.append(k)
            else:
                mapped[ours] = v
        if unmapped:
            raise CheckpointError(f"{source}: {len(unmapped)} tensors of the Cohen et al. checkpoint have no "
                                  f"counterpart in cifar_resnet{cohen_depth} (e.g. {', '.join(unmapped[:5])}); "
                                  "is it their ImageNet resnet50 or another depth?")
        candidates = [("Cohen et al.'s CIFAR ResNet names", mapped)]
    best: tuple[int, str, dict[str, torch.Tensor]] | None = None
    for how, cand in candidates:
        full = dict(cand)
        for k in norm_keys:
            full.setdefault(k, target[k])
        if set(full) == set(target):
            bad = [f"{k} {tuple(full[k].shape)} vs {tuple(target[k].shape)}" for k in target
                   if tuple(full[k].shape) != tuple(target[k].shape)]
            if bad:
                raise CheckpointError(f"{source}: the names match ({how}) but {len(bad)} shapes differ "
                                      f"(file vs architecture: {'; '.join(bad[:5])}); check --num-classes, "
                                      "--in-shape and the architecture")
            return {k: full[k].to(target[k].dtype) if target[k].is_floating_point() else full[k] for k in target}
        score = len(set(full) & set(target))
        if best is None or score > best[0]:
            best = (score, how, full)
    assert best is not None
    raise CheckpointError(f"{source}: the file's tensors do not fit the architecture (closest reading: "
                          f"{best[1]}: {_describe_mismatch(list(best[2]), list(target))})")


def normalization_in(sd: Mapping[str, torch.Tensor]) -> tuple[list[float], list[float]] | None:
    """(mean, std) stored by a smoothguard ``Normalize`` first layer (``0.mean``/``0.std``), if any."""
    sd = strip_data_parallel(sd)
    if "0.mean" in sd and "0.std" in sd:
        return [float(v) for v in sd["0.mean"].flatten()], [float(v) for v in sd["0.std"].flatten()]
    return None


# ---------------------------------------------------------------------------------------
# registry architectures


def import_registry_model(
    weights: str | os.PathLike,
    arch: str | None,
    num_classes: int,
    in_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    model_options: dict | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build registry architecture ``arch`` and fill it from the weights file ``weights``.

    ``mean``/``std``: the per-channel normalization the network was trained behind (None:
    the file's own ``0.mean``/``0.std`` if it has them, Cohen et al.'s constants for their
    checkpoints, else none: the network takes [0, 1] pixels as they are). Returns
    ``(model, meta)`` with ``meta`` ready for :func:`~smoothguard.models.save_checkpoint`
    (``meta["import"]`` says what was read and how the names were mapped)."""
    sd, info = read_weights(weights)
    if info["layout"] == "cohen":
        theirs = info["arch"]
        if theirs not in COHEN_ARCHS:
            raise CheckpointError(f"{weights}: Cohen et al. architecture {theirs!r} is not a registry architecture "
                                  f"(importable: {', '.join(COHEN_ARCHS)}); build it with your own code and "
                                  "import it with --factory MODULE:CALLABLE")
        if arch is not None and arch != theirs:
            raise CheckpointError(f"{weights} says arch {theirs!r}; --arch {arch} differs (leave --arch out)")
        arch = theirs
    if info["layout"] == "smoothguard" and arch is None:
        arch = info["meta"].get("arch")
    if arch is None:
        raise ContractError(f"{weights}: which architecture? give --arch (Python: arch=), one of {', '.join(MODELS)}, "
                            "or --factory MODULE:CALLABLE for your own")
    if arch not in MODELS:
        raise ContractError(f"unknown architecture {arch!r}; registry architectures: {', '.join(MODELS)} "
                            "(anything else: --factory MODULE:CALLABLE)")
    stored = normalization_in(sd)
    source = "given"
    if mean is None and std is None:
        if stored is not None:
            (mean, std), source = stored, "the file's Normalize layer"
        elif info["layout"] == "cohen":
            mean, std = COHEN_NORMALIZATION["cifar10"]
            source = "Cohen et al.'s CIFAR-10 NormalizeLayer constants"
        else:
            source = "none (the network takes [0, 1] pixels as they are)"
    elif (mean is None) != (std is None):
        raise ContractError("give both mean and std (one value per channel), or neither")
    elif stored is not None and (not torch.allclose(torch.tensor(stored[0]), torch.tensor(list(mean), dtype=torch.float32))
                                 or not torch.allclose(torch.tensor(stored[1]), torch.tensor(list(std), dtype=torch.float32))):
        raise CheckpointError(f"{weights} stores its own normalization mean {stored[0]} std {stored[1]}; the given "
                              f"mean {list(mean)} std {list(std)} differ (leave --mean/--std out to use the file's)")
    options = dict(model_options or {})
    if info["layout"] == "smoothguard":
        options = {**info["meta"].get("model_options", {}), **options}
    model = get_model(arch, num_classes, in_shape, mean, std, **options)
    depth = int(arch.rsplit("resnet", 1)[1]) if info["layout"] == "cohen" else None
    model.load_state_dict(match_state_dict(sd, model, cohen_depth=depth, source=str(weights)))
    try:
        check_model_finite(model, f"weights {weights}")
    except ContractError as exc:
        raise CheckpointError(str(exc)) from None
    meta = dict(model.build_meta)
    meta["import"] = {"weights": str(Path(weights).resolve()), "layout": info["layout"], "normalization": source}
    if info["layout"] == "cohen":
        meta["import"]["key_mapping"] = ("Cohen et al. 1.module.<bearpaw CIFAR ResNet> -> smoothguard: conv1->conv, "
                                         "bn1->bn, layer{s}.{i}->layers.{(s-1)n+i}, downsample->shortcut, fc->fc")
    if info["layout"] == "smoothguard":
        for key in ("noise_sd", "objective", "dataset"):
            if info["meta"].get(key) is not None:
                meta[key] = info["meta"][key]
    return model.eval(), meta


# ---------------------------------------------------------------------------------------
# user factories


def resolve_factory(spec: str) -> Callable[[], nn.Module]:
    """The callable named by ``MODULE:CALLABLE`` (``my_pkg.models:build``) or
    ``path/to/file.py:CALLABLE``. Importing it runs the user's module: that is the point
    (it is their code, named on their command line), and nothing else is ever imported
    from a weights file. ``MODULE`` is looked up as ``python -m`` would, the current folder
    first."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(p.strip() for p in spec.split(":")):
        raise ContractError(f"a model factory is MODULE:CALLABLE (e.g. my_pkg.models:build_model) or "
                            f"path/to/file.py:CALLABLE; got {spec!r}")
    module_name, attr = (p.strip() for p in spec.split(":"))
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ContractError(f"model factory {spec!r}: file {path} does not exist")
            modspec = importlib.util.spec_from_file_location(f"smoothguard_factory_{path.stem}", path)
            module = importlib.util.module_from_spec(modspec)  # type: ignore[arg-type]
            modspec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            cwd = os.getcwd()
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                importlib.invalidate_caches()  # a module written since the last import is found
                module = importlib.import_module(module_name)
            finally:
                if added and cwd in sys.path:
                    sys.path.remove(cwd)
    except ModuleNotFoundError as exc:
        raise ContractError(f"model factory {spec!r}: cannot import {module_name!r} ({exc}); run from the folder "
                            "that holds it, install the package, or give path/to/file.py:CALLABLE") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ContractError(f"model factory {spec!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ContractError(f"model factory {spec!r}: {attr} is a {type(obj).__name__}, not a callable")
    return obj


def build_from_factory(spec: str) -> nn.Module:
    """Call the factory ``spec`` with no arguments; it must return an ``nn.Module``."""
    net = resolve_factory(spec)()
    if not isinstance(net, nn.Module):
        raise ContractError(f"model factory {spec!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def infer_num_classes(model: nn.Module, in_shape: Sequence[int]) -> int:
    """K from one forward pass on a zero image of ``in_shape`` (the output must be (1, K))."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *in_shape, device=next(iter(model.parameters()), torch.zeros(0)).device))
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        raise ContractError(f"the model maps a (1, {', '.join(map(str, in_shape))}) image to "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}; "
                            "a classifier returns logits (N, K) with K >= 2")
    return int(out.shape[1])


def wrap_normalize(net: nn.Module, in_shape: Sequence[int], num_classes: int,
                   mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Sequential:
    """``Sequential(Normalize(mean, std), net)`` carrying ``in_shape`` and ``num_classes``
    (mean 0 / std 1 when None: the network takes [0, 1] pixels as they are)."""
    c = int(in_shape[0])
    model = nn.Sequential(Normalize(mean if mean is not None else [0.0] * c, std if std is not None else [1.0] * c),
                          net)
    model.in_shape, model.num_classes = tuple(int(v) for v in in_shape), int(num_classes)
    return model


def load_factory_model(spec: str, weights: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The classifier built by the factory ``spec``, with ``weights`` when given: a plain
    state dict of the factory's network, or a checkpoint that ``import-model --factory``
    wrote (its metadata supplies normalization, in_shape, num_classes and noise_sd).

    The model's ``in_shape`` (C, H, W) must be known: from the checkpoint, or as the
    attribute ``model.in_shape`` (models from ``get_model`` carry it); ``num_classes`` is
    the attribute or the width of one forward pass. Returns ``(model, meta)`` in eval mode
    on ``device``."""
    net = build_from_factory(spec)
    meta: dict[str, Any] = {}
    model: nn.Module = net
    if weights is not None:
        sd, info = read_weights(weights)
        if info["layout"] == "smoothguard":
            meta = {k: v for k, v in info["meta"].items() if k not in ("metrics",)}
            stored = normalization_in(sd)
            bare = {k[2:] for k in strip_data_parallel(sd) if k.startswith("1.")}
            if stored is not None and bare == set(net.state_dict()) and not hasattr(net, "build_meta"):
                model = wrap_normalize(net, meta["in_shape"], meta["num_classes"], *stored)
        model.load_state_dict(match_state_dict(sd, model, source=str(weights)))
    in_shape = meta.get("in_shape") or getattr(net, "in_shape", None)
    if in_shape is None:
        raise ContractError(
            f"model factory {spec!r}: the input shape of its model is unknown: set model.in_shape = (C, H, W) in "
            "the factory (models from get_model carry it), or import it once with `smoothguard import-model "
            f"--factory {spec} --data ... --out model.pt` and pass --weights model.pt")
    in_shape = [int(v) for v in in_shape]
    num_classes = int(meta.get("num_classes") or getattr(net, "num_classes", 0) or infer_num_classes(model, in_shape))
    model.in_shape, model.num_classes = tuple(in_shape), num_classes
    try:
        check_model_finite(model, f"the model of factory {spec!r}")
    except ContractError as exc:
        raise CheckpointError(str(exc)) from None
    meta.update({"kind": "classifier", "arch": meta.get("arch", "factory"), "factory": spec,
                 "in_shape": in_shape, "num_classes": num_classes})
    if hasattr(net, "build_meta") and "mean" not in meta:
        meta.update({k: net.build_meta[k] for k in ("arch", "mean", "std", "model_options")})
    return model.to(device).eval(), meta
