"""Carlini & Wagner l_2 attack (IEEE S&P 2017)."""

from __future__ import annotations

import torch

from smoothguard.attacks.base import (
    Attack,
    AttackOutput,
    _bcast,
    check_int,
    check_nonnegative,
    check_positive,
    is_adversarial,
    lp_norms,
)
from smoothguard.attacks.losses import _other_max


class CW(Attack):
    """C&W l_2: minimize ||delta||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)
    (targeted: max(max_{j != t} z_j - z_t, -kappa)) over x' = (tanh(w) + 1) / 2 with Adam,
    with a per-example binary search over c. Returns the smallest-norm adversarial
    example found over all iterations and search steps (x itself where none was found).

    Paper defaults (Carlini & Wagner 2017, ``nn_robust_attacks``): 9 binary-search steps,
    10,000 iterations, learning rate 0.01, initial c = 1e-3, kappa = 0, early abort.
    Here ``steps`` defaults to 1,000 (a CPU-friendly budget; pass 10000 for the paper).

    Args:
        eps: optional l_2 budget; when given, a minimal example above eps is scaled back
            onto the eps-sphere (and usually stops being adversarial).
        kappa: confidence: success requires the margin to reach kappa.
    """

    name = "cw"
    norms = ("l2",)
    minimal = True

    def __init__(
        self,
        model,
        eps: float | None = None,
        kappa: float = 0.0,
        steps: int = 1000,
        binary_search_steps: int = 9,
        initial_const: float = 1e-3,
        learning_rate: float = 0.01,
        abort_early: bool = True,
        seed: int | None = None,
        sanity_checks: bool = True,
        norm: str = "l2",
    ) -> None:
        super().__init__(model, norm=norm, eps=eps, seed=seed, sanity_checks=sanity_checks)
        self.kappa = check_nonnegative("kappa", kappa)
        self.steps = check_int("steps", steps, 1)
        self.binary_search_steps = check_int("binary_search_steps", binary_search_steps, 1)
        self.initial_const = check_positive("initial_const", initial_const)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.abort_early = bool(abort_early)

    def _margin(self, logits, y, targets):
        """How far from success (<= -kappa: successful with confidence kappa)."""
        if targets is None:
            return logits.gather(1, y.unsqueeze(1)).squeeze(1) - _other_max(logits, y)
        return _other_max(logits, targets) - logits.gather(1, targets.unsqueeze(1)).squeeze(1)

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        n = x.shape[0]
        dev = x.device
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e10, device=dev)
        const = torch.full((n,), self.initial_const, device=dev)
        best_norm = torch.full((n,), float("inf"), device=dev)
        best_adv = x.clone()
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.learning_rate)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = float("inf")
            for it in range(self.steps):
                xa = (torch.tanh(w) + 1) / 2
                logits = self.model(xa)
                dist2 = (xa - x).flatten(1).pow(2).sum(1)
                margin = self._margin(logits, y, targets)
                total = (dist2 + const * margin.clamp(min=-self.kappa)).sum()
                (g,) = torch.autograd.grad(total, w)
                with torch.no_grad():
                    adv = is_adversarial(logits.argmax(1), y, targets) & (margin <= -self.kappa)
                    norms = dist2.sqrt()
                    better = adv & (norms < best_norm)
                    best_norm = torch.where(better, norms, best_norm)
                    best_adv[better] = xa.detach()[better]
                    found |= adv
                w.grad = g
                opt.step()
                if self.abort_early and (it + 1) % check_every == 0:
                    if total.item() > prev * 0.9999:
                        break
                    prev = total.item()
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        if self.eps is not None:
            # scale minimal examples beyond the budget back onto the eps-sphere
            over = best_norm > self.eps
            delta = best_adv - x
            scale = (self.eps / lp_norms(delta, "l2").clamp_min(1e-12)).clamp(max=1)
            best_adv = torch.where(_bcast(over, x), x + delta * _bcast(scale, x), best_adv)
        return AttackOutput(best_adv.detach())
