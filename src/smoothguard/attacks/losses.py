"""Per-example attack losses on logits, oriented so that the attack *maximizes* them.

Untargeted (``targets is None``): a high loss means "far from the true class y".
Targeted: a high loss means "close to the target class t".
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

LOSSES = ("ce", "cw", "dlr")


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """max_{j != cls} z_j, per row."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.max(dim=1).values


def ce_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy CE(z, y) (untargeted) or -CE(z, t) (targeted)."""
    if targets is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def cw_loss(
    logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None, kappa: float = math.inf
) -> torch.Tensor:
    """C&W margin (Carlini & Wagner 2017), clamped above at ``kappa``.

    Untargeted: max_{j != y} z_j - z_y; targeted: z_t - max_{j != t} z_j. The margin is
    positive exactly when the attack has succeeded; ``kappa`` caps the reward beyond a
    confidence of kappa (Madry et al.'s MNIST challenge used kappa = 50; ``inf``: no cap).
    """
    if targets is None:
        margin = _other_max(logits, y) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
    else:
        margin = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - _other_max(logits, targets)
    if math.isfinite(kappa):
        margin = margin.clamp(max=kappa)
    return margin


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), shift- and scale-invariant.

    Untargeted: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3); targeted:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), pi the logits sorted decreasingly.
    Needs K >= 3 classes (K >= 4 targeted).
    """
    k = logits.shape[1]
    need = 3 if targets is None else 4
    if k < need:
        raise ValueError(f"the DLR loss needs at least {need} classes, the model has {k}; use loss='ce' or 'cw'")
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    if targets is None:
        num = z_y - _other_max(logits, y)
        den = srt[:, 0] - srt[:, 2]
    else:
        num = z_y - logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        den = srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3])
    return -num / (den + 1e-12)


def get_loss(name: str, kappa: float = math.inf) -> LossFn:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    if name == "ce":
        return ce_loss
    if name == "cw":
        return lambda z, y, t=None: cw_loss(z, y, t, kappa)
    if name == "dlr":
        return dlr_loss
    raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
