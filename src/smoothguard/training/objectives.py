"""Training objectives: small classes the one trainer calls once per minibatch.

An objective turns a minibatch into a scalar loss to minimize (plus the logits whose
accuracy the log reports and any numbers of its own). Adversarial and smoothing
objectives (PGD-AT, TRADES, SmoothAdv, stability, consistency, denoiser losses) plug in
the same way: subclass :class:`Objective` and register it in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepContext:
    """What an objective may need besides the batch: where it is in training, and noise."""

    epoch: int  # 0-based
    epochs: int
    step: int  # 0-based step within the epoch
    steps_per_epoch: int
    generator: torch.Generator  # on the model's device; the only source of randomness


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to minimize
    logits: torch.Tensor | None = None  # logits whose accuracy against y is logged
    stats: dict[str, float] = field(default_factory=dict)  # extra per-batch numbers (averaged per epoch)


class Objective:
    """Base class. ``noise_sd`` is the Gaussian noise the objective trains under (0: none);
    the trainer also evaluates test accuracy under that noise."""

    name = "objective"
    noise_sd: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The hyper-parameters, stored in checkpoints and logs."""
        return {"objective": self.name, "noise_sd": self.noise_sd}


class Standard(Objective):
    """Plain cross-entropy on clean images."""

    name = "standard"

    def __call__(self, model, x, y, ctx):
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits)


class Gaussian(Objective):
    """Cross-entropy on x + N(0, noise_sd^2 I), a fresh draw for every minibatch.

    Cohen, Rosenfeld and Kolter (ICML 2019), the base classifier for randomized
    smoothing; train noise_sd = the certification sigma. Noise is in pixel units and
    not clipped, exactly as at certification time.
    """

    name = "gaussian"

    def __init__(self, noise_sd: float = 0.25) -> None:
        if not noise_sd > 0:
            raise ValueError(f"gaussian objective needs noise_sd > 0 (pixel units), got {noise_sd}")
        self.noise_sd = float(noise_sd)

    def __call__(self, model, x, y, ctx):
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        logits = model(x + self.noise_sd * noise)
        return StepOutput(F.cross_entropy(logits, y), logits)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "standard": Standard,
    "gaussian": Gaussian,
}


def get_objective(name: str, **kwargs: Any) -> Objective:
    """Build an objective by name; keyword arguments are its hyper-parameters."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"objective {name!r}: bad options {sorted(kwargs)} ({exc})") from exc
