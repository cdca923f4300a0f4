"""Property tests aimed at mutants that survived scripts/mutation.py's sequential target (issue 24).

The confidence sequence's bounds at the smallest sample sizes (n = 1, 2, 3), where the
bisection's start and the "no success / no failure" rules decide, and at levels alpha far
from the usual 0.001 (up to 0.9, where one success already shows p > 1/2): each bound
must be the root of the e-value written out by hand (``hand_log_e`` of
test_mutation_sequential.py), from the conservative side.
"""

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from smoothguard.smoothing import sequential
from smoothguard.smoothing.sequential import BernoulliCS
from test_mutation_sequential import THETAS, WEIGHTS, hand_log_e

CASES = [(0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (1, 3), (2, 3), (3, 3)]


def _hand_lower(s, n, alpha):
    """sup{t in (0, s/n): E_n(t) >= 1/alpha} (the lower side decreases in t); 0 if none."""
    level = math.log(1 / alpha)
    if s == 0:
        return 0.0
    f = lambda t: hand_log_e(s, n, t) - level  # noqa: E731
    hi = s / n if s < n else 1 - 1e-9
    if f(1e-300) < 0:
        return 0.0
    return hi if f(hi) >= 0 else brentq(f, 1e-300, hi, xtol=1e-15, rtol=1e-14)


def _hand_upper(s, n, alpha):
    """inf{t in (s/n, 1): E_n^upper(t) >= 1/alpha} (increasing in t); 1 if none."""
    level = math.log(1 / alpha)
    if s == n:
        return 1.0
    f = lambda t: hand_log_e(s, n, t, side="upper") - level  # noqa: E731
    lo = s / n if s > 0 else 1e-300
    if f(1 - 1e-9) < 0:
        return 1.0
    return lo if f(lo) >= 0 else brentq(f, lo, 1 - 1e-9, xtol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("alpha", [0.01, 0.3, 0.9])
def test_bounds_after_one_to_three_draws_are_the_roots_of_the_hand_e_value(alpha):
    cs = BernoulliCS(alpha)
    s = np.array([c[0] for c in CASES])
    n = np.array([c[1] for c in CASES])
    lower, upper = cs.lower(s, n), cs.upper(s, n)
    for i, (si, ni) in enumerate(CASES):
        want_lo, want_up = _hand_lower(si, ni, alpha), _hand_upper(si, ni, alpha)
        # conservative (never beyond the exact root) and within the bisection's resolution
        assert want_lo - 1e-9 <= lower[i] <= want_lo + 1e-12, (alpha, si, ni, lower[i], want_lo)
        assert want_up - 1e-12 <= upper[i] <= want_up + 1e-9, (alpha, si, ni, upper[i], want_up)
    # one success in one draw shows p > 0 at every level (one failure: p < 1); at
    # alpha = 0.9 one success even shows p > 1/2
    assert lower[CASES.index((1, 1))] > 0
    assert upper[CASES.index((0, 1))] < 1
    if alpha == 0.9:
        assert lower[CASES.index((1, 1))] > 0.5


def test_default_menu_builds_the_documented_bets():
    """The module docstring's menu: gaps 1 - theta = 0.04 ... 0.6 at 0.08 each, 0.15 and 0.03
    at 0.05 each, theta = 1e-4 with half the weight (the import-time constants are what
    ``_default_menu`` builds, so the function itself is checked here)."""
    thetas, weights = sequential._default_menu()
    assert thetas.tolist() == THETAS and weights.tolist() == WEIGHTS
    assert sequential.DEFAULT_THETAS.tolist() == THETAS and sequential.DEFAULT_WEIGHTS.tolist() == WEIGHTS
    assert math.isclose(weights.sum(), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_log_evalue_is_float64_whatever_the_input_dtypes(side):
    """Counts, levels and the bet menu given as float32 arrays give the float64 answer of
    the same values (to 1e-12): the e-value is never computed at float32 precision."""
    s = np.array([0, 3, 40, 97, 100])
    n = np.full(5, 100)
    t = np.array([0.3, 0.61, 0.77, 0.9, 0.999], dtype=np.float32)
    th = np.asarray(sequential.DEFAULT_THETAS, dtype=np.float32)
    w = np.asarray(sequential.DEFAULT_WEIGHTS, dtype=np.float32)
    want = sequential.log_evalue(s, n, t.astype(np.float64), th.astype(np.float64), w.astype(np.float64), side)
    got = sequential.log_evalue(s.astype(np.float32), n.astype(np.float32), t, th, w, side)
    assert got.dtype == np.float64
    finite = np.isfinite(want)
    assert finite.sum() >= 4
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12, atol=0)


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_log_evalue_edges_raise_no_floating_point_warnings(side):
    """Bets that may not be placed (failure rate >= 1: log1p(-1)) and s = 0 (0 * -inf) are
    excluded by masks; the masked arithmetic must not leak RuntimeWarnings to the user."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sequential.log_evalue([0, 0, 5, 5], [5, 5, 5, 5], [1e-9, 0.999999, 1e-9, 0.999999],
                                    np.array([0.5, 1.0, 2.0, 1e9]), np.full(4, 0.25), side)
    assert out.shape == (4,) and not np.isnan(out).any()
