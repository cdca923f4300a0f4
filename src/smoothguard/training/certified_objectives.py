"""Certified-training objectives: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

Both minimize a mix of the clean cross-entropy and the cross-entropy of the *worst-case
logits* given by a sound lower bound m_j <= z_y - z_j over the eps-ball (the margins of
:func:`smoothguard.verification.spec_bounds`, the specification folded into the last
layer): the vector with entry -m_j for j != y and 0 at y. Its cross-entropy upper-bounds
the adversarial cross-entropy, and pushing it down makes the margins provably positive.

    loss = kappa * CE(f(x), y) + (1 - kappa) * CE(-m(x, eps), y)

Schedules, over the fraction t of training steps done (so they fit any run length):
warm-up (eps = 0, kappa = 1: plain training, the bounds are not computed), then a ramp
over which eps grows linearly from 0 to ``eps`` and kappa from ``kappa_start`` to
``kappa_end``; after the ramp both stay at their final values.

* IBP (Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann, Kohli, "On the
  Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
  2018). Paper setting (MNIST): 60k steps, batch 100, 2k warm-up steps then a 10k-step
  ramp (``warmup = 2/60``, ``ramp = 10/60`` of training), kappa 1 -> 0.5, training eps
  larger than the test eps (0.2 for a test eps of 0.1, 0.4 for 0.3).
* CROWN-IBP (Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning, Hsieh, "Towards Stable and
  Efficient Training of Verifiably Robust Neural Networks", ICLR 2020): the margins are
  ``(1 - beta) m_IBP + beta m_CROWN-IBP`` with beta going linearly from ``beta_start``
  = 1 to ``beta_end`` = 0 over the eps ramp (CROWN-IBP bounds stabilize the start of
  training, IBP bounds end it). Paper setting (MNIST): 200 epochs, eps ramped over epochs
  10-60 (``warmup = 10/200``, ``ramp = 50/200``), kappa 1 -> 0 (their best verified
  error), training eps 0.2 for test eps 0.1 (0.4 for 0.3).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import check_eps, check_fraction, check_choice
from smoothguard.training.objectives import Objective, StepContext, StepOutput
from smoothguard.verification.bounds import margin_spec, spec_bounds
from smoothguard.verification.layers import to_ops


def _fraction(name: str, v: float, allow_zero: bool = True) -> float:
    return check_fraction(name, v, low_open=not allow_zero)


def worst_case_logits(margins: torch.Tensor) -> torch.Tensor:
    """-m with 0 at the label: the logits of the adversary who reaches every lower bound
    (Gowal et al. eq. 9). ``margins`` (B, K) are the bounds of z_y - z_j (0 at j = y)."""
    return -margins


class IBP(Objective):
    """Interval-bound-propagation training (Gowal et al. 2018); see the module docstring.

    Args:
        eps: final training radius in [0, 1] pixel units (paper: 0.2 for a test eps of 0.1).
        norm: ``"linf"`` (the papers) or ``"l2"``.
        warmup: fraction of training steps with eps = 0 (paper: 2k of 60k steps).
        ramp: fraction of training steps over which eps and kappa move (paper: 10k of 60k).
        kappa_start, kappa_end: weight of the clean loss at the start and end of the ramp
            (paper: 1 -> 0.5).

    Logged: ``eps`` and ``kappa`` of the step, ``verified_acc`` (IBP-verified fraction of
    the batch at the step's eps) and ``robust_loss``.
    """

    name = "ibp"
    method = "ibp"

    def __init__(self, eps: float = 0.2, norm: str = "linf", warmup: float = 2 / 60, ramp: float = 10 / 60,
                 kappa_start: float = 1.0, kappa_end: float = 0.5) -> None:
        check_choice("norm", norm, ("linf", "l2"))
        self.eps = check_eps(eps, norm)
        self.norm = norm
        self.warmup = _fraction("warmup", warmup)
        self.ramp = _fraction("ramp", ramp)
        if self.warmup + self.ramp > 1:
            raise ValueError(f"warmup + ramp must be <= 1 (fractions of training); got {self.warmup} + {self.ramp}")
        self.kappa_start = _fraction("kappa_start", kappa_start)
        self.kappa_end = _fraction("kappa_end", kappa_end)

    def progress(self, ctx: StepContext) -> float:
        """How far along the ramp this step is: 0 during warm-up, 1 after the ramp."""
        t = (ctx.epoch * ctx.steps_per_epoch + ctx.step) / max(1, ctx.epochs * ctx.steps_per_epoch)
        if t < self.warmup:
            return -1.0  # warm-up marker
        return 1.0 if self.ramp == 0 else min(1.0, (t - self.warmup) / self.ramp)

    def _margins(self, ops, x: torch.Tensor, y: torch.Tensor, eps: float, r: float, k: int) -> torch.Tensor:
        C = margin_spec(y, k, x.dtype)
        return spec_bounds(ops, x, C, eps, self.norm, "ibp", upper=False)[0]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        r = self.progress(ctx)
        if r < 0:
            return StepOutput(clean, logits, {"eps": 0.0, "kappa": 1.0})
        eps = self.eps * r
        kappa = self.kappa_start + (self.kappa_end - self.kappa_start) * r
        if eps == 0:  # the first step of the ramp: the bounds are the clean logits
            return StepOutput(clean, logits, {"eps": 0.0, "kappa": kappa})
        ops = to_ops(model, tuple(x.shape[1:]))
        margins = self._margins(ops, x, y, eps, r, logits.shape[1])
        robust = F.cross_entropy(worst_case_logits(margins), y)
        loss = kappa * clean + (1 - kappa) * robust
        verified = (margins.detach().scatter(1, y.view(-1, 1), float("inf")).min(1).values > 0).float().mean()
        return StepOutput(loss, logits, {"eps": eps, "kappa": kappa, "verified_acc": float(verified),
                                         "robust_loss": float(robust.detach())})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "eps": self.eps, "norm": self.norm, "warmup": self.warmup, "ramp": self.ramp,
                "kappa_start": self.kappa_start, "kappa_end": self.kappa_end}


class CrownIBP(IBP):
    """CROWN-IBP training (Zhang et al. 2020): margins ``(1 - beta) m_IBP + beta m_CROWN-IBP``,
    beta from ``beta_start`` to ``beta_end`` over the eps ramp; see the module docstring.
    Defaults are the paper's MNIST setting (warm-up 10/200, ramp 50/200, kappa 1 -> 0,
    beta 1 -> 0, training eps 0.2 for a test eps of 0.1). Costs about one extra backward
    pass of K rows through the network per batch (the CROWN part is skipped once beta = 0)."""

    name = "crown_ibp"

    def __init__(self, eps: float = 0.2, norm: str = "linf", warmup: float = 10 / 200, ramp: float = 50 / 200,
                 kappa_start: float = 1.0, kappa_end: float = 0.0, beta_start: float = 1.0,
                 beta_end: float = 0.0) -> None:
        super().__init__(eps, norm, warmup, ramp, kappa_start, kappa_end)
        self.beta_start = _fraction("beta_start", beta_start)
        self.beta_end = _fraction("beta_end", beta_end)

    def _margins(self, ops, x, y, eps, r, k):
        C = margin_spec(y, k, x.dtype)
        beta = self.beta_start + (self.beta_end - self.beta_start) * r
        m_ibp = spec_bounds(ops, x, C, eps, self.norm, "ibp", upper=False)[0]
        if beta == 0:
            return m_ibp
        m_crown = spec_bounds(ops, x, C, eps, self.norm, "crown-ibp", upper=False)[0]
        return (1 - beta) * m_ibp + beta * m_crown

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "beta_start": self.beta_start, "beta_end": self.beta_end}
