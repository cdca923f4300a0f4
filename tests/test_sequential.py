"""Anytime-valid confidence sequences and the sequential certification built on them.

Validity is checked two ways: exactly, by dynamic programming over all paths for small n
(the probability that the lower bound *ever* exceeds p), and by seeded simulation of the
decision code at adversarial p_A (just below each grid threshold and exactly at it), where
a deliberately broken variant (a fixed-n Clopper-Pearson bound looked at after every
batch) must be caught by the same check.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothguard.smoothing import ABSTAIN, SmoothedClassifier, lower_confidence_bound
from smoothguard.smoothing.adaptive import (
    SequentialGridTest,
    certify_anytime,
    certify_sequential,
    cs_schedule,
    predict_sequential,
)
from smoothguard.smoothing.sequential import BernoulliCS, log_evalue

SIGMA = 0.25
GRID = [0.0, 0.25, 0.5, 0.75]
THRESHOLDS = np.array([0.5, *norm.cdf(np.array(GRID[1:]) / SIGMA)])


def _crossing_probability(p: float, n_max: int, rejects) -> float:
    """Exact P(exists n <= n_max: rejects(s_n, n)) for Bernoulli(p) draws, by dynamic
    programming over the success count of the paths that have not rejected yet."""
    alive = np.array([1.0])  # alive[s] = P(S_n = s and no rejection so far)
    crossed = 0.0
    for n in range(1, n_max + 1):
        nxt = np.zeros(n + 1)
        nxt[:-1] += alive * (1 - p)
        nxt[1:] += alive * p
        rej = rejects(np.arange(n + 1), np.full(n + 1, n))
        crossed += nxt[rej].sum()
        alive = np.where(rej, 0.0, nxt)
    return crossed


@pytest.mark.parametrize("p", [0.3, 0.5, 0.8, 0.95])
def test_lower_bound_ever_exceeds_p_at_most_alpha_exactly(p):
    cs = BernoulliCS(alpha=0.1)
    rate = _crossing_probability(p, 300, lambda s, n: cs.rejects_below(s, n, p))
    assert rate <= 0.1
    # the upper sequence: P(U_n < p ever) <= alpha as well
    rate_up = _crossing_probability(p, 300, lambda s, n: cs.rejects_above(s, n, p))
    assert rate_up <= 0.1


def test_positive_control_fixed_n_bound_at_every_look_is_caught_exactly():
    # Clopper-Pearson at level alpha is valid at one fixed n, not when looked at every n
    p, alpha = 0.5, 0.1
    broken = _crossing_probability(p, 300, lambda s, n: lower_confidence_bound(s, n, alpha) > p)
    assert broken > 2 * alpha
    fixed_once = _crossing_probability(p, 1, lambda s, n: lower_confidence_bound(s, n, alpha) > p)
    assert fixed_once <= alpha


def test_lower_matches_a_brute_force_scan_and_the_exact_test():
    cs = BernoulliCS(alpha=0.01)
    rng = np.random.default_rng(0)
    n = rng.integers(1, 400, size=60)
    s = rng.binomial(n, rng.uniform(0.2, 1.0, size=60))
    low = cs.lower(s, n)
    grid = np.linspace(1e-6, 1 - 1e-6, 20001)
    for si, ni, li in zip(s, n, low):
        rej = cs.rejects_below(np.full(grid.size, si), np.full(grid.size, ni), grid)
        # the rejected set is an initial segment [0, L): E_n(t) decreases in t
        assert not np.any(np.diff(rej.astype(int)) > 0)
        brute = grid[rej].max() if rej.any() else 0.0
        assert abs(li - brute) <= 1e-4 + 1e-12
        assert li <= si / ni
        if li > 0:
            assert cs.rejects_below(si, ni, li)  # conservative: the bound itself is rejected
    up = cs.upper(s, n)
    for si, ni, ui in zip(s[:20], n[:20], up[:20]):
        rej = cs.rejects_above(np.full(grid.size, si), np.full(grid.size, ni), grid)
        assert not np.any(np.diff(rej.astype(int)) < 0)  # a final segment (U, 1]
        brute = grid[~rej].max() if (~rej).any() else 1.0
        assert abs(ui - brute) <= 1e-4 + 1e-12
    assert (up >= s / n).all()


def test_unanimous_votes_certify_close_to_the_best_possible_sample_size():
    # any valid test needs n >= ln(1/alpha) / ln(1/t) unanimous votes to show p > t
    t, alpha = norm.cdf(3.0), 0.001
    best = math.log(1 / alpha) / math.log(1 / t)
    cs = BernoulliCS(alpha)
    n = np.arange(4000, 8000, 10)
    first = n[np.argmax(cs.rejects_below(n, n, t))]
    assert best <= first <= (math.log(1 / alpha) + math.log(2)) / math.log(1 / t) + 10


def test_validation_of_the_engine():
    with pytest.raises(ValueError, match="alpha must lie in"):
        BernoulliCS(alpha=1.5)
    with pytest.raises(ValueError, match="thetas must lie in"):
        BernoulliCS(0.1, thetas=[1.2], weights=[0.5])
    with pytest.raises(ValueError, match="sum to at most 1"):
        BernoulliCS(0.1, thetas=[0.5, 0.2], weights=[0.7, 0.7])
    with pytest.raises(ValueError, match="0 <= s <= n"):
        BernoulliCS(0.1).lower([5], [3])
    assert np.all(np.diff(log_evalue(50, 60, np.linspace(0.1, 0.9, 50))) < 0)


def _simulate(test: SequentialGridTest, p: np.ndarray, looks, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The decision code on simulated Bernoulli vote streams (binomial counts per look)."""
    rng = np.random.default_rng(seed)
    s = np.zeros(p.size)
    level = np.full(p.size, -1)
    used = np.zeros(p.size, dtype=np.int64)
    active = np.ones(p.size, dtype=bool)
    done = 0
    for look in looks:
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        s[idx] += rng.binomial(look - done, p[idx])
        done = look
        used[idx] = look
        level[idx], stop = test.update(s[idx], np.full(idx.size, float(look)), level[idx])
        active[idx[stop]] = False
    return level, used


class _BrokenGridTest(SequentialGridTest):
    """Positive control: the fixed-n Clopper-Pearson bound at level alpha at every look."""

    def certified(self, s, n):
        low = lower_confidence_bound(s, n, self.cs.alpha)
        return np.searchsorted(self.thresholds, np.atleast_1d(low), side="left") - 1


def test_grid_certificates_are_wrong_at_most_alpha_at_adversarial_p_and_the_broken_variant_is_caught():
    alpha, reps, n_max = 0.1, 1000, 5000
    looks = cs_schedule(n_max)
    # just below each threshold (certifying that level is wrong) and exact ties, where the
    # e-process's null p <= t still holds: the "wrong" event is then certifying the level above
    below = THRESHOLDS - 1e-3
    p_values = np.concatenate([below, THRESHOLDS])
    p = np.repeat(p_values, reps)
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)  # a rate above alpha + 3 sd fails
    for variant, seed in ((SequentialGridTest, 1), (_BrokenGridTest, 2)):
        test = variant(THRESHOLDS, alpha, n_max, futility_alpha=0.05)
        level, _ = _simulate(test, p, looks, seed)
        # wrong: a certified level whose threshold exceeds p (at a tie p = t_i, level i is the
        # true radius, so only a level above it is wrong)
        true_level = (p[:, None] >= THRESHOLDS[None, :]).sum(1) - 1
        rates = (level > true_level).reshape(len(p_values), reps).mean(1)
        if variant is SequentialGridTest:
            assert (rates <= bound).all(), rates
        else:
            # the broken variant must be caught by the same check at some p
            assert (rates > bound).any(), rates


def test_end_to_end_with_an_exact_p_a_from_thresholding_one_noise_coordinate():
    # f(x + d) = 0 when the first coordinate x_0 + d_0 < 1, else 1: p_A = Phi((1 - x_0) / sigma) exactly
    alpha, reps = 0.1, 120
    g = SmoothedClassifier(lambda b: (b[:, 0, 0, 0] >= 1.0).long(), 2, SIGMA)
    # just below the r = 0.25 threshold, exactly at the r = 0.5 one, and far above 0.75 (p_A = Phi(4))
    p_targets = np.array([THRESHOLDS[1] - 1e-3, THRESHOLDS[2], norm.cdf(4.0)])
    x = (1.0 - SIGMA * torch.as_tensor(norm.ppf(np.repeat(p_targets, reps)))).view(-1, 1, 1, 1).float()
    p = norm.cdf((1.0 - x.double().view(-1).numpy()) / SIGMA)  # exact, after float32 rounding
    res = certify_sequential(g, x, GRID[1:], n0=50, n_max=3000, alpha=alpha, batch_size=20_000,
                             seeds=list(range(len(p))))
    true_radius = SIGMA * norm.ppf(p)
    pred, radius = res.prediction.numpy(), res.radius.numpy()
    wrong = (pred != ABSTAIN) & ((pred != 0) | (radius > true_radius + 1e-12))
    assert wrong.reshape(3, reps).mean(1).max() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    # the clean images reach the top radius 0.75: it needs about (ln(1 / alpha) + ln 2) / ln(1 / Phi(3))
    # = 2,220 unanimous votes at alpha 0.1, under n_max = 3000 (a stray vote, P ~ 7 %, can cost it)
    clean = radius[-reps:]
    assert (clean == 0.75).mean() >= 0.85 and (clean >= 0.5).all()
    assert np.median(res.n_used.numpy()[-reps:]) < 2500
    # n_used is a look of the schedule and p_lower is the sequence's bound at the stop
    assert set(res.n_used.tolist()) <= set(cs_schedule(3000))
    assert (res.p_lower.numpy()[-reps:][clean == 0.75] >= THRESHOLDS[-1]).all()


def test_rows_do_not_depend_on_the_other_images_of_a_call():
    g = SmoothedClassifier(lambda b: (b[:, 0, 0, 0] >= 1.0).long(), 2, SIGMA)
    x = torch.tensor([0.3, 0.42, 0.45, 0.2]).view(4, 1, 1, 1)
    together = certify_sequential(g, x, GRID[1:], n_max=5000, alpha=0.01, seeds=[5, 6, 7, 8])
    alone = certify_sequential(g, x[1:2], GRID[1:], n_max=5000, alpha=0.01, seeds=[6])
    assert float(together.radius[1]) == float(alone.radius[0])
    assert int(together.n_used[1]) == int(alone.n_used[0])


def test_anytime_radius_is_valid_and_stops_within_tolerance():
    alpha, reps = 0.1, 150
    g = SmoothedClassifier(lambda b: (b[:, 0, 0, 0] >= 1.0).long(), 2, SIGMA)
    x = (1.0 - SIGMA * torch.as_tensor(norm.ppf(np.repeat([0.7, 0.95], reps)))).view(-1, 1, 1, 1).float()
    p = norm.cdf((1.0 - x.double().view(-1).numpy()) / SIGMA)
    res = certify_anytime(g, x, n0=50, budget=20_000, alpha=alpha, tolerance=0.02, batch_size=20_000,
                          seeds=list(range(len(p))))
    true_radius = SIGMA * norm.ppf(p)
    wrong = (res.prediction.numpy() != ABSTAIN) & (res.radius.numpy() > true_radius)
    assert wrong.reshape(2, reps).mean(1).max() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    # the radius approaches the true one; most images stop well before the budget
    assert np.median(res.radius.numpy()[reps:]) > true_radius[-1] - 0.05
    assert np.median(res.n_used.numpy()) < 20_000
    # tolerance 0 runs every image to the budget unless it can no longer grow at all
    tight = certify_anytime(g, x[:5], n0=50, budget=2000, alpha=alpha, tolerance=0.0, seeds=list(range(5)))
    loose = certify_anytime(g, x[:5], n0=50, budget=2000, alpha=alpha, tolerance=0.5, seeds=list(range(5)))
    assert (tight.n_used >= loose.n_used).all()
    with pytest.raises(ValueError, match="tolerance"):
        certify_anytime(g, x[:1], tolerance=-1.0)


def test_predict_sequential_returns_a_wrong_class_at_most_alpha_of_the_time():
    alpha, reps = 0.1, 200
    # two thresholded noise coordinates: class 0 when x_0 + d_0 < 1/2, else class 1 when
    # x_1 + d_1 < 1/2, else class 2; p_0 = Phi((1/2 - x_0) / sigma), p_1 = (1 - p_0) Phi((1/2 - x_1) / sigma)
    g = SmoothedClassifier(lambda b: torch.where(b[:, 0, 0, 0] < 0.5, 0, torch.where(b[:, 0, 0, 1] < 0.5, 1, 2)),
                           3, SIGMA)

    def image(p0, p1):
        x0 = 0.5 - SIGMA * norm.ppf(p0)
        x1 = 0.5 - SIGMA * norm.ppf(p1 / (1 - p0))
        return torch.tensor([x0, x1], dtype=torch.float32).view(1, 1, 2)

    # classes 0 and 1 tied at 0.4: g(x) is not unique, so returning either is an error
    tie, clear = image(0.4, 0.4), image(0.8, 0.15)
    x = torch.stack([tie] * reps + [clear] * 20)
    res = predict_sequential(g, x, n_max=5000, alpha=alpha, batch_size=20_000, seeds=list(range(reps + 20)))
    pred = res.prediction.numpy()
    assert (pred[:reps] != ABSTAIN).mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert (pred[reps:] == 0).all() and (res.n_used.numpy()[reps:] <= 500).all()
    # most tied images give up (futility) long before n_max
    assert np.median(res.n_used.numpy()[:reps]) < 5000
