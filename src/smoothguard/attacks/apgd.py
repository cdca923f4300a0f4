"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and an adaptive step size."""

from __future__ import annotations

import math

import torch

from smoothguard.attacks.base import (
    AttackOutput,
    GradientAttack,
    _bcast,
    check_fraction,
    check_int,
    is_adversarial,
    normalize_grad,
    random_start,
)


def apgd_checkpoints(n_iter: int) -> list[int]:
    """Iterations w_j = ceil(p_j * n_iter) at which APGD may halve its step, with
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = sorted({math.ceil(round(q * n_iter, 6)) for q in p if q <= 1})
    return [v for v in w if 0 < v <= n_iter]


class APGD(GradientAttack):
    """APGD-CE / APGD-DLR (Croce & Hein 2020), l_inf or l_2, untargeted or targeted.

    Step size starts at 2 * eps; iterates mix the projected gradient step z with the
    previous step (momentum alpha = 0.75, the first step has none). At each checkpoint w_j
    the step size is halved, and the search restarts from the best point found, when
    (1) the loss increased in fewer than rho = 0.75 of the steps since the last checkpoint,
    or (2) the step was not halved at the last checkpoint and the best loss has not
    improved since. Per example the attack keeps the first successful iterate, else the
    highest-loss one.

    Paper defaults: 100 iterations, rho = 0.75, alpha = 0.75, one run (AutoAttack's
    "standard" version: APGD-CE without restarts, APGD-T with 9 target classes);
    loss ``"ce"`` or ``"dlr"`` (``"cw"`` also works). ``random_start``: the paper starts
    at a random point of the ball.
    """

    name = "apgd"

    def __init__(
        self,
        model,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        kappa: float = math.inf,
        eot: int = 1,
        seed: int | None = None,
        force: bool = False,
        sanity_checks: bool = True,
    ) -> None:
        super().__init__(model, norm=norm, eps=eps, loss=loss, kappa=kappa, eot=eot, seed=seed, force=force,
                         sanity_checks=sanity_checks)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.rho = check_fraction("rho", rho)
        self.momentum = check_fraction("momentum", momentum)
        self.random_start = bool(random_start)

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        objective = self._objective(x, y, targets, gen)
        n = x.shape[0]
        all_idx = torch.arange(n, device=x.device)
        loss0, _, scores0 = self._loss_grad(objective, x, all_idx, need_grad=False)
        success = is_adversarial(scores0.argmax(1), y, targets)
        best_adv, best_loss = x.clone(), loss0.clone()
        losses = torch.full((n, self.restarts), float("nan"), device=x.device, dtype=loss0.dtype)
        for r in range(self.restarts):
            idx = (~success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, la, ok = self._run_once(x[idx], y[idx], None if targets is None else targets[idx], idx,
                                        objective, gen)
            losses[idx, r] = la
            take = ok | (la > best_loss[idx])
            best_adv[idx[take]] = xa[take]
            best_loss[idx[take]] = la[take]
            success[idx[ok]] = True
        return AttackOutput(best_adv, losses=losses)

    def _run_once(self, x0, y, t, idx, objective, gen):
        """One APGD run on the sub-batch x0; returns (kept point, its loss, success)."""
        n = x0.shape[0]
        dev = x0.device
        checkpoints = set(apgd_checkpoints(self.steps))
        step = torch.full((n,), 2.0 * self.eps, device=dev, dtype=x0.dtype)

        xk = random_start(x0, self.eps, self.norm, gen) if self.random_start else x0.clone()
        loss, grad, scores = self._loss_grad(objective, xk, idx)
        self._check_start_grad(grad)
        adv = is_adversarial(scores.argmax(1), y, t)
        found = adv.clone()
        keep_x, keep_loss = xk.clone(), loss.clone()  # returned point: first success, else max loss
        x_max, f_max, g_max = xk.clone(), loss.clone(), grad.clone()  # best point for restarts
        x_prev = xk.clone()
        f_prev = loss.clone()
        increases = torch.zeros(n, device=dev)
        last_w = 0
        f_max_at_last = f_max.clone()
        halved_at_last = torch.ones(n, dtype=torch.bool, device=dev)  # no condition (2) at w_1

        for k in range(self.steps):
            a = 1.0 if k == 0 else self.momentum
            z = self.project(xk + _bcast(step, xk) * normalize_grad(grad, self.norm), x0)
            x_new = self.project(xk + a * (z - xk) + (1 - a) * (xk - x_prev), x0)
            x_prev, xk = xk, x_new
            loss, grad, scores = self._loss_grad(objective, xk, idx, need_grad=k < self.steps - 1)
            adv = is_adversarial(scores.argmax(1), y, t)

            new_success = adv & ~found
            keep_x[new_success] = xk[new_success]
            keep_loss[new_success] = loss[new_success]
            up = ~found & ~adv & (loss > keep_loss)
            keep_x[up], keep_loss[up] = xk[up], loss[up]
            found |= adv

            increases += (loss > f_prev).float()
            f_prev = loss
            better = loss > f_max
            x_max[better], f_max[better] = xk[better], loss[better]
            if grad is not None:
                g_max[better] = grad[better]

            if (k + 1) in checkpoints and k < self.steps - 1:
                w = k + 1
                cond1 = increases < self.rho * (w - last_w)
                cond2 = ~halved_at_last & (f_max_at_last >= f_max)
                halve = cond1 | cond2
                step = torch.where(halve, step / 2, step)
                # restart from the best point, without momentum
                xk = torch.where(_bcast(halve, xk), x_max, xk)
                grad = torch.where(_bcast(halve, grad), g_max, grad)
                x_prev = torch.where(_bcast(halve, xk), xk, x_prev)
                f_prev = torch.where(halve, f_max, f_prev)
                halved_at_last = halve
                f_max_at_last = f_max.clone()
                increases.zero_()
                last_w = w
        return keep_x, keep_loss, found
