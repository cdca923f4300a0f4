"""Projected gradient descent (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018).

The one PGD loop of the library: EPGD, SmoothAdvPGD and EOT variants reuse it through
:meth:`GradientAttack._objective` / :meth:`GradientAttack._loss_grad`.
"""

from __future__ import annotations

import math

import torch

from smoothguard.attacks.base import (
    AttackOutput,
    GradientAttack,
    check_int,
    check_positive,
    is_adversarial,
    normalize_grad,
    random_start,
)


class PGD(GradientAttack):
    """PGD on the l_inf or l_2 ball with random start and restarts.

    Each restart starts from a uniform random point of the ball (l_inf: the box; l_2: the
    ball) if ``random_start`` (else from x), takes ``steps`` steps of size ``step_size``
    (l_inf: ``step_size * sign(g)``; l_2: ``step_size * g / ||g||_2``) and projects onto
    the ball and [0, 1] after each step. Per example the attack keeps the worst case found
    over all iterates and restarts: the *first* successful iterate, else the iterate of
    highest loss, never simply the last one. Points already fooled are not attacked
    further (their later restarts are skipped), which only saves time.

    Paper settings (Madry et al. 2018, MNIST, l_inf): eps = 0.3, 40 steps of 0.01 for
    training; evaluation with 100 steps and up to 50 restarts (``restarts=50``). CIFAR-10:
    eps = 8/255, 7 steps of 2/255 (training), 20 steps (evaluation).

    Args:
        model: images in [0, 1] -> logits.
        norm: ``"linf"`` or ``"l2"``.
        eps: radius in [0, 1] pixel units.
        steps: gradient steps per restart.
        step_size: step length in pixel units (None: ``2.5 * eps / steps``, the rule of
            Madry et al.'s robustness library; it reaches the boundary from any start).
        random_start: start each restart at a uniform random point of the ball.
        restarts: number of random restarts (>= 1).
        loss: ``"ce"``, ``"cw"`` (margin, capped at ``kappa``) or ``"dlr"``.
        kappa: C&W confidence cap (``inf``: plain margin; Madry's challenge used 50).
        eot: gradient samples per step for stochastic models (1: deterministic model).
        seed: seed of the attack's generator.
    """

    name = "pgd"
    # Stop attacking a point at its first successful iterate. Attacks on smoothed or
    # noisy classifiers turn this off: there, one lucky success under a few noise draws
    # is weak evidence, so they keep ascending and return the highest-loss iterate.
    stop_on_success = True
    # Adversarial training (Madry et al.; Wong et al.'s FGSM-RS; Salman et al.) trains on
    # the *last* iterate of one restart: set ``return_last = True`` on an instance to run
    # just the steps, without the loss evaluations that worst-case tracking needs (two
    # forward passes per batch fewer).
    return_last = False

    def __init__(
        self,
        model,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        kappa: float = math.inf,
        eot: int = 1,
        seed: int | None = None,
        force: bool = False,
        sanity_checks: bool = True,
    ) -> None:
        super().__init__(
            model, norm=norm, eps=eps, loss=loss, kappa=kappa, eot=eot, seed=seed, force=force,
            sanity_checks=sanity_checks,
        )
        self.steps = check_int("steps", steps, 1)
        self.step_size = None if step_size is None else check_positive("step_size", step_size)
        self.random_start = bool(random_start)
        self.restarts = check_int("restarts", restarts, 1)

    @property
    def alpha(self) -> float:
        """The step size in use."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        objective = self._objective(x, y, targets, gen)
        if self.return_last:
            return AttackOutput(self._last_iterate(x, gen, objective))
        x_adv, losses = self._pgd_loop(x, y, targets, gen, objective)
        return AttackOutput(x_adv, losses=losses)

    def _last_iterate(self, x: torch.Tensor, gen: torch.Generator, objective) -> torch.Tensor:
        """``steps`` steps from one start, no worst-case tracking (``return_last``)."""
        idx = torch.arange(x.shape[0], device=x.device)
        xa = self._start(x, gen)
        for _ in range(self.steps):
            _, grad, _ = self._loss_grad(objective, xa, idx)
            xa = self._step(xa, grad, x, self.alpha)
        return xa

    def _start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_start(x, self.eps, self.norm, gen) if self.random_start else x.clone()

    def _pgd_loop(self, x, y, targets, gen, objective) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``restarts`` x ``steps`` of PGD; returns (worst case per example, losses)."""
        n = x.shape[0]
        alpha = self.alpha
        all_idx = torch.arange(n, device=x.device)
        best_adv = x.clone()
        loss0, _, scores0 = self._loss_grad(objective, x, all_idx, need_grad=False)
        best_loss = loss0.clone()
        stop = self.stop_on_success
        success = is_adversarial(scores0.argmax(1), y, targets)
        if not stop:
            success = torch.zeros_like(success)
        restart_losses = torch.full((n, self.restarts), float("nan"), device=x.device, dtype=loss0.dtype)

        for r in range(self.restarts):
            idx = (~success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0 = x[idx]
            xa = self._start(x0, gen)
            run_best = torch.full((idx.numel(),), float("-inf"), device=x.device)
            for k in range(self.steps + 1):
                last = k == self.steps
                loss, grad, scores = self._loss_grad(objective, xa, idx, need_grad=not last)
                if k == 0:
                    self._check_start_grad(grad)
                adv = is_adversarial(scores.argmax(1), y[idx], None if targets is None else targets[idx])
                if not stop:
                    adv = torch.zeros_like(adv)
                take = adv | (loss > best_loss[idx])
                ti = idx[take]
                best_adv[ti] = xa[take]
                best_loss[ti] = loss[take]
                success[idx[adv]] = True
                run_best = torch.maximum(run_best, loss)
                restart_losses[idx, r] = run_best
                if last:
                    break
                keep = ~adv  # a fooled point is done: its first success is kept
                if not bool(keep.all()):
                    idx, xa, x0, grad, run_best = idx[keep], xa[keep], x0[keep], grad[keep], run_best[keep]
                    if idx.numel() == 0:
                        break
                xa = self._step(xa, grad, x0, alpha)
        return best_adv, restart_losses

    def _step(self, xa: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
        return self.project(xa + alpha * normalize_grad(grad, self.norm), x0)
