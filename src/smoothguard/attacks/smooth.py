"""Attacks on smoothed and noisy classifiers: EPGD and SmoothAdv (PGD and DDN).

Both reuse the one PGD loop (and the DDN loop) and only change the objective:

* **EPGD** (Nemcovsky et al., smoothed inference): the gradient of the *average CE loss*
  over m fresh Gaussian draws per step: (1/m) sum_i CE(f(x' + d_i), y).
* **SmoothAdv** (Salman et al., NeurIPS 2019): the CE loss of the *soft smoothed
  classifier* G(x') = (1/m) sum_i softmax(f(x' + d_i)), estimated with m draws d_i that
  are drawn once per call and kept fixed over the steps:
  loss = -log(max((1/m) sum_i softmax(f(x' + d_i))_y, 1e-20)) (average, then log).

Noise is Gaussian in pixel space, N(0, sigma^2 I), not clipped (docs/algorithms.md section 0).
"""

from __future__ import annotations

import math

import torch

from smoothguard.attacks.base import check_int, check_positive
from smoothguard.attacks.ddn import DDN
from smoothguard.attacks.losses import get_loss
from smoothguard.attacks.pgd import PGD
from smoothguard.noise import Gaussian


def _noisy_logits(model, xs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """f(xs + d_i) for m draws: noise (m, n, ...) -> logits (m, n, K), one forward pass."""
    m, n = noise.shape[0], xs.shape[0]
    batch = (xs.unsqueeze(0) + noise).reshape(m * n, *xs.shape[1:])
    return model(batch).view(m, n, -1)


def soft_smoothed_log_probs(model, xs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log((1/m) sum_i softmax(f(xs + d_i))), clamped at 1e-20 before the log."""
    probs = torch.softmax(_noisy_logits(model, xs, noise).float(), dim=2).mean(dim=0)
    return torch.log(probs.clamp_min(1e-20))


class _Smoothed:
    """Mixin: noise draws, the soft-smoothed decision, and the common arguments."""

    handles_noise = True

    def _init_noise(self, sigma: float, num_noise: int) -> None:
        self.sigma = check_positive("sigma", sigma)
        self.num_noise = check_int("num_noise", num_noise, 1)

    def _draw(self, xs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        shape = (self.num_noise, *xs.shape)
        return Gaussian(self.sigma).draw(shape, xs, gen)  # the one noise object (bit-identical draws)

    fixed_noise = False  # SmoothAdv: the draws are fixed per call

    def _predict(self, x, out, gen):
        """Decision of the soft smoothed classifier estimated with num_noise draws: the
        attack's own fixed draws for SmoothAdv (so ``success`` says whether the attack
        fooled its objective), fresh draws for EPGD. The smoothed classifier itself is
        evaluated with PREDICT on fresh noise (smoothguard.smoothing)."""
        noise = getattr(self, "_noise", None) if self.fixed_noise else None
        if noise is None or noise.shape[1:] != x.shape:
            noise = self._draw(x, gen)
        return soft_smoothed_log_probs(self.model, x, noise).argmax(dim=1)


class EPGD(_Smoothed, PGD):
    """Expectation PGD: PGD on the CE loss averaged over ``num_noise`` fresh Gaussian
    draws per step (Nemcovsky, Zheltonozhskii, Baskin et al., "Smoothed inference").

    The loss (not the probabilities) is averaged: the difference from SmoothAdvPGD.
    Returns the highest-loss iterate (no stop at a first, possibly lucky, success).
    The reported decision is the soft smoothed classifier's with fresh draws.

    Args: as :class:`PGD`, plus ``sigma`` (noise sd, pixel units) and ``num_noise`` (m).
    Paper setting: l_inf PGD (CIFAR-10 eps = 8/255), sigma equal to the model's
    training noise, m in {1, ..., 32}.
    """

    name = "epgd"
    stop_on_success = False

    def __init__(self, model, norm: str = "linf", eps: float | None = None, sigma: float = 0.25, num_noise: int = 8,
                 steps: int = 40, step_size: float | None = None, random_start: bool = True, restarts: int = 1,
                 loss: str = "ce", kappa: float = math.inf, eot: int = 1, seed: int | None = None,
                 force: bool = False, sanity_checks: bool = True) -> None:
        PGD.__init__(self, model, norm=norm, eps=eps, steps=steps, step_size=step_size,
                     random_start=random_start, restarts=restarts, loss=loss, kappa=kappa, eot=eot,
                     seed=seed, force=force, sanity_checks=sanity_checks)
        self._init_noise(sigma, num_noise)

    def _objective(self, x, y, targets, gen):
        loss_fn = get_loss(self.loss, self.kappa)
        model, m = self.model, self.num_noise

        def objective(xs, idx):
            logits = _noisy_logits(model, xs, self._draw(xs, gen))  # fresh draws every call
            yy = y[idx].repeat(m)
            tt = None if targets is None else targets[idx].repeat(m)
            loss = loss_fn(logits.reshape(m * xs.shape[0], -1), yy, tt).view(m, -1).mean(0)
            scores = torch.log(torch.softmax(logits.float(), dim=2).mean(0).clamp_min(1e-20))
            return loss, scores

        return objective


def _smoothadv_objective(self, x, y, targets, gen):
    """SmoothAdv's loss with noise drawn once per call (shared by PGD and DDN versions)."""
    noise = self._draw(x, gen)  # (m, N, ...), fixed across steps
    self._noise = noise  # exposed for tests and inspection
    model = self.model

    def objective(xs, idx):
        logp = soft_smoothed_log_probs(model, xs, noise[:, idx])
        if targets is None:
            loss = -logp.gather(1, y[idx].unsqueeze(1)).squeeze(1)
        else:
            loss = logp.gather(1, targets[idx].unsqueeze(1)).squeeze(1)
        return loss, logp

    return objective


class SmoothAdvPGD(_Smoothed, PGD):
    """SmoothAdv PGD (Salman et al., NeurIPS 2019): l_2 PGD on the soft smoothed
    classifier with ``num_noise`` draws fixed over the steps (see module docstring).

    Step size 2 * eps / steps on the normalized gradient (paper), projection onto the
    l_2 ball and [0, 1]; starts from x (the reference code's ``random_start`` flag has
    no effect; ``random_start=True`` here really starts at a random point). Returns the
    highest-loss iterate, which for this smooth objective is almost always the last one.

    Paper grid: steps T in {1, 2, 4, 8, 10}, num_noise m in {1, 2, 4, 8},
    eps in {0.25, 0.5, 1, 2}; sigma equal to the training noise.
    """

    name = "smoothadv_pgd"
    norms = ("l2",)
    stop_on_success = False
    fixed_noise = True

    def __init__(self, model, eps: float = 0.5, sigma: float = 0.25, num_noise: int = 8, steps: int = 10,
                 step_size: float | None = None, random_start: bool = False, restarts: int = 1,
                 eot: int = 1, seed: int | None = None, sanity_checks: bool = True, norm: str = "l2") -> None:
        PGD.__init__(self, model, norm=norm, eps=eps, steps=steps, step_size=step_size,
                     random_start=random_start, restarts=restarts, loss="ce", eot=eot, seed=seed,
                     sanity_checks=sanity_checks)
        self._init_noise(sigma, num_noise)

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.0 * self.eps / self.steps

    _objective = _smoothadv_objective


class SmoothAdvDDN(_Smoothed, DDN):
    """SmoothAdv with DDN (Salman et al. 2019): DDN steps on the soft smoothed loss with
    fixed noise, the norm budget capped at ``eps`` during the search. Returns the
    smallest-norm point that fooled the soft smoothed classifier (under the fixed draws),
    else the last iterate. (The reference code caps the norm only at the end, and
    returns the clean input where nothing was found.) Paper: same grid as
    :class:`SmoothAdvPGD`; init_norm 1, gamma 0.05."""

    name = "smoothadv_ddn"
    minimal = False
    fixed_noise = True

    def __init__(self, model, eps: float = 0.5, sigma: float = 0.25, num_noise: int = 8, steps: int = 10,
                 init_norm: float = 1.0, gamma: float = 0.05, step_size: float = 1.0,
                 step_size_min: float = 0.01, eot: int = 1, seed: int | None = None,
                 sanity_checks: bool = True, norm: str = "l2") -> None:
        DDN.__init__(self, model, steps=steps, eps=eps, init_norm=init_norm, gamma=gamma,
                     step_size=step_size, step_size_min=step_size_min, loss="ce", eot=eot, seed=seed,
                     sanity_checks=sanity_checks, norm=norm)
        self._init_noise(sigma, num_noise)

    _objective = _smoothadv_objective
