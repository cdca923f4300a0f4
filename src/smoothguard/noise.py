"""Noise distributions for randomized smoothing: what is added, and what it certifies.

A :class:`Noise` draws i.i.d. noise per pixel into a buffer from an explicit generator
(:meth:`Noise.sample_`), names the norm its certificate holds in (:attr:`Noise.norm`), and
turns a lower confidence bound on p_A (the top class's probability under the noise) into a
certified radius (:meth:`Noise.radius`). Every distribution is parameterized by ``sigma``,
its standard deviation per pixel in [0, 1] pixel units, so two noises with the same sigma
have the same variance ("matched noise").

| name | distribution | certifies | radius from p = p_A lower bound (p > 1/2) |
|---|---|---|---|
| ``gaussian`` | N(0, sigma^2) | l_2 | sigma * PhiInv(p) (Cohen, Rosenfeld and Kolter 2019) |
| ``uniform`` | U[-lam, lam], lam = sqrt(3) sigma | l_1 | 2 lam (p - 1/2) (Yang et al. 2020, "Randomized Smoothing of All Shapes and Sizes") |
| ``laplace`` | Laplace(0, b), b = sigma / sqrt(2) | l_1 | -b log(2 (1 - p)) (Teng, Lee and Yuan 2020; Yang et al. 2020) |

All three radii are tight: for a classifier that thresholds one pixel, the radius of the
exact p_A equals the distance to the threshold (tested). A certificate in one norm implies
one in another (:func:`implied_radius`): an l_2 radius r certifies l_1 radius r (the l_1
ball lies inside the l_2 ball) and l_inf radius r / sqrt(d); an l_1 radius r certifies
l_2 radius r / sqrt(d) and l_inf radius r / d. These are labelled as implied wherever shown.

Adding a distribution: a subclass here with ``name``, ``norm``, ``sample_``, ``radius``
and ``p_needed`` (the inverse of ``radius``), and an entry in :data:`NOISES`; the sampler,
the training objectives and the command line take it from there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from smoothguard.contract import ContractError, check_choice, check_sigma

NORMS = ("l1", "l2", "linf")


class Noise:
    """Base class: i.i.d. noise of standard deviation ``sigma`` per pixel."""

    name = "noise"
    norm = "l2"

    def __init__(self, sigma: float) -> None:
        self.sigma = check_sigma(sigma)

    def sample_(self, buf: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``buf`` in place with noise drawn from ``generator``; returns ``buf``."""
        raise NotImplementedError

    def draw(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A new noise tensor of ``shape`` on ``like``'s device and dtype."""
        return self.sample_(torch.empty(shape, device=like.device, dtype=like.dtype), generator)

    def radius(self, p_lower) -> np.ndarray:
        """Certified radius in :attr:`norm` for lower bounds ``p_lower`` on p_A (array or
        scalar); 0 where p_lower <= 1/2 (no certificate)."""
        p = np.asarray(p_lower, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self._radius(np.clip(p, 0.5, 1.0))
        return np.where(p > 0.5, r, 0.0)

    def _radius(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def p_needed(self, radius) -> np.ndarray:
        """The smallest p_A lower bound that certifies ``radius`` (the inverse of :meth:`radius`)."""
        raise NotImplementedError

    def r_max(self, n: int, alpha: float) -> float:
        """The largest radius a CERTIFY with n estimation samples can return (all n votes
        for one class: the bound is alpha ** (1 / n))."""
        return float(self.radius(alpha ** (1.0 / int(n))))

    def settings(self) -> dict:
        """What a result sidecar records about the noise."""
        return {"noise": self.name, "sigma": self.sigma, "norm": self.norm, "scale": self.scale}

    @property
    def scale(self) -> float:
        """The distribution's own scale parameter (sigma, lambda or b)."""
        return self.sigma

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.sigma == self.sigma  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.sigma))


class Gaussian(Noise):
    """N(0, sigma^2) per pixel; certifies l_2 radius sigma * PhiInv(p) (Cohen et al. 2019)."""

    name = "gaussian"
    norm = "l2"

    def sample_(self, buf, generator=None):
        return buf.normal_(0.0, self.sigma, generator=generator)

    def draw(self, shape, like, generator=None):
        # the training objectives' historical draw (sigma * randn): kept so that results stay bit-identical
        return self.sigma * torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def _radius(self, p):
        from scipy.stats import norm  # imported here: scipy.stats costs ~1 s at every command's start-up

        return self.sigma * norm.ppf(p)

    def p_needed(self, radius):
        from scipy.stats import norm

        return norm.cdf(np.asarray(radius, dtype=np.float64) / self.sigma)


class Uniform(Noise):
    """U[-lam, lam] per pixel with lam = sqrt(3) sigma; certifies l_1 radius 2 lam (p - 1/2)
    (Yang et al. 2020): an l_1 shift delta moves at most ||delta||_1 / (2 lam) of the noise
    distribution's mass (the total variation of two shifted boxes)."""

    name = "uniform"
    norm = "l1"

    @property
    def scale(self) -> float:
        return math.sqrt(3.0) * self.sigma

    def sample_(self, buf, generator=None):
        lam = self.scale
        return buf.uniform_(-lam, lam, generator=generator)

    def _radius(self, p):
        return 2.0 * self.scale * (p - 0.5)

    def p_needed(self, radius):
        return 0.5 + np.asarray(radius, dtype=np.float64) / (2.0 * self.scale)


class Laplace(Noise):
    """Laplace(0, b) per pixel with b = sigma / sqrt(2); certifies l_1 radius
    -b log(2 (1 - p)) (Teng et al. 2020; Yang et al. 2020). Drawn as an exponential of mean
    b with a fair random sign, both from the generator (torch's Laplace sampler takes no
    generator, and inverting the CDF of a uniform draw would give -inf at its endpoint)."""

    name = "laplace"
    norm = "l1"

    @property
    def scale(self) -> float:
        return self.sigma / math.sqrt(2.0)

    def sample_(self, buf, generator=None):
        buf.exponential_(1.0 / self.scale, generator=generator)
        sign = torch.empty_like(buf).bernoulli_(0.5, generator=generator).mul_(2.0).sub_(1.0)
        return buf.mul_(sign)

    def _radius(self, p):
        return -self.scale * np.log(2.0 * (1.0 - p))

    def p_needed(self, radius):
        return 1.0 - 0.5 * np.exp(-np.asarray(radius, dtype=np.float64) / self.scale)


NOISES: dict[str, type[Noise]] = {cls.name: cls for cls in (Gaussian, Uniform, Laplace)}


def get_noise(noise: str | Noise, sigma: float | None = None) -> Noise:
    """A :class:`Noise` from its name and ``sigma`` (or the object itself)."""
    if isinstance(noise, Noise):
        if sigma is not None and check_sigma(sigma) != noise.sigma:
            raise ContractError(f"sigma {sigma} differs from the noise object's {noise.sigma}")
        return noise
    check_choice("noise", noise, tuple(NOISES))
    if sigma is None:
        raise ContractError(f"noise {noise!r} needs sigma (its standard deviation per pixel, [0, 1] pixel units)")
    return NOISES[noise](sigma)


def implied_radius(radius, from_norm: str, to_norm: str, dim: int) -> np.ndarray:
    """A radius certified in ``from_norm`` as a (smaller or equal) radius in ``to_norm`` for
    inputs of ``dim`` pixels, from ||v||_1 >= ||v||_2 >= ||v||_inf, ||v||_1 <= sqrt(d) ||v||_2
    and ||v||_2 <= sqrt(d) ||v||_inf. Implied certificates are valid, usually not tight."""
    check_choice("from_norm", from_norm, NORMS)
    check_choice("to_norm", to_norm, NORMS)
    r = np.asarray(radius, dtype=np.float64)
    order = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
    p, q = order[from_norm], order[to_norm]
    if q <= p:  # the to_norm ball of radius r lies inside the from_norm ball of radius r
        return r.copy()
    exponent = (1.0 / p) - (0.0 if math.isinf(q) else 1.0 / q)
    return r / float(dim) ** exponent
