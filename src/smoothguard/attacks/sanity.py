"""Checks for the usual ways a robustness evaluation fools itself, raised as warnings.

Each check emits a :class:`RobustnessWarning` (a ``UserWarning``) and returns ``True``
when it found a problem, so callers can also record the finding. The attack base runs
the cheap ones automatically (``sanity_checks=True``).
"""

from __future__ import annotations

import warnings
from typing import Mapping

import torch


class RobustnessWarning(UserWarning):
    """An evaluation result is probably not trustworthy (masked gradients, wrong outputs...)."""


def _warn(msg: str) -> bool:
    warnings.warn(msg, RobustnessWarning, stacklevel=3)
    return True


def check_logits(outputs: torch.Tensor, atol: float = 1e-4) -> bool:
    """Warn if model outputs look like probabilities (rows >= 0 summing to 1), not logits.

    Losses such as CE apply a softmax themselves: feeding probabilities squashes the
    gradients and makes the model look more robust than it is.
    """
    if outputs.ndim != 2 or outputs.shape[0] == 0:
        return False
    out = outputs.detach().float()
    if bool((out >= 0).all()) and bool(torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=atol)):
        return _warn(
            "model outputs look like probabilities (non-negative rows summing to 1); smoothguard "
            "expects logits. Remove the final softmax or the attack losses will be distorted."
        )
    return False


def check_stochastic(out1: torch.Tensor, out2: torch.Tensor, eot: int = 1) -> bool:
    """Warn if two forward passes on the same input differ while no EOT is used.

    A single noise draw per gradient step attacks one random realization of the model and
    overstates robustness; attack the expectation (``eot`` > 1, EPGD or SmoothAdv).
    """
    if eot > 1:
        return False
    if not torch.equal(out1, out2):
        return _warn(
            "the model is stochastic (two forward passes differ) but the attack uses a single "
            "sample per gradient (eot=1): pass eot > 1 or use EPGD / SmoothAdvPGD."
        )
    return False


def check_gradients(grad: torch.Tensor, threshold: float = 0.0) -> bool:
    """Warn if some examples have an all-zero input gradient (a sign of gradient masking,
    saturated softmax, or non-differentiable layers). ``threshold``: fraction tolerated."""
    if grad.numel() == 0:
        return False
    zero = (grad.detach().flatten(1).abs().amax(dim=1) == 0).float().mean().item()
    if zero > threshold:
        return _warn(
            f"{zero:.0%} of the examples have an all-zero input gradient at the start point: "
            "gradient-based results are unreliable there (gradient masking or saturated "
            "outputs); try loss='cw'/'dlr' or a black-box attack (Square)."
        )
    return False


def check_blackbox_vs_whitebox(
    robust_accuracy: Mapping[str, float],
    blackbox: tuple[str, ...] = ("square", "nattack", "transfer"),
    tolerance: float = 0.0,
) -> bool:
    """Warn if a black-box (or transfer) attack got a lower robust accuracy than every
    white-box attack: the white-box attacks are then being fooled by gradient masking.

    ``robust_accuracy`` maps attack names to robust accuracies (fractions or percent, on
    the same points); a name is black-box if it starts with one of ``blackbox``.
    """
    def is_bb(name: str) -> bool:
        return name.lower().startswith(tuple(b.lower() for b in blackbox))

    bb = {k: v for k, v in robust_accuracy.items() if is_bb(k)}
    wb = {k: v for k, v in robust_accuracy.items() if not is_bb(k)}
    if not bb or not wb:
        return False
    best_bb = min(bb, key=bb.get)
    best_wb = min(wb, key=wb.get)
    if bb[best_bb] < wb[best_wb] - tolerance:
        return _warn(
            f"black-box attack {best_bb!r} ({bb[best_bb]:.4g}) beats the best white-box attack "
            f"{best_wb!r} ({wb[best_wb]:.4g}): gradient masking is likely; trust the lower number."
        )
    return False
