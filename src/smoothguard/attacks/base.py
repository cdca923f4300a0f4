"""The attack base: threat model, validation, device/mode handling, results.

Every attack in :mod:`smoothguard.attacks` extends :class:`Attack`:

* the constructor holds the hyper-parameters and validates them (errors name the
  parameter and what is allowed);
* ``atk(x, y, targets=None)`` returns the adversarial batch, ``atk.run(...)`` an
  :class:`AttackResult`;
* the base moves inputs to the model's device, puts the model in eval mode for the attack
  and restores every module's mode afterwards, never touches parameters' ``.grad`` or
  ``requires_grad``, never modifies the input tensor, and projects the result onto the
  eps-ball and [0, 1] one final time (then checks it) so that no attack can report a
  perturbation outside the threat model;
* all randomness comes from one ``torch.Generator`` seeded by ``seed`` (deterministic for
  a fixed seed; fresh entropy when ``seed is None``).

Threat model (docs/algorithms.md section 2): x' = x + delta, ||delta||_p <= eps, x' in [0, 1],
images in [0, 1] pixel units, ``norm`` in {"linf", "l2"}.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from smoothguard.attacks.losses import LOSSES, get_loss
from smoothguard.attacks.sanity import check_gradients, check_logits, check_stochastic
from smoothguard.contract import NORMS
from smoothguard.defaults import default_eps
from smoothguard.utils import make_generator, model_device

# validation helpers: the contract's (re-exported here for the attacks' constructors)
from smoothguard.contract import (  # noqa: E402
    ContractError, check_choice, check_fraction, check_images, check_int, check_labels, check_logits as  # noqa: F401
    _check_finite_logits, check_nonnegative, check_positive, forward_errors, model_in_shape)

# ---------------------------------------------------------------------------------------
# geometry of the threat model


def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of a batch of perturbations (N, ...) -> (N,)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """Project x_adv onto {x + delta: ||delta||_p <= eps} and then clip to [0, 1].

    Clipping after the projection keeps the point inside the ball: x is in [0, 1], so
    clipping only shrinks each |delta_i|. ``eps=None`` clips to [0, 1] only.
    """
    if eps is None:
        return x_adv.clamp(0.0, 1.0)
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = lp_norms(delta, "l2")
        factor = (eps / n.clamp_min(1e-30)).clamp(max=1.0)
        delta = delta * _bcast(factor, delta)
    return (x + delta).clamp(0.0, 1.0)


def project_exact(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """:func:`project`, then repair floating-point rounding so that the norm of
    ``result - x``, computed in the tensor's dtype, is <= eps (not just eps + 1 ulp)."""
    out = project(x_adv, x, eps, norm)
    if eps is None:
        return out
    d = x[0].numel() if x.ndim > 1 else 1
    ulp = torch.finfo(out.dtype).eps
    for k in range(12):
        if norm == "linf":
            bad = (out - x).abs().double() > eps  # compare in float64: eps is a Python float
            if not bool(bad.any()):
                break
            if k == 0:
                # One ulp of ``out`` can be far smaller than one ulp of ``out - x`` (out
                # near 0, |x - out| near eps), so stepping ulp by ulp may never get below
                # eps: first snap in float64 to a box shrunk by a few float32 ulps.
                inner = eps * (1 - 4 * ulp)
                x64 = x.double()
                snapped = (x64 + (out.double() - x64).clamp(-inner, inner)).clamp(0.0, 1.0).to(out.dtype)
                out = torch.where(bad, snapped, out)
            else:
                out = torch.where(bad, torch.nextafter(out, x), out)
        else:
            n = lp_norms(out - x, "l2").double()
            bad = n > eps
            if not bool(bad.any()):
                break
            # rounding of x + delta can add up to ~sqrt(d) ulps to the norm: aim below eps
            slack = math.sqrt(d) * ulp * 2**k
            factor = ((eps - slack) / n.clamp_min(1e-30)).clamp(0.0, 1.0)
            factor = torch.where(bad, factor, torch.ones_like(factor)).to(out.dtype)
            out = (x + (out - x) * _bcast(factor, out)).clamp(0.0, 1.0)
    return out


def random_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A uniform random point of the eps-ball around x (l_inf: the box; l_2: the ball),
    clipped to [0, 1] (Madry et al. 2018)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        delta = (2 * u - 1) * eps
    else:
        d = x[0].numel()
        g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        g = g / _bcast(lp_norms(g, "l2").clamp_min(1e-30), g)
        r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = g * _bcast(r * eps, g)
    return project(x + delta, x, eps, norm)


def normalize_grad(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for l_inf, g / ||g||_2 for l_2."""
    if norm == "linf":
        return g.sign()
    return g / _bcast(lp_norms(g, "l2").clamp_min(1e-12), g)


def is_adversarial(pred: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Success: prediction != y (untargeted) or == target (targeted)."""
    return pred != y if targets is None else pred == targets


# ---------------------------------------------------------------------------------------
# results


@dataclass
class AttackResult:
    """What an attack found, per example.

    Attributes:
        x_adv: adversarial batch, inside the eps-ball and [0, 1].
        success: bool (N,); misclassified (untargeted) or classified as the target.
            Points misclassified before the attack count as successes.
        norms: (N,) perturbation norms ||x_adv - x|| in the attack's norm.
        losses: (N, restarts) the best loss reached in each restart (NaN where a restart
            was skipped because the point was already fooled), or None.
        queries: (N,) model evaluations spent per example (black-box attacks), or None.
        clean_pred, adv_pred: (N,) predictions before and after the attack.
        y, targets: the labels and (targeted mode) the targets.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor | None = None
    losses: torch.Tensor | None = None
    queries: torch.Tensor | None = None

    @property
    def clean_accuracy(self) -> float:
        return float((self.clean_pred == self.y).float().mean()) if len(self.y) else float("nan")

    @property
    def robust_accuracy(self) -> float:
        """Fraction of points correctly classified after the attack (untargeted sense)."""
        return float((self.adv_pred == self.y).float().mean()) if len(self.y) else float("nan")

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.y) else float("nan")


@dataclass
class AttackOutput:
    """What ``Attack._attack`` hands back to the base."""

    x_adv: torch.Tensor
    losses: torch.Tensor | None = None
    queries: torch.Tensor | None = None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each module's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# ---------------------------------------------------------------------------------------
# the base class


class Attack:
    """Base class of every attack.

    Args:
        model: maps images in [0, 1], (N, C, H, W), to logits (N, K).
        norm: ``"linf"`` or ``"l2"`` (the subclasses that support one only fix it).
        eps: radius of the threat model in [0, 1] pixel units. ``None``: the default
            radius of the norm (:data:`smoothguard.defaults.EPS`: l_inf 0.1, l_2 1.0), except
            for minimal-perturbation attacks, where it means no bound (only [0, 1]
            constrains the result).
        seed: seeds the attack's ``torch.Generator`` (None: fresh entropy each call).
        force: allow an l_inf eps above 1 (with [0, 1] images it is the whole box).
        sanity_checks: emit :class:`~smoothguard.attacks.sanity.RobustnessWarning` for
            probability outputs, stochastic models without EOT, and zero gradients.
    """

    name = "attack"
    norms: tuple[str, ...] = NORMS
    minimal = False  # minimal-perturbation attacks accept eps=None

    def __init__(
        self,
        model: nn.Module,
        *,
        norm: str = "linf",
        eps: float | None = None,
        seed: int | None = None,
        force: bool = False,
        sanity_checks: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be a torch.nn.Module (or callable); got {type(model).__name__}")
        check_choice("norm", norm, self.norms)
        if eps is None and not self.minimal:
            eps = default_eps(norm)  # the one default per norm (smoothguard.defaults.EPS)
        if eps is not None:
            eps = check_positive("eps", eps)
            if norm == "linf" and eps > 1 and not force:
                raise ContractError(
                    f"eps={eps} > 1 for the linf norm covers the whole [0, 1] image box; "
                    "eps is in [0, 1] pixel units (did you mean eps/255?). Pass force=True to allow it."
                )
        if seed is not None:
            seed = check_int("seed", seed, minimum=-(2**63))
        self.model = model
        self.norm = norm
        self.eps = eps
        self.seed = seed
        self.force = bool(force)
        self.sanity_checks = bool(sanity_checks)

    # -- public API -----------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The adversarial batch (see :meth:`run`)."""
        return self.run(x, y, targets).x_adv

    def run(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> AttackResult:
        """Attack the batch ``x`` (labels ``y``; ``targets`` for a targeted attack)."""
        device = model_device(self.model) if isinstance(self.model, nn.Module) else x.device
        x, y, targets = self._validate_inputs(x, y, targets, device)
        gen = make_generator(self.seed, device)
        with eval_mode(self.model) if isinstance(self.model, nn.Module) else _null():
            with torch.no_grad(), forward_errors(x.shape[1:]):
                clean_out = _check_finite_logits(self.model(x), count=x.shape[0])
            check_labels(y, clean_out.shape[1], name="y")
            if targets is not None:
                check_labels(targets, clean_out.shape[1], name="targets")
            if self.sanity_checks:
                check_logits(clean_out)
                self._sanity(x, clean_out)
            with torch.enable_grad():
                out = self._attack(x, y, targets, gen)
            x_adv = project_exact(out.x_adv.detach(), x, self.eps, self.norm)
            self._assert_inside(x_adv, x)
            with torch.no_grad():
                clean_pred = self._predict(x, clean_out, gen)
                adv_pred = self._predict(x_adv, None, gen)
        return AttackResult(
            x_adv=x_adv,
            success=is_adversarial(adv_pred, y, targets),
            norms=lp_norms(x_adv - x, self.norm),
            clean_pred=clean_pred,
            adv_pred=adv_pred,
            y=y,
            targets=targets,
            losses=out.losses,
            queries=out.queries,
        )

    def perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The inner maximization alone, for adversarial training (Madry et al. 2018).

        ``x`` (images in [0, 1], already on the model's device) and ``y`` are trusted: no
        input validation, no sanity checks, no clean/adversarial decisions (the trainer
        needs none, and each would cost a forward pass or a host sync per batch). The
        model is in eval mode during the attack (every module's flag is restored after);
        all randomness comes from ``generator`` (the trainer's, seeded per epoch).
        Returns the detached adversarial batch inside the eps-ball and [0, 1].
        """
        with eval_mode(self.model) if isinstance(self.model, nn.Module) else _null():
            with torch.enable_grad():
                out = self._attack(x.detach(), y, None, generator)
        return project(out.x_adv.detach(), x.detach(), self.eps, self.norm)

    def __repr__(self) -> str:
        keys = [k for k in vars(self) if k not in ("model",) and not k.startswith("_")]
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    # -- for subclasses -------------------------------------------------------------------

    def _attack(
        self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, gen: torch.Generator
    ) -> AttackOutput:
        raise NotImplementedError

    def _sanity(self, x: torch.Tensor, clean_out: torch.Tensor) -> None:
        """Extra start-of-attack checks (subclasses)."""

    def _predict(self, x: torch.Tensor, out: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """The model's decision on x (``out``: its outputs when already computed)."""
        return (self.model(x) if out is None else out).argmax(dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Projection used inside the loops: exact, so that the final projection of
        :meth:`run` never moves a point (and so never flips a decision at a tie)."""
        return project_exact(x_adv, x, self.eps, self.norm)

    # -- internals ------------------------------------------------------------------------

    def _validate_inputs(self, x, y, targets, device):
        # the one input contract: float images (N, C, H, W) in [0, 1], finite; integer labels
        x = check_images(x, "x", single=False, in_shape=model_in_shape(self.model))
        y = check_labels(y, count=x.shape[0], name="y")
        # float32 or float64 images both meet the contract: attack in the model's own precision
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), x.dtype) \
            if isinstance(self.model, nn.Module) else x.dtype
        x = x.detach().to(device=device, dtype=dtype).clone()  # the caller's tensor is never touched
        y = y.to(device=device, dtype=torch.long)
        if targets is not None:
            targets = check_labels(targets, count=x.shape[0], name="targets")
            targets = targets.to(device=device, dtype=torch.long)
            if bool((targets == y).any()):
                raise ContractError("targets must differ from the true labels y (a target equal to y is no attack)")
        return x, y, targets

    def _assert_inside(self, x_adv: torch.Tensor, x: torch.Tensor) -> None:
        if bool(torch.isnan(x_adv).any()):
            raise RuntimeError(f"{type(self).__name__} produced NaN values (internal error)")
        if float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
            raise RuntimeError(f"{type(self).__name__}: result left [0, 1] after the final projection")
        if self.eps is not None:
            n = lp_norms(x_adv - x, self.norm).double()
            if bool((n > self.eps * (1 + 1e-6)).any()):
                raise RuntimeError(
                    f"{type(self).__name__}: perturbation norm {float(n.max())} exceeds eps={self.eps} "
                    "after the final projection (internal error)"
                )


@contextmanager
def _null() -> Iterator[None]:
    yield


# ---------------------------------------------------------------------------------------
# white-box attacks: a pluggable objective and one gradient routine shared by all loops

# An objective maps a sub-batch of candidate points and their indices in the full batch
# to (loss per example to maximize, scores (n, K) whose argmax is the decision).
ObjectiveFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class GradientAttack(Attack):
    """Base of white-box attacks that follow the input gradient of a per-example loss.

    Subclasses change *what* is differentiated by overriding :meth:`_objective`
    (plain loss on the model, EPGD's noise-averaged CE, SmoothAdv's soft-smoothed loss);
    :meth:`_loss_grad` adds EOT (``eot`` gradient samples averaged) for any stochastic
    model. The PGD loop, APGD, DDN and FGSM all call these two, so there is one loop
    per algorithm and one gradient routine for all of them.

    Args (besides :class:`Attack`'s):
        loss: ``"ce"`` (cross-entropy), ``"cw"`` (C&W margin, capped at ``kappa``) or
            ``"dlr"`` (Croce & Hein's difference of logits ratio).
        kappa: confidence cap of the C&W margin (``inf``: no cap).
        eot: gradient samples averaged per step (Expectation over Transformation,
            Athalye et al. 2018) for stochastic models; 1 for deterministic models.
    """

    losses_allowed: tuple[str, ...] = LOSSES

    def __init__(self, model, *, loss: str = "ce", kappa: float = math.inf, eot: int = 1, **kw) -> None:
        super().__init__(model, **kw)
        check_choice("loss", loss, self.losses_allowed)
        self.loss = loss
        self.kappa = check_nonnegative("kappa", kappa, allow_inf=True)
        self.eot = check_int("eot", eot, 1)
        self._checked_grad = False

    def _objective(self, x, y, targets, gen) -> ObjectiveFn:
        loss_fn = get_loss(self.loss, self.kappa)
        model = self.model

        def objective(xs: torch.Tensor, idx: torch.Tensor):
            logits = model(xs)
            return loss_fn(logits, y[idx], None if targets is None else targets[idx]), logits

        return objective

    def _loss_grad(
        self, objective: ObjectiveFn, xs: torch.Tensor, idx: torch.Tensor, need_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(loss, gradient w.r.t. xs, scores), each averaged over ``eot`` draws.

        Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so model
        parameters' ``.grad`` is never written.
        """
        loss_sum = grad_sum = prob_sum = None
        scores = None
        for _ in range(self.eot):
            if need_grad:
                xg = xs.detach().requires_grad_(True)
                loss, scores = objective(xg, idx)
                (g,) = torch.autograd.grad(loss.sum(), xg)
                grad_sum = g if grad_sum is None else grad_sum + g
            else:
                with torch.no_grad():
                    loss, scores = objective(xs, idx)
            loss = loss.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            if self.eot > 1:
                p = torch.softmax(scores.detach().float(), dim=1)
                prob_sum = p if prob_sum is None else prob_sum + p
        if self.eot > 1:
            scores = torch.log((prob_sum / self.eot).clamp_min(1e-30))
            grad = None if grad_sum is None else grad_sum / self.eot
            return loss_sum / self.eot, grad, scores
        return loss_sum, grad_sum, scores.detach()

    def _check_start_grad(self, grad: torch.Tensor | None) -> None:
        if self.sanity_checks and grad is not None and not self._checked_grad:
            self._checked_grad = True
            check_gradients(grad)

    def _sanity(self, x, clean_out) -> None:
        self._checked_grad = False
        if self.eot == 1 and not getattr(self, "handles_noise", False):
            with torch.no_grad():
                check_stochastic(clean_out, self.model(x), self.eot)

    def _predict(self, x, out, gen):
        if self.eot == 1:
            return super()._predict(x, out, gen)
        # a stochastic model: decide by the mean probabilities over eot draws
        probs = sum(torch.softmax(self.model(x).float(), dim=1) for _ in range(self.eot))
        return probs.argmax(dim=1)
