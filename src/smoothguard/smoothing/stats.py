"""The statistics of randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019).

Exact binomial procedures only: Clopper-Pearson bounds from the Beta distribution and
the exact two-sided binomial test, both from SciPy (imported by the functions that use it:
``scipy.stats`` takes about a second to import, which every command's start-up would pay).
"""

from __future__ import annotations

import math

import numpy as np

from smoothguard.contract import check_alpha, check_int, check_sigma
from smoothguard.contract import check_alpha as _check_alpha


def lower_confidence_bound(n_a, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from n_a successes in n trials.

    Equals ``Beta.ppf(alpha; n_a, n - n_a + 1)`` and 0 when n_a = 0. With probability at
    least 1 - alpha over the n trials, the bound is <= the true p. Accepts scalars or
    arrays (vectorized).
    """
    from scipy.stats import beta

    _check_alpha(alpha)
    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n_a < 0) or np.any(n_a > n) or np.any(n < 1):
        raise ValueError("need 0 <= n_a <= n and n >= 1")
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, np.maximum(n_a, 1.0), n - n_a + 1.0)
    bound = np.where(n_a == 0, 0.0, bound)
    return float(bound) if bound.ndim == 0 else bound


def radius_from_bound(p_lower, sigma: float):
    """Certified l2 radius sigma * PhiInv(p_lower) (the p_B = 1 - p_A form of Cohen's
    Theorem 1); meaningful only for p_lower > 1/2, where it is positive."""
    from scipy.stats import norm

    p = np.asarray(p_lower, dtype=np.float64)
    r = sigma * norm.ppf(p)
    return float(r) if np.ndim(r) == 0 else r


def r_max(sigma: float, n: int, alpha: float) -> float:
    """Largest radius any CERTIFY run with n estimation samples can return:
    sigma * PhiInv(alpha ** (1 / n)) (reached when all n samples vote for one class)."""
    from scipy.stats import norm

    _check_alpha(alpha)
    n = check_int("n", n, minimum=1)
    return float(check_sigma(sigma) * norm.ppf(alpha ** (1.0 / n)))


def binom_pvalue(n_a: int, n_b: int) -> float:
    """Two-sided exact binomial test p-value of n_a successes in n_a + n_b trials at p = 1/2
    (the test in Cohen's PREDICT); 1.0 when there are no trials."""
    from scipy.stats import binomtest

    if n_a + n_b == 0:
        return 1.0
    return float(binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue)


def binom_pvalues(n_a, n_b) -> np.ndarray:
    """:func:`binom_pvalue` for arrays of counts at once (the same values: at p = 1/2 the
    two-sided exact test is min(1, 2 P(X >= max(n_a, n_b))) with X ~ Bin(n_a + n_b, 1/2))."""
    from scipy.stats import binom

    a = np.asarray(n_a, dtype=np.float64)
    b = np.asarray(n_b, dtype=np.float64)
    hi, n = np.maximum(a, b), a + b
    with np.errstate(invalid="ignore"):
        p = np.minimum(1.0, 2.0 * binom.sf(hi - 1.0, n, 0.5))
    return np.where(n > 0, p, 1.0)


def certified_accuracy_lower_bound(y_certified: int, m: int, alpha: float, rho: float = 0.001) -> float:
    """High-probability lower bound on certified accuracy (Cohen et al., Appendix D,
    Theorem 6 as printed): from m test points of which y_certified are certified-correct
    at a radius, with probability >= 1 - rho (and CERTIFY failure rate alpha),

        acc >= (Y/m - alpha - sqrt(2 alpha (1 - alpha) ln(1/rho) / m) - ln(1/rho) / (3m)) / (1 - alpha).

    (Cohen's analysis script drops the factor 2 and the 1/(1 - alpha); this does not.)
    """
    m = check_int("m", m, minimum=1)
    y_certified = check_int("y_certified", y_certified, minimum=0, maximum=m)
    rho = check_alpha(rho, "rho")
    log_term = math.log(1.0 / rho)
    value = y_certified / m - alpha - math.sqrt(2.0 * alpha * (1.0 - alpha) * log_term / m) - log_term / (3.0 * m)
    return value / (1.0 - alpha)
