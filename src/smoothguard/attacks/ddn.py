"""Decoupled Direction and Norm (Rony, Hafemann, Oliveira, Ben Ayed, Sabourin,
Granger, CVPR 2019): a fast l_2 minimal-perturbation attack."""

from __future__ import annotations

import math

import torch

from smoothguard.attacks.base import (
    AttackOutput,
    GradientAttack,
    _bcast,
    check_fraction,
    check_int,
    check_positive,
    is_adversarial,
    lp_norms,
    normalize_grad,
)


class DDN(GradientAttack):
    """DDN: ascend the loss with a unit-norm gradient step, then rescale the perturbation
    to a norm budget eps_k that shrinks by (1 - gamma) while the point is adversarial and
    grows by (1 + gamma) while it is not. Returns, per example, the smallest-norm
    adversarial iterate found (the last iterate where none was found).

    Paper settings (Rony et al. 2019): gamma = 0.05, initial norm 1, step size alpha = 1
    decayed by cosine annealing to 0.01; 100 steps (MNIST / CIFAR-10; 1,000 for the
    strongest numbers). The paper also quantizes to 8-bit images: not done here.

    Args:
        model: images in [0, 1] -> logits.
        steps: iterations.
        eps: optional maximal norm (``max_norm`` in the paper's code): when given, the
            attack never leaves the eps-ball and success means a norm <= eps.
        init_norm: initial norm budget eps_0.
        gamma: multiplicative norm update, in (0, 1).
        step_size: initial (maximal) step alpha, cosine-annealed to ``step_size_min``.
        loss: ``"ce"`` (paper) or ``"cw"``/``"dlr"``; eot: gradient samples per step.
    """

    name = "ddn"
    norms = ("l2",)
    minimal = True
    return_last = False  # SmoothAdvDDN returns the last iterate (Salman et al.)

    def __init__(
        self,
        model,
        steps: int = 100,
        eps: float | None = None,
        init_norm: float = 1.0,
        gamma: float = 0.05,
        step_size: float = 1.0,
        step_size_min: float = 0.01,
        loss: str = "ce",
        kappa: float = math.inf,
        eot: int = 1,
        seed: int | None = None,
        sanity_checks: bool = True,
        norm: str = "l2",
    ) -> None:
        super().__init__(model, norm=norm, eps=eps, loss=loss, kappa=kappa, eot=eot, seed=seed,
                         sanity_checks=sanity_checks)
        self.steps = check_int("steps", steps, 1)
        self.init_norm = check_positive("init_norm", init_norm)
        self.gamma = check_fraction("gamma", gamma, low_open=True, high_open=True)
        self.step_size = check_positive("step_size", step_size)
        self.step_size_min = check_positive("step_size_min", step_size_min)
        if self.step_size_min > self.step_size:
            raise ValueError(f"step_size_min ({step_size_min}) must not exceed step_size ({step_size})")

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        objective = self._objective(x, y, targets, gen)
        return self._ddn_loop(x, y, targets, gen, objective)

    def _ddn_loop(self, x, y, targets, gen, objective) -> AttackOutput:
        n = x.shape[0]
        idx = torch.arange(n, device=x.device)
        delta = torch.zeros_like(x)
        # the largest l2 distance reachable inside [0, 1]: no budget beyond it is useful
        worst = lp_norms(torch.maximum(x, 1 - x), "l2")
        cap = worst if self.eps is None else worst.clamp(max=self.eps)
        budget = torch.full((n,), self.init_norm, device=x.device).minimum(cap)
        best_norm = torch.full((n,), math.inf, device=x.device)
        best_delta = torch.zeros_like(x)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        t_ = None if targets is None else targets
        loss = torch.zeros(n, device=x.device)
        for k in range(self.steps + 1):
            last = k == self.steps
            loss, grad, scores = self._loss_grad(objective, x + delta, idx, need_grad=not last)
            if k == 0:
                self._check_start_grad(grad)
            adv = is_adversarial(scores.argmax(1), y, t_)
            norms = lp_norms(delta, "l2")
            better = adv & (norms < best_norm)
            best_norm = torch.where(better, norms, best_norm)
            best_delta[better] = delta[better]
            found |= adv
            if last:
                break
            alpha = self.step_size_min + (self.step_size - self.step_size_min) * (1 + math.cos(math.pi * k / self.steps)) / 2
            budget = torch.where(adv, budget * (1 - self.gamma), budget * (1 + self.gamma)).minimum(cap)
            gnorm = lp_norms(grad, "l2")
            if bool((gnorm == 0).any()):  # no direction: explore randomly (as Rony et al.)
                z = torch.randn(grad.shape, generator=gen, device=grad.device, dtype=grad.dtype)
                grad = torch.where(_bcast(gnorm == 0, grad), z, grad)
            delta = delta + alpha * normalize_grad(grad, "l2")
            delta = delta * _bcast(budget / lp_norms(delta, "l2").clamp_min(1e-12), delta)
            delta = (x + delta).clamp(0, 1) - x
        if self.return_last:
            x_adv = x + delta
        else:
            x_adv = torch.where(_bcast(found, x), x + best_delta, x + delta)
        return AttackOutput(x_adv, losses=loss.unsqueeze(1))
