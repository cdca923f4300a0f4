"""Anytime-valid confidence sequences for a Bernoulli mean (the engine of sequential certification).

A *confidence sequence* (CS) at level alpha is a sequence of intervals [L_n, U_n] such that

    P(for all n >= 1: L_n <= p <= U_n) >= 1 - alpha,

i.e. the bounds hold *simultaneously* for every sample size n, so they may be looked at
after every batch and the sampling stopped at any data-dependent time without losing the
guarantee (Darling and Robbins 1967; Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021; Waudby-Smith and
Ramdas, "Estimating means of bounded random variables by betting", JRSS-B 2023).

Construction (a discrete mixture of likelihood ratios, i.e. a betting e-process with a
fixed menu of bets). For a candidate value t of p and an alternative q > t, the product

    LR_n(q; t) = (q / t)^S_n * ((1 - q) / (1 - t))^(n - S_n)      (S_n = successes in n draws)

is a nonnegative martingale when p = t and a supermartingale when p <= t (one factor has
mean p q / t + (1 - p)(1 - q)/(1 - t), linear in p, equal to 1 at p = t and increasing in
p because q > t). A mixture E_n(t) = sum_k w_k LR_n(q_k(t); t) with weights summing to 1 is
again one, so by Ville's inequality P(sup_n E_n(t) >= 1/alpha) <= alpha for every t >= p
(Ramdas, Gruenwald, Vovk and Shafer, "Game-theoretic statistics and safe anytime-valid
inference", Statist. Sci. 2023). The alternatives are placed *relative to t*:

    q_k(t) = 1 - theta_k (1 - t),        0 < theta_k < 1,

so component k bets that the failure rate is theta_k times the one allowed at t. Then
ln(q_k(t) / t) is decreasing in t, hence E_n(t) is strictly decreasing in t whenever
S_n > 0, and

    L_n = sup{t : E_n(t) >= 1/alpha}        (0 when S_n = 0)

is a lower confidence sequence: L_n > p implies E_n(p) >= 1/alpha, so
P(exists n: L_n > p) <= alpha. The upper sequence U_n is the same construction applied to
the failures (1 - p). This is the one-sided form of the discrete-mixture
confidence sequences of Howard et al. 2021 (section 3) and of the "predictable mixture"
betting CS of Waudby-Smith and Ramdas 2023 with the bets fixed in advance, which is what
makes the bounds depend only on (S_n, n): they are computed from counts, vectorized over
images, at any look.

Why these bets (``DEFAULT_THETAS``/``DEFAULT_WEIGHTS``): the failure-rate ratio of an
image at a certification threshold t (p_A = Phi(r / sigma)) ranges from about 0 (a clean
image, every vote for its class) to just under 1 (an image right at the threshold). Half
the weight sits on theta = 1e-4: a unanimous image certifies t after
n >= (ln(1/alpha) + ln 2) / ln(1/t) samples, within ln 2 of the best any test can do
(ln(1/alpha) / ln(1/t), the Clopper-Pearson bound of n of n). Near a threshold the growth
rate of a bet depends on the gap 1 - theta, and a bet at c times the true gap keeps a
fraction 2c - c^2 of the best rate; so 0.4 of the weight sits on gaps 0.04, 0.08, 0.16,
0.32, 0.6 (doubling: >= 83 % of the best rate for any gap in that range, each bet costing
ln(1/0.08) = 2.5 nats), and 0.1 on theta 0.15 and 0.03 for images well above a threshold,
which are decided quickly anyway. A first version (bets spaced geometrically in theta
itself, leaving the gaps 0.05-0.33 uncovered, and an upper side mirrored from the lower
one) spent 1.7x the samples on real images; the choice was made
by simulated power and on the first 64 test images (BENCHMARKS.md, "Anytime-valid
certification"). The sequence is valid for any p but tuned for p near 1 (the regime of
p_A); the upper side bets on failure rates 1/theta times the allowed one.

Voracek ("Treatment of statistical estimation problems in randomized smoothing", 2024)
analyses the sample complexity of such sequential tests for "is x robust at radius r";
the price of time-uniformity over a fixed-n Clopper-Pearson test at the same n is that
ln(1/alpha) replaces z_alpha^2 / 2 (plus the mixture's ln(1/w_k)), i.e. roughly 1.5-2x
more samples for an image sitting right at a threshold, and far fewer for every image
that is not.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from smoothguard.contract import check_alpha
from scipy.special import logsumexp

__all__ = [
    "DEFAULT_THETAS",
    "DEFAULT_WEIGHTS",
    "BernoulliCS",
    "log_evalue",
]


def _default_menu() -> tuple[np.ndarray, np.ndarray]:
    # near a threshold: 1 - theta = 0.04 ... 0.6 (doubling); far above it: 0.4, 0.15, 0.03;
    # unanimous: 1e-4 with half the weight
    thetas = np.array([0.96, 0.92, 0.84, 0.68, 0.4, 0.15, 0.03, 1e-4])
    weights = np.array([0.08, 0.08, 0.08, 0.08, 0.08, 0.05, 0.05, 0.5])
    return thetas, weights


DEFAULT_THETAS, DEFAULT_WEIGHTS = _default_menu()


def _check_menu(thetas, weights) -> tuple[np.ndarray, np.ndarray]:
    th = np.asarray(thetas, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if th.size == 0 or th.shape != w.shape:
        raise ValueError(f"need as many weights as thetas (>= 1), got {th.size} and {w.size}")
    if np.any(~np.isfinite(th)) or np.any(th <= 0) or np.any(th >= 1):
        raise ValueError(f"thetas must lie in (0, 1), got {th.tolist()}")
    if np.any(~np.isfinite(w)) or np.any(w <= 0) or w.sum() > 1.0 + 1e-12:
        raise ValueError(f"weights must be positive and sum to at most 1, got {w.tolist()} (sum {w.sum()})")
    return th, w


def log_evalue(s, n, t, thetas=DEFAULT_THETAS, weights=DEFAULT_WEIGHTS, side: str = "lower") -> np.ndarray:
    """ln E_n(t): the mixture e-process after ``s`` successes in ``n`` draws.

    ``side="lower"`` tests H0: p <= t with the bets q_k = 1 - theta_k (1 - t) (failure rate
    theta_k times the one allowed at t); ``side="upper"`` tests H0: p >= t with
    q_k = 1 - (1 - t) / theta_k (failure rate 1/theta_k times, bets with q_k <= 0 left out,
    which only lowers the mixture). Broadcasts ``s``, ``n`` (0 <= s <= n) and ``t`` in
    (0, 1). Under H0, P(sup_n E_n(t) >= 1/alpha) <= alpha (Ville). For s > 0 the lower
    side decreases in t and the upper side increases in t, so each rejects a half-line.
    """
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")
    s = np.asarray(s, dtype=np.float64)[..., None]
    n = np.asarray(n, dtype=np.float64)[..., None]
    t = np.asarray(t, dtype=np.float64)[..., None]
    th = np.asarray(thetas, dtype=np.float64)
    lw = np.log(np.asarray(weights, dtype=np.float64))
    ratio = th if side == "lower" else 1.0 / th  # alternative failure rate / (1 - t)
    fail = ratio * (1.0 - t)  # 1 - q_k
    # s ln(q / t) + (n - s) ln(ratio), with log1p for q and t near 1
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.log1p(-np.minimum(fail, 1.0)) - np.log(t)
        up = np.where(s > 0, s * up, 0.0)
        terms = np.where(fail < 1.0, lw + up + (n - s) * np.log(ratio), -np.inf)
    return logsumexp(terms, axis=-1)


class BernoulliCS:
    """Time-uniform lower and upper confidence bounds for a Bernoulli mean, vectorized.

    >>> cs = BernoulliCS(alpha=0.001)
    >>> cs.lower([100, 5000], [100, 5000])   # two streams, all successes
    array([0.9...,  0.99...])

    ``lower(s, n)`` is L_n and ``upper(s, n)`` is U_n of the module docstring, each at
    level ``alpha`` (so [L_n, U_n] holds for all n with probability >= 1 - 2 alpha; each
    side alone with >= 1 - alpha). ``rejects_below(s, n, t)`` is the exact test
    "E_n(t) >= 1/alpha" (certify p > t), equivalent to ``lower(s, n) > t`` up to the
    bisection's tolerance but without it. Bounds are conservative: the bisection returns
    a point where the test still rejects, never beyond the exact root.
    """

    def __init__(self, alpha: float, thetas: Sequence[float] | np.ndarray = DEFAULT_THETAS,
                 weights: Sequence[float] | np.ndarray = DEFAULT_WEIGHTS, iterations: int = 60) -> None:
        check_alpha(alpha)
        if int(iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.alpha = float(alpha)
        self.thetas, self.weights = _check_menu(thetas, weights)
        self.log_level = math.log(1.0 / self.alpha)
        self.iterations = int(iterations)

    @staticmethod
    def _counts(s, n) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(s, dtype=np.float64)
        n = np.asarray(n, dtype=np.float64)
        if np.any(n < 0) or np.any(s < 0) or np.any(s > n):
            raise ValueError("need 0 <= s <= n for the success counts s of n draws")
        return np.broadcast_arrays(s, n)

    def log_evalue(self, s, n, t, side: str = "lower") -> np.ndarray:
        """ln E_n(t) with this sequence's bets (see :func:`log_evalue`)."""
        return log_evalue(s, n, t, self.thetas, self.weights, side)

    def rejects_below(self, s, n, t) -> np.ndarray:
        """True where H0: p <= t is rejected at level alpha (E_n(t) >= 1/alpha): p > t shown."""
        s, n = self._counts(s, n)
        return self.log_evalue(s, n, t) >= self.log_level

    def rejects_above(self, s, n, t) -> np.ndarray:
        """True where H0: p >= t is rejected at level alpha: p < t shown."""
        s, n = self._counts(s, n)
        return self.log_evalue(s, n, t, "upper") >= self.log_level

    def lower(self, s, n) -> np.ndarray:
        """L_n: the time-uniform lower confidence bound on p (0 when nothing is rejected)."""
        s, n = self._counts(s, n)
        lo = np.zeros(s.shape)  # L = 0 is the vacuous bound, always valid
        hi = np.where(n > 0, s / np.maximum(n, 1.0), 0.0)  # E_n(s/n) <= 1: never rejected
        # bisection keeps the invariant "lo = 0 or E_n(lo) >= 1/alpha"; E_n(t) decreases in t
        for _ in range(self.iterations):
            mid = 0.5 * (lo + hi)
            rej = self.rejects_below(s, n, np.clip(mid, 1e-300, 1.0 - 1e-16)) & (s > 0)
            lo = np.where(rej, mid, lo)
            hi = np.where(rej, hi, mid)
        return lo

    def upper(self, s, n) -> np.ndarray:
        """U_n: the time-uniform upper confidence bound on p (1 when nothing is rejected)."""
        s, n = self._counts(s, n)
        hi = np.ones(s.shape)  # U = 1 is the vacuous bound
        lo = np.where(n > 0, s / np.maximum(n, 1.0), 1.0)
        # invariant "hi = 1 or E_n(hi) >= 1/alpha" on the upper side; it increases in t
        for _ in range(self.iterations):
            mid = 0.5 * (lo + hi)
            rej = self.rejects_above(s, n, np.clip(mid, 1e-300, 1.0 - 1e-16)) & (s < n)
            hi = np.where(rej, mid, hi)
            lo = np.where(rej, lo, mid)
        return hi
