"""Randomized smoothing: the smoothed classifier, its PREDICT and CERTIFY.

g(x) = argmax_c P[f(x + d) = c], d ~ N(0, sigma^2 I), with f the base classifier
(Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019). ``f`` is any ``nn.Module`` mapping [0, 1] images to logits, or
any callable returning logits (N, K) or labels (N,) (a query-only classifier). The noise
is a :mod:`smoothguard.noise` object (Gaussian by default; uniform and Laplace certify
l_1 radii); the samples come from :class:`smoothguard.smoothing.sampler.Sampler`; how the
model runs fastest without changing a count is decided by :mod:`smoothguard.runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from smoothguard import ABSTAIN, runtime
from smoothguard.contract import ContractError, check_alpha, check_choice, check_images, check_int, check_sigma
from smoothguard.noise import Noise, get_noise
from smoothguard.smoothing.sampler import NOISE_BLOCK, Sampler
from smoothguard.smoothing.stats import binom_pvalue, lower_confidence_bound
from smoothguard.utils import cpu_has_native_bf16, derive_seed

__all__ = ["NOISE_BLOCK", "CertifyResult", "PredictResult", "SmoothedClassifier", "image_seed"]

PRECISIONS = ("fp32", "bf16")
BaseClassifier = nn.Module | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CertifyResult:
    """Per-image results of :meth:`SmoothedClassifier.certify_batch`."""

    prediction: torch.Tensor  # int64 (B,), ABSTAIN = -1
    radius: torch.Tensor  # float64 (B,), 0.0 on abstention
    p_lower: torch.Tensor  # float64 (B,), the Clopper-Pearson lower bound on p_A
    counts_selection: torch.Tensor  # int64 (B, K)
    counts_estimation: torch.Tensor  # int64 (B, K)
    norm: str = "l2"  # the norm of the radius (the noise's: l2 for Gaussian, l1 for uniform/Laplace)
    seconds: np.ndarray | None = None  # float64 (B,): each image's share of the forward batches' time
    speed: dict[str, Any] = field(default_factory=dict)  # how the model ran (SpeedConfig.settings())


@dataclass
class PredictResult:
    """Per-image results of :meth:`SmoothedClassifier.predict_batch`."""

    prediction: torch.Tensor  # int64 (B,), ABSTAIN = -1
    pvalue: torch.Tensor  # float64 (B,)
    counts: torch.Tensor  # int64 (B, K)
    seconds: np.ndarray | None = None  # float64 (B,), as in CertifyResult
    speed: dict[str, Any] = field(default_factory=dict)


class SmoothedClassifier:
    """The smoothed classifier g of a base classifier f under noise of sd ``sigma``.

    Args:
        base_classifier: ``nn.Module`` or callable on [0, 1] images (N, C, H, W) returning
            logits (N, K) or integer labels (N,). Noise is added in pixel space, before the
            model's own normalization layer, and is not clipped.
        num_classes: K.
        sigma: noise standard deviation per pixel in [0, 1] pixel units (> 0).
        noise: ``"gaussian"`` (default; l_2 certificates), ``"uniform"`` or ``"laplace"``
            (l_1), or a :class:`smoothguard.noise.Noise`.
        precision: ``fp32`` (default) or ``bf16`` autocast (faster with bf16 units, may flip votes).
        speed: ``"auto"`` (default: :func:`smoothguard.runtime.fastest_exact`, the fastest
            configuration that changes no count, chosen by rules from the model and the
            machine), ``"plain"``, or a :class:`smoothguard.runtime.SpeedConfig`. Shown by
            :attr:`speed` and recorded in every result. ``memory_format``, ``rewrite``,
            ``workers`` and ``jit`` override single choices (``jit=True`` runs a frozen
            TorchScript graph: not exact, checked against the eager model). On the CPU a
            module is converted to channels_last *in place* (layout only, never values).
        device, in_shape: where the noise is drawn (default: the module's) and the (C, H, W)
            every input must have (default: the module's ``in_shape`` attribute, if any).

    Inputs follow :mod:`smoothguard.contract`: float images in [0, 1], (B, C, H, W) or (C, H, W).
    """

    def __init__(self, base_classifier: BaseClassifier, num_classes: int, sigma: float, *,
                 noise: str | Noise = "gaussian", precision: str = "fp32",
                 speed: str | runtime.SpeedConfig = "auto", memory_format: str | None = None,
                 rewrite: bool | None = None, workers: int | None = None, jit: bool | str | None = None,
                 device: torch.device | str | None = None, in_shape: Sequence[int] | None = None) -> None:
        if not callable(base_classifier):
            raise TypeError("base_classifier must be an nn.Module or a callable")
        self.base_classifier = base_classifier
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.sigma = check_sigma(sigma)
        self.noise = get_noise(noise, sigma)  # what is added, and the norm and radius it certifies
        check_choice("precision", precision, PRECISIONS)
        if jit not in (None, False, True, "always"):
            raise ContractError(f"jit must be False or True ('always' is True), got {jit!r}")
        self.speed = runtime.resolve(base_classifier, speed, device, memory_format=memory_format, rewrite=rewrite,
                                     workers=workers, jit=None if jit is None else bool(jit))
        shape = in_shape if in_shape is not None else getattr(base_classifier, "in_shape", None)
        shape = None if shape is None else tuple(check_int("in_shape", v) for v in shape)
        self.sampler = Sampler(base_classifier, self.num_classes, self.noise, self.speed, precision=precision,
                               device=device, in_shape=shape)
        self.device, self.in_shape, self.precision = self.sampler.device, shape, precision
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            import warnings

            warnings.warn("precision='bf16' on a CPU without bf16 instructions (AVX-512 BF16 or AMX): PyTorch "
                          "emulates it, about 5x slower than fp32 on the AVX2 machine of BENCHMARKS.md; "
                          "precision='fp32' is faster here", RuntimeWarning, stacklevel=2)

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int = 400, **kwargs) -> torch.Tensor:
        """Cohen's SAMPLEUNDERNOISE: class counts of f(x_i + noise) over ``num`` draws per image."""
        return self.sampler.counts(x, num, batch_size, **kwargs)

    sample_counts = _sample_noise  # the public name: see Sampler.counts for the arguments

    def predict_batch(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 400, *,
                      seeds: Sequence[int] | None = None, generator: torch.Generator | None = None) -> PredictResult:
        """PREDICT for each image of a batch: the probability that a returned class is not
        g(x_i) is at most alpha for each image; abstains (-1) when undecided."""
        check_alpha(alpha)
        n = check_int("n", n, minimum=1)
        seconds = np.zeros(check_images(x, "x").shape[0])
        counts = self._sample_noise(x, n, batch_size, seeds=seeds, generator=generator, seconds=seconds)
        top2 = counts.topk(2, dim=1)
        pvals = [binom_pvalue(n_a, n_b) for n_a, n_b in top2.values.tolist()]
        preds = [c if p <= alpha else ABSTAIN for c, p in zip(top2.indices[:, 0].tolist(), pvals)]
        return PredictResult(torch.tensor(preds, dtype=torch.int64), torch.tensor(pvals, dtype=torch.float64),
                             counts, seconds, self.speed.settings())

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 400, *, seed: int | None = None,
                generator: torch.Generator | None = None) -> int:
        """Cohen's PREDICT: the class returned is g(x) with probability >= 1 - alpha
        (otherwise ABSTAIN = -1), from a two-sided binomial test on the top two counts."""
        res = self.predict_batch(_one_image(x, "predict"), n, alpha, batch_size,
                                 seeds=None if seed is None else [seed], generator=generator)
        return int(res.prediction[0])

    def certify_batch(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 400, *,
                      seeds: Sequence[int] | None = None, generator: torch.Generator | None = None) -> CertifyResult:
        """CERTIFY for each image of a batch: with probability >= 1 - alpha per image, a
        non-abstaining answer is g(x_i) and g is constant on the ball of the radius in the
        noise's norm (``result.norm``: l2 for Gaussian noise, l1 for uniform and Laplace)."""
        check_alpha(alpha)
        n0, n = check_int("n0", n0, minimum=1), check_int("n", n, minimum=1)
        x = check_images(x, "x", in_shape=self.in_shape)
        gens, seconds = self.sampler.generators(x.shape[0], seeds, generator), np.zeros(x.shape[0])
        # selection and estimation use separate, fresh noise from the same per-image stream
        counts0 = self._sample_noise(x, n0, batch_size, generators=gens, seconds=seconds)
        c_a = counts0.argmax(1)
        counts = self._sample_noise(x, n, batch_size, generators=gens, seconds=seconds)
        n_a = counts.gather(1, c_a[:, None]).squeeze(1)
        p_lower = torch.as_tensor(np.atleast_1d(lower_confidence_bound(n_a.numpy(), n, alpha)), dtype=torch.float64)
        certified = p_lower >= 0.5
        radius = torch.where(certified, torch.as_tensor(np.atleast_1d(self.noise.radius(p_lower.numpy())),
                                                        dtype=torch.float64), torch.zeros_like(p_lower))
        prediction = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
        return CertifyResult(prediction, radius, p_lower, counts0, counts, self.noise.norm, seconds,
                             self.speed.settings())

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 400, *,
                seed: int | None = None, generator: torch.Generator | None = None) -> tuple[int, float]:
        """Cohen's CERTIFY: with probability >= 1 - alpha, a non-abstaining class is g(x) and
        g(x + delta) = g(x) for all ||delta|| < radius in the noise's norm (l_2 for the
        default Gaussian); returns (ABSTAIN, 0.0) when the lower bound on p_A is below 1/2."""
        res = self.certify_batch(_one_image(x, "certify"), n0, n, alpha, batch_size,
                                 seeds=None if seed is None else [seed], generator=generator)
        return int(res.prediction[0]), float(res.radius[0])

    def vote(self, x: torch.Tensor, m: int, method: str = "hard", batch_size: int = 400, *,
             seeds: Sequence[int] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Smoothed inference (Nemcovsky et al.): the class of each image from ``m`` noisy
        forward passes by ``method`` (see :mod:`smoothguard.smoothing.inference`); no guarantee."""
        from smoothguard.smoothing.inference import smoothed_scores

        return smoothed_scores(self, x, m, method, batch_size, seeds=seeds, generator=generator).argmax(1)

    # what smoothing.inference and the adaptive procedures reach for (the sampler's own)
    def _raw(self, batch: torch.Tensor) -> torch.Tensor:
        return self.sampler.outputs(batch)

    def _prepare(self, x, num, batch_size, generators, seeds, generator):
        return self.sampler.prepare(x, num, batch_size, generators, seeds, generator)

    def _noise_sum(self, x, gens, num, batch_size, score=None):
        return self.sampler.run(x, gens, num, batch_size, score)

    def _generators(self, count, seeds, generator):
        return self.sampler.generators(count, seeds, generator)


def image_seed(seed: int, index: int) -> int:
    """The per-image noise seed used by the CLI: depends only on (seed, dataset index)."""
    return derive_seed(seed, "image", int(index))


def _one_image(x: torch.Tensor, verb: str) -> torch.Tensor:
    """``x`` as a batch of exactly one image: (C, H, W) or (1, C, H, W). A batch of several
    is refused (returning the first image's answer would silently drop the others)."""
    x = check_images(x, "x")
    if x.shape[0] != 1:
        raise ContractError(f"{verb}() takes one image, (C, H, W) or (1, C, H, W); got {x.shape[0]} images "
                            f"(shape {tuple(x.shape)}). Use {verb}_batch() for a batch: one result per image")
    return x
