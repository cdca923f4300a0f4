"""Single-step attacks: FGSM (l_inf, Goodfellow, Shlens, Szegedy, ICLR 2015) and FGM
(l_2, the normalized-gradient step of Miyato et al. 2016 / Kurakin et al.)."""

from __future__ import annotations

import math

import torch

from smoothguard.attacks.base import AttackOutput, GradientAttack, normalize_grad


class _SingleStep(GradientAttack):
    """x' = clip(x + eps * direction(grad_x loss)), one gradient evaluation.

    The step is returned as is (even where it lowers the loss): FGSM is defined as the
    single analytic step, and is used as such in fast adversarial training.
    """

    def __init__(self, model, eps: float, loss: str = "ce", kappa: float = math.inf, eot: int = 1,
                 seed: int | None = None, force: bool = False, sanity_checks: bool = True, *, norm: str):
        super().__init__(model, norm=norm, eps=eps, loss=loss, kappa=kappa, eot=eot, seed=seed,
                         force=force, sanity_checks=sanity_checks)

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        objective = self._objective(x, y, targets, gen)
        idx = torch.arange(x.shape[0], device=x.device)
        loss, grad, _ = self._loss_grad(objective, x, idx)
        self._check_start_grad(grad)
        x_adv = self.project(x + self.eps * normalize_grad(grad, self.norm), x)
        return AttackOutput(x_adv, losses=loss.unsqueeze(1))


class FGSM(_SingleStep):
    """Fast gradient sign method (l_inf): x' = clip(x + eps * sign(grad_x L(x, y))).

    Paper setting (Goodfellow et al. 2015): MNIST eps = 0.25 (here the project's l_inf
    default, :data:`smoothguard.defaults.EPS`, 0.1). ``loss``: ``"ce"`` (paper), ``"cw"`` or ``"dlr"``.
    """

    name = "fgsm"
    norms = ("linf",)

    def __init__(self, model, eps: float | None = None, loss: str = "ce", kappa: float = math.inf, eot: int = 1,
                 seed: int | None = None, force: bool = False, sanity_checks: bool = True) -> None:
        super().__init__(model, eps, loss, kappa, eot, seed, force, sanity_checks, norm="linf")


class FGM(_SingleStep):
    """Fast gradient method (l_2): x' = clip(x + eps * g / ||g||_2), g = grad_x L(x, y)."""

    name = "fgm"
    norms = ("l2",)

    def __init__(self, model, eps: float | None = None, loss: str = "ce", kappa: float = math.inf, eot: int = 1,
                 seed: int | None = None, force: bool = False, sanity_checks: bool = True) -> None:
        super().__init__(model, eps, loss, kappa, eot, seed, force, sanity_checks, norm="l2")
