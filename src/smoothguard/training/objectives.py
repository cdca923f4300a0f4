"""Training objectives: small classes the one trainer calls once per minibatch.

An objective turns a minibatch into a scalar loss to minimize (plus the logits whose
accuracy the log reports and any numbers of its own). Adversarial and smoothing
objectives (PGD-AT, TRADES, SmoothAdv, stability, consistency, denoiser losses) plug in
the same way: subclass :class:`Objective` and add it to the table in
:mod:`smoothguard.training.registry`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import check_sigma
from smoothguard.noise import Gaussian as GaussianNoise, get_noise


@dataclass
class StepContext:
    """What an objective may need besides the batch: where it is in training, and noise."""

    epoch: int  # 0-based
    epochs: int
    step: int  # 0-based step within the epoch
    steps_per_epoch: int
    generator: torch.Generator  # on the model's device; the only source of randomness


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to minimize
    logits: torch.Tensor | None = None  # logits whose accuracy against y is logged
    stats: dict[str, float] = field(default_factory=dict)  # extra per-batch numbers (averaged per epoch)


class Objective:
    """Base class. ``noise_sd`` is the Gaussian noise the objective trains under (0: none);
    the trainer also evaluates test accuracy under that noise."""

    name = "objective"
    noise_sd: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The hyper-parameters, stored in checkpoints and logs."""
        return {"objective": self.name, "noise_sd": self.noise_sd}

    def eval_model(self, model: nn.Module) -> nn.Module | None:
        """The classifier whose clean and noisy test accuracy the trainer logs each epoch
        (the trained model itself; a denoiser objective composes it with its classifier;
        None: log no test accuracy)."""
        return model


class Standard(Objective):
    """Plain cross-entropy on clean images."""

    name = "standard"

    def __call__(self, model, x, y, ctx):
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits)


class Gaussian(Objective):
    """Cross-entropy on x + d, d ~ N(0, noise_sd^2 I), a fresh draw for every minibatch.

    Cohen, Rosenfeld and Kolter (ICML 2019), the base classifier for randomized
    smoothing; train noise_sd = the certification sigma. Noise is in pixel units and
    not clipped, exactly as at certification time. ``noise`` trains under another
    distribution of the same sd per pixel (``uniform`` or ``laplace``, for l_1
    certificates: Yang et al. 2020 train with the noise they certify with; see
    :mod:`smoothguard.noise`); the checkpoint records it and ``certify`` uses it by default.
    """

    name = "gaussian"

    def __init__(self, noise_sd: float = 0.25, noise: str = "gaussian") -> None:
        self.noise_dist = get_noise(noise, check_sigma(noise_sd, "gaussian objective noise_sd (pixel units)"))
        self.noise_sd = self.noise_dist.sigma
        self.noise = self.noise_dist.name

    def __call__(self, model, x, y, ctx):
        logits = model(x + self.noise_dist.draw(x.shape, x, ctx.generator))
        return StepOutput(F.cross_entropy(logits, y), logits)

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        if self.noise != "gaussian":  # recorded only when not the default (older checkpoints resume unchanged)
            out["noise"] = self.noise
        return out


class _DenoiserObjective(Objective):
    """Base of the denoiser objectives of denoised smoothing (Salman, Sun, Yang, Kapoor
    and Kolter, NeurIPS 2020). The trainer trains the *denoiser* D (its ``model``); the
    classifiers f are frozen here: ``requires_grad`` off, eval mode, and a fingerprint of
    their weights that :meth:`assert_frozen` checks.

    Args:
        classifiers: one classifier (white box: the target) or several (black box: the
            surrogates, used one per minibatch in turn, so the target is never queried
            during training). ``denoiser_mse`` needs none (it only uses them to log accuracy).
        noise_sd: Gaussian noise sd in [0, 1] pixel units (= the certification sigma;
            paper: 0.12, 0.25, 0.5, 1.0). The noise is not clipped.
        classifier_ids: how the classifiers are named in the settings (e.g. their
            checkpoints' sha256), so a resumed run checks it trains against the same ones.
    """

    needs_classifier = True

    def __init__(self, classifiers: nn.Module | Sequence[nn.Module] | None = None, noise_sd: float = 0.25,
                 classifier_ids: Sequence[str] | None = None) -> None:
        if not noise_sd > 0:
            raise ValueError(f"{self.name} needs noise_sd > 0 (pixel units), got {noise_sd}")
        self.noise_sd = float(noise_sd)
        if classifiers is None:
            classifiers = []
        elif isinstance(classifiers, nn.Module):
            classifiers = [classifiers]
        self.classifiers: list[nn.Module] = list(classifiers)
        if self.needs_classifier and not self.classifiers:
            raise ValueError(f"objective {self.name!r} needs a classifier (or surrogate classifiers)")
        if classifier_ids is not None and len(classifier_ids) != len(self.classifiers):
            raise ValueError(f"{len(self.classifiers)} classifiers but {len(classifier_ids)} classifier_ids")
        self.classifier_ids = list(classifier_ids) if classifier_ids is not None else None
        for f in self.classifiers:
            f.requires_grad_(False)
            f.eval()
        self._fingerprints = [_fingerprint(f) for f in self.classifiers]

    def classifier(self, ctx: StepContext) -> nn.Module:
        """The classifier of this minibatch: the surrogates in turn, one per batch."""
        f = self.classifiers[(ctx.epoch * ctx.steps_per_epoch + ctx.step) % len(self.classifiers)]
        if f.training:  # nothing should switch it back, but a train-mode BN would drift
            f.eval()
        return f

    def noisy(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return x + GaussianNoise(self.noise_sd).draw(x.shape, x, ctx.generator)

    def assert_frozen(self) -> None:
        """Raise RuntimeError if any classifier's weights or buffers changed since construction."""
        for i, (f, fp) in enumerate(zip(self.classifiers, self._fingerprints)):
            if _fingerprint(f) != fp:
                raise RuntimeError(f"classifier {i} of objective {self.name!r} changed during training")

    def eval_model(self, model: nn.Module) -> nn.Module | None:
        """f(D(x)) with the first classifier (in black-box mode: the first surrogate)."""
        if not self.classifiers:
            return None
        from smoothguard.models.denoiser import DenoisedClassifier

        return DenoisedClassifier(self.classifiers[0], model)

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out["classifiers"] = self.classifier_ids if self.classifier_ids is not None else len(self.classifiers)
        return out


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class DenoiserMSE(_DenoiserObjective):
    """E ||D(x + d) - x||^2 (mean over pixels), d ~ N(0, noise_sd^2 I): the MSE objective
    of Salman et al. (2020), needing no classifier. With a classifier, the logged accuracy
    is that of f(D(x + d)) (computed without gradient)."""

    name = "denoiser_mse"
    needs_classifier = False

    def __call__(self, model, x, y, ctx):
        out = model(self.noisy(x, ctx))
        loss = F.mse_loss(out, x)
        logits = None
        if self.classifiers:
            with torch.no_grad():
                logits = self.classifier(ctx)(out.detach())
        return StepOutput(loss, logits, {"mse": float(loss.detach())})


class DenoiserStability(_DenoiserObjective):
    """E CE(f(D(x + d)), f(x)) with f frozen: the stability objective of Salman et al.
    (2020). ``target="hard"`` (the paper's code) uses the label argmax f(x); ``"soft"``
    the probabilities softmax f(x) (soft-label cross-entropy = KL + a constant).
    Logs ``agree``: how often f(D(x + d)) has the label of f(x)."""

    name = "denoiser_stability"

    def __init__(self, classifiers=None, noise_sd: float = 0.25, classifier_ids=None, target: str = "hard") -> None:
        if target not in ("hard", "soft"):
            raise ValueError(f"stability target must be 'hard' or 'soft', got {target!r}")
        self.target = target
        super().__init__(classifiers, noise_sd, classifier_ids)

    def __call__(self, model, x, y, ctx):
        f = self.classifier(ctx)
        with torch.no_grad():
            clean = f(x)
        logits = f(model(self.noisy(x, ctx)))
        clean_label = clean.argmax(1)
        if self.target == "hard":
            loss = F.cross_entropy(logits, clean_label)
        else:
            loss = -(F.softmax(clean, 1) * F.log_softmax(logits, 1)).sum(1).mean()
        agree = float((logits.detach().argmax(1) == clean_label).float().mean())
        return StepOutput(loss, logits, {"agree": agree})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "target": self.target}


class DenoiserClassification(_DenoiserObjective):
    """E CE(f(D(x + d)), y) with the true labels y and f frozen (Salman et al. 2020's
    classification objective; needs labelled training data, unlike stability)."""

    name = "denoiser_classification"

    def __call__(self, model, x, y, ctx):
        logits = self.classifier(ctx)(model(self.noisy(x, ctx)))
        return StepOutput(F.cross_entropy(logits, y), logits)


# the table of objectives (name -> class) and get_objective: smoothguard.training.registry
