"""Objectives that train base classifiers for randomized smoothing: SmoothAdv,
stability training and consistency regularization.

Noise is Gaussian in pixel space, N(0, noise_sd^2 I), not clipped, exactly as at
certification time (docs/algorithms.md sections 0 and 4); ``noise_sd`` is the smoothing
sigma. All noise comes from the trainer's per-epoch generator (``ctx.generator``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.attacks.base import check_choice, check_int, check_nonnegative, check_positive
from smoothguard.attacks.smooth import SmoothAdvDDN, SmoothAdvPGD
from smoothguard.training.adversarial import kl_div_rows
from smoothguard.contract import check_sigma
from smoothguard.noise import Gaussian
from smoothguard.training.objectives import Objective, StepContext, StepOutput

SMOOTHADV_ATTACKS = ("pgd", "ddn")


def _check_sd(noise_sd: float) -> float:
    return check_sigma(noise_sd, "noise_sd (pixel units, = the smoothing sigma)")


def _noise(shape: tuple[int, ...], x: torch.Tensor, noise_sd: float, gen: torch.Generator) -> torch.Tensor:
    return Gaussian(noise_sd).draw(shape, x, gen)  # the one noise object (bit-identical draws)


def _mean_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(m, N, K) logits -> log of the mean softmax over the m draws, (N, K)."""
    return torch.softmax(logits.detach().float(), dim=2).mean(0).clamp_min(1e-20).log()


class SmoothAdv(Objective):
    """SmoothAdv training (Salman, Li, Razenshteyn, Zhang, Zhang, Bubeck, Yang, NeurIPS 2019).

    Per minibatch: draw m = ``m_train`` Gaussian noise vectors per image (sd ``noise_sd``),
    attack the soft smoothed classifier with them held fixed
    (:class:`~smoothguard.attacks.SmoothAdvPGD` or
    :class:`~smoothguard.attacks.SmoothAdvDDN`, l_2 radius eps_t, ``attack_steps`` steps),
    then train on the m noisy copies x_adv + d_i of the attacked point with CE per copy
    ("multi-noise" training, the same draws as the attack, as the paper's code does).

    eps warm-up: eps_t = min(eps, (epoch + 1) * eps / warmup_epochs), a function of the
    epoch only, so a resumed run continues the warm-up exactly (``warmup_epochs = 1``:
    no warm-up). DDN also starts at init_norm = eps_t (as the paper's code).

    Paper grid: attack_steps T in {1, 2, 4, 8, 10}, m_train in {1, 2, 4, 8}, eps in
    {0.25, 0.5, 1, 2} (pixel units; the reference code divides its flags by 256, here
    eps is given directly). Defaults: T = 2, m = 2, eps = 0.5 (one point of that grid).
    PGD starts at x (the paper's ``random_start`` flag has no effect) with step
    2 * eps_t / T and trains on the last iterate.

    Logged: ``train_acc`` is the soft smoothed decision (m draws) on the attacked point;
    ``eps`` the radius eps_t of the epoch.
    """

    name = "smoothadv"

    def __init__(self, noise_sd: float = 0.25, eps: float = 0.5, attack: str = "pgd", m_train: int = 2,
                 attack_steps: int = 2, warmup_epochs: int = 1) -> None:
        self.noise_sd = _check_sd(noise_sd)
        self.eps = check_positive("eps", eps)
        check_choice("smoothadv attack", attack, SMOOTHADV_ATTACKS)
        self.attack = attack
        self.m_train = check_int("m_train", m_train, 1)
        self.attack_steps = check_int("attack_steps", attack_steps, 1)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 1)
        self._atk = None
        self._atk_key: tuple | None = None

    def eps_at(self, epoch: int) -> float:
        """The attack radius of 0-based ``epoch``: min(eps, (epoch + 1) * eps / warmup)."""
        return min(self.eps, (epoch + 1) * self.eps / self.warmup_epochs)

    def attack_for(self, model: nn.Module, epoch: int):
        """The epoch's attack object (rebuilt only when the model or eps_t changes)."""
        eps = self.eps_at(epoch)
        key = (id(model), eps)
        if self._atk is None or self._atk_key != key or self._atk.model is not model:
            common = dict(eps=eps, sigma=self.noise_sd, num_noise=self.m_train, steps=self.attack_steps,
                          sanity_checks=False)
            if self.attack == "pgd":
                self._atk = SmoothAdvPGD(model, **common)
                self._atk.return_last = True
            else:
                self._atk = SmoothAdvDDN(model, init_norm=eps, **common)
            self._atk_key = key
        return self._atk

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        atk = self.attack_for(model, ctx.epoch)
        x_adv = atk.perturb(x, y, ctx.generator)
        noise = atk._noise  # (m, N, C, H, W): the attack's fixed draws
        m, n = noise.shape[0], x.shape[0]
        logits = model((x_adv.unsqueeze(0) + noise).reshape(m * n, *x.shape[1:]))
        loss = F.cross_entropy(logits, y.repeat(m))
        return StepOutput(loss, _mean_log_probs(logits.view(m, n, -1)), {"eps": atk.eps})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "eps": self.eps, "smoothadv_attack": self.attack, "m_train": self.m_train,
                "attack_steps": self.attack_steps, "warmup_epochs": self.warmup_epochs}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_atk", "_atk_key")}


class Stability(Objective):
    """Stability training (Zheng, Song, Leung, Goodfellow, CVPR 2016; used for smoothing
    by Li, Chen, Wang, Carin, NeurIPS 2019):
    loss = CE(f(x + d), y) + lbd * KL(f(x) || f(x + d)), d ~ N(0, noise_sd^2 I), one
    fresh draw per image and minibatch; gradients flow through both terms. The papers
    tune the weight (Zheng et al.'s alpha); default lbd = 1.

    Logged: ``train_acc`` on the noisy images, ``kl`` the stability term.
    """

    name = "stability"

    def __init__(self, noise_sd: float = 0.25, lbd: float = 1.0) -> None:
        self.noise_sd = _check_sd(noise_sd)
        self.lbd = check_nonnegative("lbd", lbd)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        n = x.shape[0]
        noisy = x + _noise(x.shape, x, self.noise_sd, ctx.generator)
        logits = model(torch.cat([x, noisy]))
        clean, noisy_logits = logits[:n], logits[n:]
        kl = kl_div_rows(clean, noisy_logits).mean()
        loss = F.cross_entropy(noisy_logits, y) + self.lbd * kl
        return StepOutput(loss, noisy_logits, {"kl": kl.detach()})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "lbd": self.lbd}


class Consistency(Objective):
    """Consistency regularization (Jeong and Shin, NeurIPS 2020).

    With m noisy copies x + d_i (d_i ~ N(0, noise_sd^2 I)) and p_i = softmax(f(x + d_i)),
    p_mean = (1/m) sum_i p_i:

        loss = (1/m) sum_i CE(f(x + d_i), y) + lbd * (1/m) sum_i KL(p_mean || p_i)
               + eta * H(p_mean)

    Paper settings: m = 2, eta = 0.5, lbd in {10, 20} (larger lbd for smaller sigma on
    CIFAR-10); defaults m = 2, lbd = 10, eta = 0.5.

    Logged: ``train_acc`` of the mean prediction p_mean; ``kl`` and ``entropy`` terms.
    """

    name = "consistency"

    def __init__(self, noise_sd: float = 0.25, m_train: int = 2, lbd: float = 10.0, eta: float = 0.5) -> None:
        self.noise_sd = _check_sd(noise_sd)
        self.m_train = check_int("m_train", m_train, 1)
        self.lbd = check_nonnegative("lbd", lbd)
        self.eta = check_nonnegative("eta", eta)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        m, n = self.m_train, x.shape[0]
        noisy = x.unsqueeze(0) + _noise((m, *x.shape), x, self.noise_sd, ctx.generator)
        logits = model(noisy.reshape(m * n, *x.shape[1:]))
        ce = F.cross_entropy(logits, y.repeat(m))
        logp = F.log_softmax(logits.float(), dim=1).view(m, n, -1)
        p_mean = logp.exp().mean(0)
        log_mean = p_mean.clamp_min(1e-20).log()
        kl = (p_mean.unsqueeze(0) * (log_mean.unsqueeze(0) - logp)).sum(2).mean()
        entropy = -(p_mean * log_mean).sum(1).mean()
        loss = ce + self.lbd * kl + self.eta * entropy
        return StepOutput(loss, log_mean.detach(), {"kl": kl.detach(), "entropy": entropy.detach()})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "m_train": self.m_train, "lbd": self.lbd, "eta": self.eta}
