"""Adversarial-training objectives: PGD-AT, TRADES and fast (FGSM-RS) AT.

Each objective is a small class the one :class:`~smoothguard.training.Trainer` calls per
minibatch. The inner maximization is always an attack class of
:mod:`smoothguard.attacks` (the library's one PGD loop), run through
:meth:`~smoothguard.attacks.base.Attack.perturb` with the trainer's generator, so a
training run is reproducible and resumable exactly like a clean one.

All budgets are in [0, 1] pixel units (docs/algorithms.md section 0); norms are ``"linf"``
or ``"l2"``. The attack runs with the model in eval mode (as Madry et al.'s and Zhang et
al.'s reference code do); the training forward pass runs in train mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.attacks.base import check_fraction, check_int, check_nonnegative, check_positive, project
from smoothguard.attacks.pgd import PGD
from smoothguard.training.objectives import Objective, StepContext, StepOutput

from smoothguard.contract import NORMS  # noqa: F401 - re-exported: objectives name their norms
from smoothguard.contract import check_eps as _check_eps  # the contract's: positive, l_inf in (0, 1]


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).float().mean()


def kl_div_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p_logits) || softmax(q_logits)) per row, (N, K) -> (N,), in nats."""
    logp = F.log_softmax(p_logits.float(), dim=1)
    logq = F.log_softmax(q_logits.float(), dim=1)
    return (logp.exp() * (logp - logq)).sum(dim=1)


class _AttackCache:
    """Builds the training attack once per model (attacks hold a model reference)."""

    _atk: Any = None

    def _attack_for(self, model: nn.Module):
        if self._atk is None or self._atk.model is not model:
            self._atk = self._build_attack(model)
        return self._atk

    def _build_attack(self, model: nn.Module):
        raise NotImplementedError

    def __getstate__(self) -> dict:  # never pickle the model along with the objective
        state = dict(self.__dict__)
        state.pop("_atk", None)
        return state


class PGDAT(_AttackCache, Objective):
    """PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018).

    min_theta E[max_{||delta||_p <= eps} CE(f(x + delta), y)], the inner maximum
    approximated by ``attack_steps`` steps of :class:`~smoothguard.attacks.PGD` from a
    uniform random start (its last iterate, as in the paper). Loss:
    ``(1 - adv_weight) * CE(f(x), y) + adv_weight * CE(f(x_adv), y)``; ``adv_weight = 1``
    (default) is the paper's adversarial-only training, 0.5 the mixed variant (Goodfellow
    et al. 2015; the smoothed-inference paper's setting with noise injection).

    Paper setting (MNIST, l_inf): eps = 0.3, 40 steps of 0.01. The default step here is
    ``2.5 * eps / attack_steps`` (Madry et al.'s robustness library rule).

    Logged: ``train_acc`` and ``adv_acc`` are the accuracy on the training attack;
    ``clean_acc`` too when ``adv_weight < 1``.
    """

    name = "pgd_at"

    def __init__(self, eps: float = 0.3, norm: str = "linf", attack_steps: int = 40, step_size: float | None = None,
                 random_start: bool = True, adv_weight: float = 1.0) -> None:
        self.eps = _check_eps(eps, norm)
        self.norm = norm
        self.attack_steps = check_int("attack_steps", attack_steps, 1)
        self.step_size = (2.5 * self.eps / self.attack_steps if step_size is None
                          else check_positive("step_size", step_size))
        self.random_start = bool(random_start)
        self.adv_weight = check_fraction("adv_weight", adv_weight, low_open=True)

    def _build_attack(self, model: nn.Module) -> PGD:
        atk = PGD(model, norm=self.norm, eps=self.eps, steps=self.attack_steps, step_size=self.step_size,
                  random_start=self.random_start, sanity_checks=False)
        atk.return_last = True
        return atk

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        x_adv = self._attack_for(model).perturb(x, y, ctx.generator)
        w = self.adv_weight
        if w < 1:
            # two passes, not one concatenated batch: batch-norm statistics stay per kind
            logits_adv, logits_clean = model(x_adv), model(x)
            loss = w * F.cross_entropy(logits_adv, y) + (1 - w) * F.cross_entropy(logits_clean, y)
            stats = {"adv_acc": _accuracy(logits_adv, y), "clean_acc": _accuracy(logits_clean, y)}
        else:
            logits_adv = model(x_adv)
            loss = F.cross_entropy(logits_adv, y)
            stats = {"adv_acc": _accuracy(logits_adv, y)}
        return StepOutput(loss, logits_adv, stats)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "eps": self.eps, "norm": self.norm, "attack_steps": self.attack_steps,
                "step_size": self.step_size, "random_start": self.random_start, "adv_weight": self.adv_weight}


class FastAT(PGDAT):
    """Fast adversarial training (Wong, Rice, Kolter, ICLR 2020): one FGSM step of size
    ``step_size`` (paper: 1.25 * eps) from a uniform random start in the eps-box,
    projected back onto the ball and [0, 1]; CE on that point. It is PGD with one step
    from a random start, so it runs the library's PGD with ``steps=1``.

    Paper setting (MNIST): eps = 0.3, step 0.375 (= 1.25 eps). Not reproduced here: the
    paper's cyclic learning rate and mixed precision (use ``--schedule``/the trainer).
    """

    name = "fast_at"

    def __init__(self, eps: float = 0.3, norm: str = "linf", step_size: float | None = None,
                 adv_weight: float = 1.0) -> None:
        eps = _check_eps(eps, norm)
        super().__init__(eps=eps, norm=norm, attack_steps=1,
                         step_size=1.25 * eps if step_size is None else step_size,
                         random_start=True, adv_weight=adv_weight)

    def settings(self) -> dict[str, Any]:
        s = super().settings()
        s.pop("attack_steps")
        s.pop("random_start")
        return s


class TradesPGD(PGD):
    """TRADES' inner maximization (Zhang et al. 2019): PGD on KL(f(x) || f(x')) from
    x' = x + 0.001 * N(0, I) (clipped into the ball and [0, 1]), returning the last
    iterate. The clean probabilities f(x) are computed once per batch (they do not
    depend on x'), which saves one forward pass per step against the reference code."""

    name = "trades_pgd"
    stop_on_success = False
    return_last = True

    def _objective(self, x, y, targets, gen):
        model = self.model
        with torch.no_grad():
            clean_logits = model(x)

        def objective(xs: torch.Tensor, idx: torch.Tensor):
            logits = model(xs)
            return kl_div_rows(clean_logits[idx], logits), logits

        return objective

    def _start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return project(x + 0.001 * z, x, self.eps, self.norm)


class TRADES(_AttackCache, Objective):
    """TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, ICML 2019).

    loss = CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximizing the KL term with
    :class:`TradesPGD` (``attack_steps`` sign-gradient steps for l_inf). Gradients flow
    through both f(x) and f(x') as in the paper. ``beta = 0`` is plain CE training.

    Paper settings: beta (= 1/lambda) = 6 (CIFAR-10; the MNIST script uses 1), MNIST
    eps = 0.3 with 40 steps of 0.01, CIFAR-10 eps = 0.031 with 10 steps of 0.007. The
    default step here is ``2.5 * eps / attack_steps`` like :class:`PGDAT`.

    Logged: ``train_acc`` (clean), ``adv_acc`` (on x'), ``kl`` (the KL term).
    """

    name = "trades"

    def __init__(self, beta: float = 6.0, eps: float = 0.3, norm: str = "linf", attack_steps: int = 40,
                 step_size: float | None = None) -> None:
        self.beta = check_nonnegative("beta", beta)
        self.eps = _check_eps(eps, norm)
        self.norm = norm
        self.attack_steps = check_int("attack_steps", attack_steps, 1)
        self.step_size = (2.5 * self.eps / self.attack_steps if step_size is None
                          else check_positive("step_size", step_size))

    def _build_attack(self, model: nn.Module) -> TradesPGD:
        return TradesPGD(model, norm=self.norm, eps=self.eps, steps=self.attack_steps, step_size=self.step_size,
                         sanity_checks=False)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        x_adv = self._attack_for(model).perturb(x, y, ctx.generator)
        logits_clean, logits_adv = model(x), model(x_adv)  # separate passes, as the paper (batch norm)
        kl = kl_div_rows(logits_clean, logits_adv).mean()
        loss = F.cross_entropy(logits_clean, y) + self.beta * kl
        return StepOutput(loss, logits_clean, {"adv_acc": _accuracy(logits_adv, y), "kl": kl.detach()})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "beta": self.beta, "eps": self.eps, "norm": self.norm,
                "attack_steps": self.attack_steps, "step_size": self.step_size}


class FreeAT(Objective):
    """Free adversarial training (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis,
    Taylor and Goldstein, NeurIPS 2019, "Adversarial Training for Free!").

    Each minibatch is replayed ``replays`` = m times (the trainer takes m optimizer steps on
    it). Every replay is one forward and one backward pass on x + delta, and that single
    backward yields both the weights' gradient (the trainer's step) and delta's gradient,
    which updates the perturbation in place: delta <- clip_eps(delta + step_size sign(g))
    (l_inf). delta persists across replays and across minibatches (it is not reset; a
    minibatch of another size starts from zeros). The paper trains for epochs / m so that
    the number of gradient computations matches natural training; m = 8 and
    step_size = eps for CIFAR-10 (eps 8/255), the defaults here with this package's
    l_inf eps 0.1 for Fashion-MNIST.

    Logged: ``train_acc`` is the accuracy on x + delta (before its update), averaged over
    all replays; ``delta_linf`` the largest |delta| (always <= eps).
    """

    name = "free_at"

    def __init__(self, eps: float = 0.1, replays: int = 8, step_size: float | None = None) -> None:
        self.eps = _check_eps(eps, "linf")
        self.norm = "linf"
        self.replays = check_int("replays", replays, 1)
        self.step_size = self.eps if step_size is None else check_positive("step_size", step_size)
        self.delta: torch.Tensor | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        if self.delta is None or self.delta.shape != x.shape or self.delta.device != x.device:
            self.delta = torch.zeros_like(x)
        delta = self.delta.detach().requires_grad_(True)

        def update(grad: torch.Tensor) -> None:
            # the same backward that trains the weights moves the perturbation (no extra pass)
            with torch.no_grad():
                self.delta = (delta + self.step_size * grad.sign()).clamp_(-self.eps, self.eps)

        delta.register_hook(update)
        # project onto [0, 1] for the forward pass; delta itself stays in the eps-box
        x_adv = (x + delta).clamp(0.0, 1.0)
        logits = model(x_adv)
        return StepOutput(F.cross_entropy(logits, y), logits,
                          {"delta_linf": self.delta.abs().max().detach()})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "eps": self.eps, "norm": self.norm, "replays": self.replays,
                "step_size": self.step_size}
