"""Anytime-valid (sequential) certification at its exact decision boundaries (issue 24).

The e-process of ``smoothing/sequential.py`` is recomputed here by hand from its
definition (a weighted sum of likelihood ratios, written with plain ``math``), and the
vote counts come from a scripted base classifier, so the count at which the confidence
sequence first shows p_A > 1/2 (or > Phi(r / sigma)) is known exactly: one vote fewer
must abstain (or certify the smaller radius), one vote more must certify. The same for
the sequential PREDICT (pairwise e-process at (K - 1) / alpha) and for the Bonferroni
adaptive paths (each look at alpha / L).
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm

from smoothguard.smoothing import ABSTAIN, SmoothedClassifier
from smoothguard.smoothing.adaptive import (
    SequentialGridTest,
    certify_adaptive,
    certify_anytime,
    certify_sequential,
    predict_adaptive,
    predict_sequential,
)
from smoothguard.smoothing.sequential import DEFAULT_THETAS, DEFAULT_WEIGHTS, BernoulliCS, log_evalue

# the bet menu documented in sequential.py: failure-rate ratios theta and their weights
THETAS = [0.96, 0.92, 0.84, 0.68, 0.4, 0.15, 0.03, 1e-4]
WEIGHTS = [0.08, 0.08, 0.08, 0.08, 0.08, 0.05, 0.05, 0.5]


def hand_log_e(s, n, t, side="lower", thetas=THETAS, weights=WEIGHTS):
    """ln sum_k w_k (q_k / t)^s ((1 - q_k) / (1 - t))^(n - s), q_k = 1 - theta_k (1 - t)
    (lower side) or 1 - (1 - t) / theta_k (upper side, bets with q_k <= 0 dropped)."""
    logs = []
    for th, w in zip(thetas, weights):
        q = 1 - th * (1 - t) if side == "lower" else 1 - (1 - t) / th
        if q <= 0:
            continue
        logs.append(math.log(w) + s * math.log(q / t) + (n - s) * math.log((1 - q) / (1 - t)))
    if not logs:
        return -math.inf
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs))


def first_crossing(n, t, level):
    """The smallest s whose hand e-value at (s, n, t) reaches ``level`` (ln 1/alpha)."""
    return next(s for s in range(n + 1) if hand_log_e(s, n, t) >= level)


class Scripted:
    """Query-only base classifier answering a fixed label sequence, in order."""

    def __init__(self, *runs):
        self.labels = torch.cat([torch.full((c,), lab, dtype=torch.int64) for lab, c in runs])
        self.pos = 0

    def __call__(self, x):
        out = self.labels[self.pos:self.pos + x.shape[0]]
        assert out.shape[0] == x.shape[0], "script exhausted"
        self.pos += x.shape[0]
        return out


X = torch.zeros(1, 1, 2, 2)


def test_the_default_menu_and_the_mixture_are_the_documented_ones():
    from smoothguard.smoothing.sequential import _default_menu

    np.testing.assert_array_equal(DEFAULT_THETAS, THETAS)
    np.testing.assert_array_equal(DEFAULT_WEIGHTS, WEIGHTS)
    thetas, weights = _default_menu()  # the constants come from here (at import time)
    assert thetas.tolist() == THETAS and weights.tolist() == WEIGHTS
    assert thetas.dtype == weights.dtype == np.float64
    cs = BernoulliCS(0.01)
    for s, n, t in [(0, 10, 0.5), (3, 10, 0.2), (10, 10, 0.5), (95, 100, 0.9), (400, 400, 0.999),
                    (7, 50, 0.05), (1, 1, 0.3)]:
        for side in ("lower", "upper"):
            want = hand_log_e(s, n, t, side)
            got = float(log_evalue(s, n, t, side=side))
            assert got == pytest.approx(want, rel=1e-10, abs=1e-10), (s, n, t, side)
            assert float(cs.log_evalue(s, n, t, side)) == pytest.approx(want, rel=1e-10, abs=1e-10)
    # a custom menu reaches the formula too
    got = float(log_evalue(30, 40, 0.6, thetas=[0.5], weights=[1.0]))
    assert got == pytest.approx(hand_log_e(30, 40, 0.6, thetas=[0.5], weights=[1.0]), rel=1e-12)
    assert cs.log_level == pytest.approx(math.log(100.0), rel=1e-15) and cs.alpha == 0.01


@pytest.mark.parametrize("n,alpha", [(1000, 0.001), (400, 0.05)])
def test_rejects_and_bounds_switch_at_the_hand_computed_count(n, alpha):
    cs = BernoulliCS(alpha)
    level = math.log(1 / alpha)
    s_star = first_crossing(n, 0.5, level)
    assert not cs.rejects_below(s_star - 1, n, 0.5) and cs.rejects_below(s_star, n, 0.5)
    lo_below, lo_at = float(cs.lower(s_star - 1, n)), float(cs.lower(s_star, n))
    assert 0.45 < lo_below < 0.5 <= lo_at < 0.55
    # the bounds are the roots of the hand e-value: within the bisection's tolerance
    for s, lo in ((s_star - 1, lo_below), (s_star, lo_at)):
        assert hand_log_e(s, n, lo) >= level - 1e-9
        assert hand_log_e(s, n, lo + 1e-9) < level
    # upper side (bets on failure rates 1 / theta times the allowed one): U_n < 1/2 up to
    # the largest success count whose hand e-value crosses
    f_star = max(s for s in range(n + 1) if hand_log_e(s, n, 0.5, "upper") >= level)
    assert cs.rejects_above(f_star, n, 0.5) and not cs.rejects_above(f_star + 1, n, 0.5)
    up = float(cs.upper(f_star, n))
    assert up <= 0.5 and hand_log_e(f_star, n, up, "upper") >= level - 1e-9
    assert hand_log_e(f_star, n, up - 1e-9, "upper") < level
    # no successes: nothing is shown; all successes: nothing below 1 is excluded
    assert float(cs.lower(0, n)) == 0.0 and float(cs.upper(n, n)) == 1.0
    assert float(cs.lower(n, n)) < 1.0 and float(cs.upper(0, n)) > 0.0


@pytest.mark.parametrize("n,alpha", [(1000, 0.001), (600, 0.01)])
def test_certify_sequential_abstains_one_vote_below_the_crossing_and_certifies_at_it(n, alpha):
    n0 = 20
    s_star = first_crossing(n, 0.5, math.log(1 / alpha))
    for votes, certified in ((s_star - 1, False), (s_star, True)):
        g = SmoothedClassifier(Scripted((2, n0), (2, votes), (0, n - votes)), 3, 0.25)
        res = certify_sequential(g, X, [], n0=n0, n_max=n, alpha=alpha, batch_size=n, schedule=[n])
        assert int(res.prediction[0]) == (2 if certified else ABSTAIN)
        assert float(res.radius[0]) == 0.0
        assert int(res.n_used[0]) == n
        assert res.counts_selection[0].tolist() == [0, 0, n0]
        assert (float(res.p_lower[0]) >= 0.5) == certified
        assert float(res.p_lower[0]) == pytest.approx(float(BernoulliCS(alpha).lower(votes, n)), abs=1e-15)


def test_certify_sequential_grid_radius_switches_at_its_threshold_crossing():
    n, alpha, sigma, r = 1000, 0.001, 0.25, 0.25
    t = norm.cdf(r / sigma)
    s1 = first_crossing(n, t, math.log(1 / alpha))
    assert s1 - 1 >= first_crossing(n, 0.5, math.log(1 / alpha))  # one vote fewer still certifies r = 0
    for votes, radius in ((s1 - 1, 0.0), (s1, r)):
        g = SmoothedClassifier(Scripted((1, 10), (1, votes), (0, n - votes)), 2, sigma)
        res = certify_sequential(g, X, [r, 0.75], n0=10, n_max=n, alpha=alpha, batch_size=n, schedule=[n])
        assert int(res.prediction[0]) == 1
        assert float(res.radius[0]) == radius


def test_a_certified_level_is_kept_when_later_looks_have_fewer_votes():
    """The level is a running maximum over looks (Ville: E_n(t) crossing 1/alpha once is
    the whole error event), and an image stops at the top level or at n_max."""
    test = SequentialGridTest([0.5, 0.8, 0.95], 0.01, 10_000)
    level, stop = test.update(np.array([0.0, 100.0]), np.array([100.0, 100.0]), np.array([2, -1]))
    assert level.tolist() == [2, 1]  # 100 of 100 shows 0.8 but not 0.95 at alpha 0.01
    assert stop.tolist() == [True, False]
    level, stop = test.update(np.array([50.0]), np.array([10_000.0]), np.array([-1]))
    assert level.tolist() == [-1] and stop.tolist() == [True]  # n_max reached
    # certified() counts the rejected thresholds: -1 none, 0 only 1/2, ...
    assert test.certified(np.array([0.0, 70.0, 100.0]), np.array([100.0] * 3)).tolist() == [-1, 0, 1]


def test_reachable_is_the_hand_e_value_at_n_max_with_p_at_its_upper_bound():
    test = SequentialGridTest([0.5, 0.9], 0.01, 2000, futility_alpha=0.05)
    s, n = np.array([60.0, 80.0, 95.0]), np.array([100.0] * 3)
    u = test.futility.upper(s, n)
    want = [hand_log_e(si + ui * 1900, 2000, 0.9) >= math.log(100) for si, ui in zip(s, u)]
    assert test.reachable(s, n, np.array([0, 0, 0])).tolist() == want
    assert want == [False, False, True]
    assert not test.reachable(s, n, np.array([1, 1, 1])).any()  # already at the top level
    assert test.futility.alpha == 0.05 and test.cs.alpha == 0.01
    with pytest.raises(ValueError, match=r"^thresholds must be increasing, got \[0\.5, 0\.5\]$"):
        SequentialGridTest([0.5, 0.5], 0.01, 100)


@pytest.mark.parametrize("n,alpha", [(1000, 0.001), (500, 0.05)])
def test_certify_anytime_abstains_below_the_crossing_and_certifies_a_tiny_radius_at_it(n, alpha):
    n0, sigma = 20, 0.5
    s_star = first_crossing(n, 0.5, math.log(1 / alpha))
    for votes, certified in ((s_star - 1, False), (s_star, True)):
        g = SmoothedClassifier(Scripted((1, n0), (1, votes), (0, n - votes)), 2, sigma)
        res = certify_anytime(g, X, n0=n0, budget=n, alpha=alpha, batch_size=n, schedule=[n])
        low = float(BernoulliCS(alpha).lower(votes, n))
        assert float(res.p_lower[0]) == pytest.approx(low, abs=1e-15)
        assert int(res.prediction[0]) == (1 if certified else ABSTAIN)
        if certified:
            assert low > 0.5
            assert float(res.radius[0]) == pytest.approx(sigma * norm.ppf(low), rel=1e-9)
            assert 0.0 < float(res.radius[0]) < 0.02 * sigma
        else:
            assert float(res.radius[0]) == 0.0


def test_certify_anytime_keeps_the_best_bound_over_looks():
    """A bound reached at an early look is kept although the later counts are worse."""
    n, alpha, sigma = 1000, 0.01, 0.25
    g = SmoothedClassifier(Scripted((0, 10), (0, 200), (1, 800)), 2, sigma)
    res = certify_anytime(g, X, n0=10, budget=n, alpha=alpha, batch_size=n, schedule=[200, n], tolerance=0.0)
    early = float(BernoulliCS(alpha).lower(200, 200))
    assert early > 0.9
    assert int(res.n_used[0]) in (200, n)
    assert float(res.p_lower[0]) == pytest.approx(early, abs=1e-15)
    assert int(res.prediction[0]) == 0
    assert float(res.radius[0]) == pytest.approx(sigma * norm.ppf(early), rel=1e-9)


@pytest.mark.parametrize("k", [2, 3])
def test_predict_sequential_answers_exactly_from_the_pairwise_crossing(k):
    """The leader is returned once the e-process of (leader vs runner-up) at t = 1/2 reaches
    (K - 1) / alpha; one vote fewer abstains. The reported p-value is (K - 1) / E."""
    alpha, b = 0.01, 100
    level = math.log((k - 1) / alpha)
    a_star = next(a for a in range(b, 10 * b) if hand_log_e(a, a + b, 0.5) >= level)
    for a, decided in ((a_star - 1, False), (a_star, True)):
        n = a + b
        g = SmoothedClassifier(Scripted((1, a), (0, b)), k, 0.25)
        res = predict_sequential(g, X, n_max=n, alpha=alpha, batch_size=n, schedule=[n])
        assert int(res.prediction[0]) == (1 if decided else ABSTAIN)
        assert res.counts[0].tolist()[:2] == [b, a] and int(res.n_used[0]) == n
        want_p = min(1.0, (k - 1) * math.exp(-hand_log_e(a, n, 0.5)))
        assert float(res.p_value[0]) == pytest.approx(want_p, rel=1e-9)
        assert (float(res.p_value[0]) <= alpha) == decided


def test_bonferroni_paths_test_each_look_at_alpha_over_the_number_of_looks():
    """With two looks each look runs at alpha / 2: a count whose Clopper-Pearson bound
    reaches 1/2 at alpha but not at alpha / 2 abstains (certify_adaptive), and PREDICT's
    top-two p-value must be <= alpha / 2 (predict_adaptive)."""
    alpha, n = 0.01, 1000
    n_a = np.arange(1, n + 1)
    at_half = beta_dist.ppf(alpha / 2, n_a, n - n_a + 1)
    s_half = int(n_a[np.argmax(at_half >= 0.5)])  # first count certifying at alpha / 2
    assert beta_dist.ppf(alpha, s_half - 1, n - s_half + 2) >= 0.5  # s_half - 1 would at alpha
    for votes, certified in ((s_half - 1, False), (s_half, True)):
        # the first look (100 samples) sees 50/50: undecided, the image goes on to n
        g = SmoothedClassifier(Scripted((1, 10), (1, 50), (0, 50), (1, votes - 50), (0, n - votes - 50)), 2, 0.25)
        res = certify_adaptive(g, X, [], n0=10, n_max=n, alpha=alpha, batch_size=n, schedule=[100, n],
                               futility_alpha=1e-6)
        assert int(res.n_used[0]) == n
        assert int(res.prediction[0]) == (1 if certified else ABSTAIN)
        assert float(res.p_lower[0]) == pytest.approx(beta_dist.ppf(alpha / 2, votes, n - votes + 1), rel=1e-12)

    # PREDICT: the smallest leader count with p <= alpha / 2 against 1000 - a
    pv = [binomtest(a, n, 0.5).pvalue for a in range(500, n)]
    a_half = 500 + next(i for i, p in enumerate(pv) if p <= alpha / 2)
    assert pv[a_half - 1 - 500] <= alpha  # one vote fewer passes at alpha, not at alpha / 2
    for a, decided in ((a_half - 1, False), (a_half, True)):
        g = SmoothedClassifier(Scripted((1, 50), (0, 50), (1, a - 50), (0, n - a - 50)), 2, 0.25)
        res = predict_adaptive(g, X, n_max=n, alpha=alpha, batch_size=n, schedule=[100, n], futility_alpha=1e-6)
        assert int(res.n_used[0]) == n
        assert int(res.prediction[0]) == (1 if decided else ABSTAIN)
        assert float(res.p_value[0]) == pytest.approx(binomtest(a, n, 0.5).pvalue, rel=1e-9)


def test_engine_refusals_name_the_problem_whole():
    def refused(fn, message):
        with pytest.raises(ValueError) as info:
            fn()
        assert str(info.value) == message

    refused(lambda: BernoulliCS(0.1, thetas=[], weights=[]), "need as many weights as thetas (>= 1), got 0 and 0")
    refused(lambda: BernoulliCS(0.1, thetas=[0.5, 0.2], weights=[0.5]),
            "need as many weights as thetas (>= 1), got 2 and 1")
    for bad in ([1.0], [0.0], [float("nan")], [-0.5]):
        refused(lambda: BernoulliCS(0.1, thetas=bad, weights=[0.5]), f"thetas must lie in (0, 1), got {bad}")
    for bad in ([0.0, 0.5], [-0.1, 0.5], [float("inf"), 0.1], [float("nan"), 0.1]):
        refused(lambda: BernoulliCS(0.1, thetas=[0.5, 0.2], weights=bad),
                f"weights must be positive and sum to at most 1, got {bad} (sum {sum(bad)})")
    refused(lambda: BernoulliCS(0.1, thetas=[0.5, 0.2], weights=[0.5, 0.5 + 1e-9]),
            f"weights must be positive and sum to at most 1, got {[0.5, 0.5 + 1e-9]} (sum {0.5 + 0.5 + 1e-9})")
    refused(lambda: BernoulliCS(0.1, iterations=0), "iterations must be >= 1, got 0")
    refused(lambda: BernoulliCS(0.0), "alpha must lie in (0, 1); got 0.0")
    refused(lambda: log_evalue(1, 2, 0.5, side="both"), "side must be 'lower' or 'upper', got 'both'")
    for s, n in ((5, 3), (-1, 3), (0, -1)):
        refused(lambda: BernoulliCS(0.1).upper(s, n), "need 0 <= s <= n for the success counts s of n draws")
        refused(lambda: BernoulliCS(0.1).rejects_above(s, n, 0.5),
                "need 0 <= s <= n for the success counts s of n draws")
    # boundaries that are allowed: weights summing to exactly 1, one bet, one iteration
    cs = BernoulliCS(0.1, thetas=[0.5, 0.25], weights=[0.75, 0.25], iterations=1)
    assert cs.thetas.tolist() == [0.5, 0.25] and cs.weights.tolist() == [0.75, 0.25] and cs.iterations == 1


def test_the_bounds_are_a_bisection_of_the_stated_number_of_steps():
    """lower() bisects [0, s/n] and upper() [s/n, 1]: after k steps the bound is a multiple
    of 2^-k of that interval, on the side the exact test rejects."""
    for k, want in ((1, 0.5), (2, 0.75), (3, 0.875)):
        cs = BernoulliCS(0.01, iterations=k)
        # 100 of 100 rejects t = 0.5, 0.75, 0.875 (E_100(t) >= 100), so lo climbs each step
        assert float(cs.lower(100, 100)) == want
        assert float(cs.upper(0, 100)) == 1 - want
    cs = BernoulliCS(0.01, iterations=3)
    lo, up = float(cs.lower(50, 100)), float(cs.upper(50, 100))
    assert lo == 0.3125 and up == 0.6875  # grid steps 0.5 / 8 from 0 and from 1
    assert cs.rejects_below(50, 100, lo) and not cs.rejects_below(50, 100, lo + 0.5 / 8)
    assert cs.rejects_above(50, 100, up) and not cs.rejects_above(50, 100, up - 0.5 / 8)
    deep = BernoulliCS(0.01)
    assert deep.iterations == 60
    # no draws: nothing is known, on either side; no successes: L = 0; no failures: U = 1
    assert float(deep.lower(0, 0)) == 0.0 and float(deep.upper(0, 0)) == 1.0
    assert float(deep.lower(0, 500)) == 0.0 and float(deep.upper(500, 500)) == 1.0
    # the upper side's bets need q = 1 - (1 - t) / theta > 0, i.e. t > 1 - max(theta) = 0.04
    assert 0.04 <= float(deep.upper(0, 500)) < 0.041 and 0.98 < float(deep.lower(500, 500)) < 1.0
    # one draw, one success: already some t > 0 is excluded (the theta = 1e-4 bet alone
    # reaches 1/alpha near t = alpha / 2, the others add to it), and the bound is the hand e-value's root
    one = float(BernoulliCS(0.1).lower(1, 1))
    assert 0.05 < one < 0.08
    assert hand_log_e(1, 1, one) >= math.log(10) - 1e-9 and hand_log_e(1, 1, one + 1e-9) < math.log(10)
    # vectorized over streams, shapes broadcast
    lo = deep.lower([0, 250, 500], 500)
    assert lo.shape == (3,) and lo[0] == 0.0 and 0.4 < lo[1] < 0.5 and lo[2] > 0.98
    assert deep.rejects_below(np.array([[500], [250]]), 500, np.array([0.5, 0.9])).tolist() == [[True, True],
                                                                                                 [False, False]]


# ----------------------------------------------------------------------------- the procedures' API
PROCEDURES = [certify_adaptive, certify_sequential, certify_anytime, predict_adaptive, predict_sequential]


def test_documented_defaults_of_the_procedures():
    """Cohen et al.'s n = 100,000 and alpha = 0.001, n0 = 100, forward batches of 400 and
    futility at 0.05; certify_anytime's sample budget and radius tolerance 0.01."""
    import inspect

    for fn in PROCEDURES:
        p = inspect.signature(fn).parameters
        assert p["alpha"].default == 0.001 and p["batch_size"].default == 400, fn.__name__
        assert p["futility_alpha"].default == 0.05, fn.__name__
        assert p[("budget" if fn is certify_anytime else "n_max")].default == 100_000, fn.__name__
        if "n0" in p:
            assert p["n0"].default == 100, fn.__name__
    assert inspect.signature(certify_anytime).parameters["tolerance"].default == 0.01


def _refused(fn, message):
    with pytest.raises(ValueError) as info:
        fn()
    assert str(info.value) == message


def test_the_procedures_refuse_bad_arguments_naming_them():
    g = SmoothedClassifier(Scripted((0, 10)), 2, 0.25)
    for fn, extra in ((certify_sequential, dict(radii=[])), (predict_sequential, {})):
        _refused(lambda: fn(g, X, n_max=0, **extra), "n_max must be an integer >= 1; got 0")
        _refused(lambda: fn(g, X, n_max=100, futility_alpha=0.0, **extra), "futility_alpha must lie in (0, 1); got 0.0")
        _refused(lambda: fn(g, X, n_max=100, alpha=1.0, **extra), "alpha must lie in (0, 1); got 1.0")
    for fn, extra in ((certify_adaptive, dict(radii=[])), (predict_adaptive, {})):
        _refused(lambda: fn(g, X, n_max=100, futility_alpha=1.0, **extra), "futility_alpha must lie in (0, 1); got 1.0")
        _refused(lambda: fn(g, X, n_max=100, alpha=0, **extra), "alpha must lie in (0, 1); got 0")
    _refused(lambda: certify_anytime(g, X, budget=0), "budget must be an integer >= 1; got 0")
    _refused(lambda: certify_anytime(g, X, budget=100, futility_alpha=2.0), "futility_alpha must lie in (0, 1); got 2.0")
    _refused(lambda: certify_anytime(g, X, budget=100, n0=0), "n0 must be an integer >= 1; got 0")
    _refused(lambda: certify_sequential(g, X, [], n0=0, n_max=100), "n0 must be an integer >= 1; got 0")
    _refused(lambda: certify_adaptive(g, X, [], n0=0, n_max=100), "n0 must be an integer >= 1; got 0")
    # schedules: strictly increasing, positive, ending at n_max (budget)
    for bad in ([100, 100, 200], [200, 100], [0, 200], [100, 150]):
        _refused(lambda: predict_sequential(g, X, n_max=200, schedule=bad),
                 "the schedule must be increasing positive sample counts ending at n_max=200")
        _refused(lambda: certify_anytime(g, X, budget=200, schedule=bad),
                 "the schedule must be increasing positive sample counts ending at budget=200")
        msg = f"the schedule must be increasing positive sample counts, got {bad}"
        if bad == [100, 150]:
            msg = "the schedule must end at n_max=200, got 150"
        _refused(lambda: predict_adaptive(g, X, n_max=200, schedule=bad), msg)
        _refused(lambda: certify_adaptive(g, X, [], n_max=200, schedule=bad), msg)
    _refused(lambda: certify_sequential(g, X, [], n_max=200, schedule=[100, 150]),
             "the schedule must be increasing positive sample counts ending at n_max=200, got [100, 150]...[150]")
    cs = BernoulliCS(0.1)
    _refused(lambda: certify_sequential(g, X, [], n_max=100, alpha=0.01, cs=cs),
             "the confidence sequence has alpha 0.1, the call 0.01")
    _refused(lambda: certify_anytime(g, X, budget=100, alpha=0.01, cs=cs),
             "the confidence sequence has alpha 0.1, the call 0.01")
    _refused(lambda: certify_anytime(g, X, budget=100, tolerance=-0.5),
             "tolerance must be a finite radius >= 0, got -0.5")


MENU = dict(thetas=[0.5], weights=[1.0])  # one bet: failure rate half the allowed one


@pytest.mark.parametrize("k", [2, 3])
def test_predict_sequential_bets_with_the_given_sequence_at_the_pair_level(k):
    """A custom sequence's menu is used (at alpha / (K - 1) per pair) for deciding and for
    futility; the crossing count differs from the default menu's."""
    alpha, b = 0.01, 100
    level = math.log((k - 1) / alpha)
    a_star = next(a for a in range(b, 10 * b) if hand_log_e(a, a + b, 0.5, **MENU) >= level)
    assert a_star != next(a for a in range(b, 10 * b) if hand_log_e(a, a + b, 0.5) >= level)
    for a, decided in ((a_star - 1, False), (a_star, True)):
        n = a + b
        g = SmoothedClassifier(Scripted((1, a), (0, b)), k, 0.25)
        res = predict_sequential(g, X, n_max=n, alpha=alpha, batch_size=n, schedule=[n],
                                 cs=BernoulliCS(0.3, **MENU))
        assert int(res.prediction[0]) == (1 if decided else ABSTAIN)
        assert float(res.p_value[0]) == pytest.approx(min(1.0, (k - 1) * math.exp(-hand_log_e(a, n, 0.5, **MENU))),
                                                      rel=1e-9)


def test_certify_sequential_and_anytime_bet_with_the_given_sequence():
    n, alpha = 600, 0.05
    s_star = first_crossing_menu = next(s for s in range(n + 1) if hand_log_e(s, n, 0.5, **MENU) >= math.log(20))
    assert s_star != first_crossing(n, 0.5, math.log(20))
    for votes, certified in ((s_star - 1, False), (s_star, True)):
        g = SmoothedClassifier(Scripted((1, 10), (1, votes), (0, n - votes)), 2, 0.25)
        res = certify_sequential(g, X, [], n0=10, n_max=n, alpha=alpha, batch_size=n, schedule=[n],
                                 cs=BernoulliCS(alpha, **MENU))
        assert int(res.prediction[0]) == (1 if certified else ABSTAIN)
        g = SmoothedClassifier(Scripted((1, 10), (1, votes), (0, n - votes)), 2, 0.25)
        res = certify_anytime(g, X, n0=10, budget=n, alpha=alpha, batch_size=n, schedule=[n],
                              cs=BernoulliCS(alpha, **MENU))
        assert int(res.prediction[0]) == (1 if certified else ABSTAIN)
        assert float(res.p_lower[0]) == pytest.approx(float(BernoulliCS(alpha, **MENU).lower(votes, n)), abs=1e-15)
    del first_crossing_menu


def _stops_by_the_rule(n1, n2, look, n_max, alpha, k, futility_alpha=0.05):
    """predict_sequential's documented stop at a look: decided (the pair's e-value reaches
    (K - 1) / alpha), hopeless (with the leader's share of the top two at its anytime upper
    bound at futility_alpha, n_max samples would not decide) or n_max reached."""
    level = math.log((k - 1) / alpha)
    m = n1 + n2
    decided = hand_log_e(n1, m, 0.5) >= level
    share = float(BernoulliCS(futility_alpha).upper(n1, m))
    m_end = m * n_max / look
    hopeless = hand_log_e(n1 + share * (m_end - m), m_end, 0.5) < level
    return decided, hopeless or look >= n_max


def test_predict_sequential_accumulates_looks_and_stops_by_its_rule():
    """Counts add up over looks; an image stops at the first look where it is decided or
    hopeless (checked against the rule computed by hand), answering the leader only when
    decided; the p-value is (K - 1) / E capped at 1."""
    alpha, k = 0.01, 3
    cases = {  # name: label runs per look (class, count)
        "late": [[(1, 60), (0, 40)], [(1, 90), (0, 10)], [(1, 2800)]],  # decided at look 2
        "tie": [[(1, 50), (0, 50)], [(1, 50), (0, 50)], [(1, 1400), (0, 1400)]],
        "lopsided": [[(1, 100)], [(1, 100)], [(1, 2800)]],  # decided at look 1
        "hopeless": [[(1, 50), (0, 50)], [(1, 100)], [(1, 100)]],  # with n_max 300: gives up at look 1
        "hopeful": [[(1, 55), (0, 45)], [(1, 100)], [(1, 100)]],
    }
    for name, runs in cases.items():
        looks = [100, 200, 300] if name in ("hopeless", "hopeful") else [100, 200, 3000]
        n_max = looks[-1]
        g = SmoothedClassifier(Scripted(*[r for look in runs for r in look]), k, 0.25)
        res = predict_sequential(g, X, n_max=n_max, alpha=alpha, batch_size=5000, schedule=looks)
        assert res.counts.dtype == res.n_used.dtype == res.prediction.dtype == torch.int64
        assert res.seconds.shape == (1,) and float(res.seconds[0]) >= 0
        n1 = n2 = 0
        for j, look in enumerate(looks):
            for c, cnt in runs[j]:
                n1, n2 = (n1 + cnt, n2) if c == 1 else (n1, n2 + cnt)
            decided, stop = _stops_by_the_rule(max(n1, n2), min(n1, n2), look, n_max, alpha, k)
            if decided or stop:
                break
        assert int(res.n_used[0]) == look, name
        assert res.counts[0].tolist() == [n2, n1, 0], name
        assert int(res.prediction[0]) == (1 if decided else ABSTAIN), name
        want_p = min(1.0, (k - 1) * math.exp(-hand_log_e(max(n1, n2), n1 + n2, 0.5)))
        assert float(res.p_value[0]) == pytest.approx(want_p, rel=1e-9), name
        if name == "late":
            assert look == 200 and decided
        if name == "tie":
            assert not decided and float(res.p_value[0]) == 1.0  # E < 1 at an even split: p capped at 1
        if name == "lopsided":
            assert look == 100 and decided
        if name == "hopeless":
            assert look == 100 and not decided  # stopped by futility, before n_max
        if name == "hopeful":
            assert look > 100


def _coin(z):
    """Class 0 when the first noisy coordinate is below 0 (x = 0: a fair coin), class 1 else."""
    return (z.flatten(1)[:, 0] >= 0).long()


@pytest.mark.parametrize("proc", ["predict_sequential", "certify_anytime", "certify_sequential"])
def test_seeds_generators_single_images_and_on_done_reach_the_procedure(proc):
    fn = {"predict_sequential": lambda g, x, **kw: predict_sequential(g, x, n_max=400, alpha=0.1, **kw),
          "certify_anytime": lambda g, x, **kw: certify_anytime(g, x, n0=10, budget=400, alpha=0.1, **kw),
          "certify_sequential": lambda g, x, **kw: certify_sequential(g, x, [0.1], n0=10, n_max=400, alpha=0.1,
                                                                      **kw)}[proc]
    g = SmoothedClassifier(_coin, 2, 1.0)
    x = torch.zeros(2, 3, 2, 2)

    def counts(r):
        return (r.counts if hasattr(r, "counts") else r.counts_selection).tolist(), r.n_used.tolist()

    a, b, c = (fn(g, x, seeds=s, schedule=[100, 400]) for s in ([1, 2], [1, 2], [4, 5]))
    assert counts(a) == counts(b) and counts(a)[0][0] != counts(c)[0][0] and counts(a)[0][1] != counts(c)[0][1]
    ga, gb = (fn(g, x, generator=torch.Generator().manual_seed(5), schedule=[100, 400]) for _ in range(2))
    assert counts(ga) == counts(gb)
    # one image (C, H, W) with three channels: a batch of one
    one = fn(g, x[0], seeds=[1], schedule=[100, 400])
    assert one.prediction.shape == (1,) and counts(one)[0][0] == counts(b)[0][0]
    # on_done hears of every image once, with its final row
    heard = []
    res = fn(g, x, seeds=[1, 2], schedule=[100, 400], on_done=lambda pos, r: heard.append((pos.tolist(), r)))
    assert sorted(p for pos, _ in heard for p in pos) == [0, 1]
    for pos, r in heard:
        assert r.prediction.tolist() == res.prediction[pos].tolist()
        assert r.n_used.tolist() == res.n_used[pos].tolist()
    # the default schedule when none is given: the anytime looks of cs_schedule
    from smoothguard.smoothing.adaptive import cs_schedule

    assert set(fn(g, x, seeds=[1, 2]).n_used.tolist()) <= set(cs_schedule(400)) == {100, 200, 300, 400}
    # a schedule may start at a single sample
    assert int(fn(g, x[:1], seeds=[1], schedule=[1, 400]).n_used[0]) in (1, 400)


def test_anytime_tolerance_must_be_finite():
    g = SmoothedClassifier(_coin, 2, 1.0)
    _refused(lambda: certify_anytime(g, X, budget=100, tolerance=math.inf),
             "tolerance must be a finite radius >= 0, got inf")
    _refused(lambda: certify_anytime(g, X, budget=100, tolerance=math.nan),
             "tolerance must be a finite radius >= 0, got nan")
    assert certify_anytime(g, X, budget=100, tolerance=0, seeds=[0]).prediction.shape == (1,)


def test_cs_schedule_looks_every_step_then_every_few_percent():
    from smoothguard.smoothing.adaptive import cs_schedule

    assert cs_schedule(50) == [50] and cs_schedule(100) == [100] and cs_schedule(250) == [100, 200, 250]
    dense = list(range(100, 10_001, 100))
    assert cs_schedule(10_000) == dense
    # after 10,000: about 5 % more each look, in multiples of 100 (10,500, 11,000, 11,600, ...)
    assert cs_schedule(12_000) == dense + [10_500, 11_000, 11_600, 12_000]
    assert cs_schedule(1000, step=300, dense_until=600, growth=2.0) == [300, 600, 1000]
    assert cs_schedule(700, step=300, dense_until=300, growth=1.01) == [300, 600, 700]  # at least one step
    big = cs_schedule(100_000)
    assert big[-1] == 100_000 and all(b > a for a, b in zip(big, big[1:])) and len(big) < 160
    for kw, got in ((dict(step=0), "0 and 1.05"), (dict(growth=1.0), "100 and 1.0")):
        _refused(lambda: cs_schedule(1000, **kw), f"need step >= 1 and growth > 1, got {got}")
    _refused(lambda: cs_schedule(0), "n_max must be an integer >= 1; got 0")


def test_default_selection_size_and_forward_batch():
    """n0 = 100 selection samples and forward batches of at most 400 when not given."""
    sizes = []

    def coin(z):
        sizes.append(z.shape[0])
        return _coin(z)

    g = SmoothedClassifier(coin, 2, 1.0)
    for res in (certify_anytime(g, X, budget=1000, schedule=[1000], seeds=[0]),
                certify_sequential(g, X, [0.1], n_max=1000, schedule=[1000], seeds=[0])):
        assert int(res.counts_selection.sum()) == 100
    assert max(sizes) == 400
    sizes.clear()
    predict_sequential(g, X, n_max=1000, schedule=[1000], seeds=[0])
    assert max(sizes) == 400
