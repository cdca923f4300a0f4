"""``get_model(name, num_classes, in_shape)``: the one place architectures are named."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from smoothguard.models.archs import CifarResNet, LeNet, MadryCNN
from smoothguard.models.layers import Normalize

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lambda k, s, **o: LeNet(k, s, **o),
    "madry_cnn": lambda k, s, **o: MadryCNN(k, s, **o),
    "cifar_resnet20": lambda k, s, **o: CifarResNet(20, k, s, **o),
    "cifar_resnet110": lambda k, s, **o: CifarResNet(110, k, s, **o),
}
MODELS = tuple(_BUILDERS)


def get_model(
    name: str,
    num_classes: int,
    in_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options,
) -> nn.Sequential:
    """Build ``Sequential(Normalize(mean, std), net)`` mapping [0, 1] images to logits.

    Args:
        name: one of ``lenet``, ``madry_cnn``, ``cifar_resnet20``, ``cifar_resnet110``.
        num_classes: K, the number of logits.
        in_shape: (C, H, W) of the inputs.
        mean, std: per-channel statistics for the normalization layer (default: 0 and 1,
            that is, no normalization).
        **options: architecture options: ``noise_injection`` (lenet, madry_cnn) in
            ``pni-w``, ``pni-a``, ``pni-wa``, ``cni`` (see :mod:`smoothguard.models.noise`).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    in_shape = tuple(int(v) for v in in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
    c = in_shape[0]
    mean = tuple(mean) if mean is not None else (0.0,) * c
    std = tuple(std) if std is not None else (1.0,) * c
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)} and {len(std)}")
    try:
        net = _BUILDERS[name](num_classes, in_shape, **options)
    except TypeError as exc:
        raise ValueError(f"model {name!r} does not take options {sorted(options)} ({exc})") from exc
    model = nn.Sequential(Normalize(mean, std), net)
    # what the contract checks inputs against (plain attributes: not in the state dict)
    model.in_shape, model.num_classes = in_shape, int(num_classes)
    # what load_checkpoint needs to rebuild it with no user code: Trainer and import-model
    # write it into the checkpoint, so a model from get_model needs no hand-written meta=
    model.build_meta = {"kind": "classifier", "arch": name, "num_classes": int(num_classes),
                        "in_shape": list(in_shape), "mean": [float(v) for v in mean],
                        "std": [float(v) for v in std], "model_options": dict(options)}
    return model
