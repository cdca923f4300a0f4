"""Property tests aimed at mutants that survived scripts/mutation.py's adaptive target (issue 24).

The sequential procedures of ``smoothing/adaptive.py`` checked where the other tests did not
look: the grid schedule's moved looks against the Clopper-Pearson bound of unanimous counts,
the defaults against the command line's, the schedule checks and their messages, per-image
noise streams (a row does not depend on its batch), each image's share of the sampler's
calls, the callbacks, the result types, and the anytime procedure's stopping rule against
the rule written out with the confidence sequence.
"""

import inspect
import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothguard import defaults
from smoothguard.cli import build_parser
from smoothguard.smoothing import ABSTAIN, SmoothedClassifier
from smoothguard.smoothing.adaptive import (
    certify_adaptive,
    certify_anytime,
    certify_sequential,
    cs_schedule,
    default_schedule,
    grid_level,
    grid_schedule,
    grid_thresholds,
    predict_adaptive,
    predict_sequential,
    upper_confidence_bound,
)
from smoothguard.smoothing.core import NOISE_BLOCK
from smoothguard.smoothing.sequential import BernoulliCS
from smoothguard.smoothing.stats import lower_confidence_bound
from test_mutation_sequential import Scripted, X

PROCEDURES = [certify_adaptive, certify_sequential, certify_anytime, predict_adaptive, predict_sequential]


# --- the grid schedule ----------------------------------------------------------------------

def _t_first_certified_at(n, level):
    """A p_A threshold that unanimous counts first certify at n samples (a multiple of 100):
    the Clopper-Pearson bound of m of m is level^(1/m)."""
    return level ** (1.0 / (n - NOISE_BLOCK / 2))


@pytest.mark.parametrize("n_max, alpha, growth", [(100_000, 0.001, 1.5), (20_000, 0.01, 2.0), (5_000, 0.05, 1.5)])
def test_grid_schedule_moves_the_first_look_after_each_threshold_down_to_where_it_certifies(n_max, alpha, growth):
    base = default_schedule(n_max, growth=growth)
    level = alpha / len(base)
    gaps = [j for j in range(1, len(base)) if base[j] - base[j - 1] >= 2 * NOISE_BLOCK]
    chosen = {j: base[j - 1] + NOISE_BLOCK for j in (gaps[0], gaps[len(gaps) // 2])}
    assert len(chosen) == 2
    assert growth < 2 or min(chosen) == 1  # growth 2: one between the first two looks
    ts = [_t_first_certified_at(n, level) for n in chosen.values()]
    beyond = level ** (1.0 / (2 * n_max))  # unanimous counts certify it only after 2 n_max
    thresholds = [0.0, 0.5, *ts, beyond, 1.0]  # 0 and 1 lie outside (0, 1): ignored
    got = grid_schedule(n_max, thresholds, alpha, growth=growth)
    assert len(got) == len(base) and got[-1] == n_max  # the number of looks, hence each level, kept
    assert all(b > a for a, b in zip(got, got[1:]))
    want = list(base)
    for j, n in chosen.items():
        want[j] = n
    assert got == want
    for t, n in zip(ts, chosen.values()):  # the look is where unanimous counts first certify t
        assert float(lower_confidence_bound(n, n, level)) >= t
        assert float(lower_confidence_bound(n - NOISE_BLOCK, n - NOISE_BLOCK, level)) < t


def test_grid_level_is_the_largest_threshold_at_or_below_the_bound():
    th = np.array([0.5, 0.75, 0.9])
    assert grid_level([0.4, 0.5, 0.6, 0.75, 0.9, 0.99], th).tolist() == [-1, 0, 0, 1, 2, 2]


def test_cs_schedule_takes_a_step_of_one():
    assert cs_schedule(5, step=1) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="step >= 1"):
        cs_schedule(5, step=0)


def test_grid_thresholds_refuse_radii_at_or_beyond_what_uniform_noise_certifies():
    g = SmoothedClassifier(Scripted((0, 1)), 2, 0.5, noise="uniform")
    limit = float(g.noise.radius(1.0))
    assert math.isfinite(limit)
    with pytest.raises(ValueError, match=re.escape(f"radii [{limit}] are beyond what uniform noise")):
        grid_thresholds(g, [0.0, limit / 2, limit])
    th = grid_thresholds(g, [0.0, limit / 2])
    assert th[0] == 0.5 and 0.5 < th[1] < 1.0


# --- defaults, checks and messages ----------------------------------------------------------

@pytest.mark.parametrize("fn", PROCEDURES, ids=lambda f: f.__name__)
def test_library_defaults_are_the_command_lines(fn):
    """One default per concept: the procedures' sample sizes, levels and batch are those of
    ``certify`` / ``predict`` without flags."""
    parser = build_parser()
    cli = vars(parser.parse_args(["certify" if fn.__name__.startswith("certify") else "predict"]))
    params = inspect.signature(fn).parameters
    assert params["batch_size"].default == defaults.SAMPLING_BATCH["cpu"]
    assert params["alpha"].default == cli["alpha"]
    assert params["futility_alpha"].default == cli["futility_alpha"]
    assert params["budget" if "budget" in params else "n_max"].default == cli["n_max"]
    if "n0" in params:
        assert params["n0"].default == cli["n0"]
    if "tolerance" in params:
        assert params["tolerance"].default == cli["tolerance"]


def _constant(k=2, label=0, sigma=0.25):
    return SmoothedClassifier(lambda x: torch.full((x.shape[0],), label, dtype=torch.int64), k, sigma)


def test_schedules_may_start_at_one_sample_and_must_increase():
    g = _constant()
    res = certify_adaptive(g, X, [0.25], n0=10, n_max=300, schedule=[1, 100, 300], seeds=[0])
    assert int(res.prediction[0]) == 0
    res = certify_sequential(g, X, [0.25], n0=10, n_max=300, schedule=[1, 100, 300], seeds=[0])
    assert int(res.prediction[0]) == 0
    for bad in ([100, 100, 300], [100, 300, 200, 400]):
        with pytest.raises(ValueError, match=re.escape(f"got {bad[:3]}...[{bad[-1]}]")):
            certify_sequential(g, X, [0.25], n0=10, n_max=bad[-1], schedule=bad, seeds=[0])
    with pytest.raises(ValueError, match=r"must end at n_max=400, got 300$"):
        certify_adaptive(g, X, [0.25], n0=10, n_max=400, schedule=[100, 200, 300], seeds=[0])


def test_certify_sequential_names_bad_radii():
    g = _constant()
    with pytest.raises(ValueError, match=r"radii must be finite and >= 0, got \[-0\.5\]"):
        certify_sequential(g, X, [-0.5], n0=10, n_max=300, seeds=[0])
    with pytest.raises(ValueError, match=r"radii \[50\.0, 60\.0\] are too large for sigma 0\.25: their "
                                         r"thresholds p_needed\(r\) round to 1$"):
        certify_sequential(g, X, [50.0, 60.0], n0=10, n_max=300, seeds=[0])


# --- per-image streams, shares of the sampler, callbacks, types -----------------------------

class _HalfAndHalf(nn.Module):
    """Class 1 when the noisy first pixel is positive: p = 1/2 at x = 0, so the counts depend
    on the noise drawn. Three input channels."""

    def forward(self, x):
        h = x.flatten(1)[:, 0]
        return torch.stack([torch.zeros_like(h), h], 1)


def _half():
    return SmoothedClassifier(_HalfAndHalf(), 2, 0.25, in_shape=(3, 2, 2))


@pytest.mark.parametrize("fn", [certify_adaptive, certify_sequential], ids=lambda f: f.__name__)
def test_an_images_answer_depends_on_its_seed_not_on_its_batch(fn):
    g, x = _half(), torch.zeros(2, 3, 2, 2)
    kw = dict(n0=50, n_max=400, schedule=[200, 400])
    both = fn(g, x, [0.1], seeds=[5, 6], **kw)
    alone = fn(g, x[1], [0.1], seeds=[6], **kw)  # one (C, H, W) image, three channels
    assert alone.prediction.shape == (1,)
    assert both.counts_selection[1].tolist() == alone.counts_selection[0].tolist()
    assert 0 < int(alone.counts_selection[0, 1]) < 50  # the counts do depend on the noise
    assert float(both.p_lower[1]) == float(alone.p_lower[0]) and int(both.n_used[1]) == int(alone.n_used[0])
    # a generator instead of seeds: the same generator state, the same answer
    first = fn(g, x, [0.1], generator=torch.Generator().manual_seed(3), **kw)
    again = fn(g, x, [0.1], generator=torch.Generator().manual_seed(3), **kw)
    assert first.counts_selection.tolist() == again.counts_selection.tolist()
    assert first.p_lower.tolist() == again.p_lower.tolist()


def _counting(g):
    """Wrap g.sample_counts: each call adds 1 to the seconds of every image it samples, and
    the batch sizes asked for are recorded."""
    real, batches = g.sample_counts, []

    def fake(x, num, batch_size=400, **kw):
        seconds = kw.pop("seconds", None)
        batches.append(batch_size)
        out = real(x, num, batch_size, **kw)
        if seconds is not None:
            seconds += 1.0
        return out

    g.sample_counts = fake
    return batches


@pytest.mark.parametrize("fn", [certify_adaptive, certify_sequential, certify_anytime], ids=lambda f: f.__name__)
def test_each_image_is_charged_for_every_sampler_call_it_took_part_in(fn):
    """Selection plus one call per look: a constant classifier stops at a known look."""
    g = _constant(sigma=1.0)
    batches = _counting(g)
    schedule = [100, 200, 400, 800]
    args = dict(n0=10, batch_size=37, schedule=schedule, seeds=[0, 1])
    if fn is certify_anytime:
        res = fn(g, torch.zeros(2, 1, 2, 2), budget=800, **args)
    else:
        res = fn(g, torch.zeros(2, 1, 2, 2), [0.1], n_max=800, **args)
    looks = schedule.index(int(res.n_used[0])) + 1
    assert res.seconds.tolist() == [1.0 + looks] * 2
    assert set(batches) == {37}
    assert res.counts_selection.sum(1).tolist() == [10, 10]
    assert res.n_used.dtype == torch.int64 and res.prediction.dtype == torch.int64


def test_predict_sequential_results_are_integer_classes_and_counts():
    res = predict_sequential(_constant(k=3, label=2), X, n_max=500, schedule=[100, 500], seeds=[0])
    assert res.prediction.dtype == torch.int64 and res.prediction.tolist() == [2]
    assert res.counts.tolist() == [[0, 0, 100]] and int(res.n_used[0]) == 100


def test_certify_adaptive_reports_each_image_once_as_it_finishes():
    seen = {}

    def on_done(pos, part):
        for i, p in enumerate(pos.tolist()):
            assert p not in seen
            seen[p] = (int(part.prediction[i]), float(part.radius[i]), int(part.n_used[i]))

    x = torch.zeros(3, 3, 2, 2)
    x[1, 0] = 1.0  # votes class 1 nearly always: stops early; the others are 50/50
    res = certify_adaptive(_half(), x, [0.1], n0=20, n_max=800, schedule=[100, 400, 800], seeds=[1, 2, 3],
                           on_done=on_done)
    assert sorted(seen) == [0, 1, 2]
    for p in range(3):
        assert seen[p] == (int(res.prediction[p]), float(res.radius[p]), int(res.n_used[p]))
    assert int(res.n_used[1]) < 800


# --- the sequential procedures with several looks -------------------------------------------

def test_certify_sequential_accumulates_votes_over_looks_and_stops_at_the_top_radius():
    """Unanimous votes: the image stops at the first look where the e-process rejects the top
    threshold, with p_lower the confidence sequence's bound of n of n there."""
    sigma, alpha, radii = 0.25, 0.001, [0.25, 0.5]
    g = _constant(sigma=sigma)
    schedule = cs_schedule(20_000)
    res = certify_sequential(g, X, radii, n0=10, n_max=20_000, alpha=alpha, schedule=schedule, seeds=[0])
    cs = BernoulliCS(alpha)
    t_top = norm.cdf(radii[-1] / sigma)
    first = next(n for n in schedule if cs.rejects_below(n, n, t_top))
    assert int(res.n_used[0]) == first < 20_000
    assert float(res.radius[0]) == radii[-1] and int(res.prediction[0]) == 0
    assert float(res.p_lower[0]) == float(cs.lower(first, first))


@pytest.mark.parametrize("tolerance", [0.01, 0.05])
def test_certify_anytime_stops_where_the_radius_can_no_longer_grow_by_the_tolerance(tolerance):
    """Unanimous votes: after the look at n, the anytime upper bound of p_A is 1, so the best
    reachable radius at the budget is sigma PhiInv(L_budget(budget of budget)); the image
    stops at the first look where that exceeds the current radius by at most the tolerance."""
    sigma, alpha, budget = 0.25, 0.001, 20_000
    g = _constant(sigma=sigma)
    schedule = cs_schedule(budget)
    res = certify_anytime(g, X, n0=10, budget=budget, alpha=alpha, tolerance=tolerance, schedule=schedule,
                          seeds=[0])
    cs = BernoulliCS(alpha)
    reach = sigma * norm.ppf(float(cs.lower(budget, budget)))

    def radius(n):
        low = float(cs.lower(n, n))
        return sigma * norm.ppf(low) if low > 0.5 else -math.inf

    first = next(n for n in schedule if n == budget or reach <= radius(n) + tolerance)
    assert 100 < first < budget
    assert int(res.n_used[0]) == first
    assert float(res.p_lower[0]) == float(cs.lower(first, first))
    assert float(res.radius[0]) == pytest.approx(radius(first), rel=1e-12)
    assert int(res.prediction[0]) == 0


def test_certify_anytime_abstaining_image_stops_once_one_half_is_out_of_reach():
    """Votes alternate 0 / 1 after a unanimous selection: p_A = 1/2 is never shown, and
    the image stops (abstaining) before the budget, at the first look where even the
    anytime upper bound of p_A over the remaining samples could not show p_A > 1/2."""
    alpha, budget, n0 = 0.001, 20_000, 10

    class Alternating:
        def __init__(self):
            self.calls = 0

        def __call__(self, x):
            n = x.shape[0]
            if self.calls == 0:
                out = torch.zeros(n, dtype=torch.int64)
            else:
                out = torch.arange(n) % 2
            self.calls += 1
            return out

    g = SmoothedClassifier(Alternating(), 2, 0.25)
    schedule = cs_schedule(budget)
    res = certify_anytime(g, X, n0=n0, budget=budget, alpha=alpha, schedule=schedule, batch_size=NOISE_BLOCK,
                          seeds=[0])
    cs, fut = BernoulliCS(alpha), BernoulliCS(0.05)

    def hopeless(n):
        s = n / 2
        s_end = s + float(fut.upper(s, n)) * (budget - n)
        return float(cs.lower(s_end, budget)) <= 0.5

    first = next(n for n in schedule if n == budget or hopeless(n))
    assert first < budget
    assert int(res.prediction[0]) == ABSTAIN and int(res.n_used[0]) == first


# --- adaptive PREDICT --------------------------------------------------------------------------

def test_predict_adaptive_answers_depend_on_the_images_seed_not_on_its_batch():
    g, x = _half(), torch.zeros(2, 3, 2, 2)
    kw = dict(n_max=400, schedule=[100, 200, 400])
    both = predict_adaptive(g, x, seeds=[5, 6], **kw)
    alone = predict_adaptive(g, x[1], seeds=[6], **kw)  # one (C, H, W) image, three channels
    assert alone.prediction.shape == (1,)
    assert both.counts[1].tolist() == alone.counts[0].tolist()
    assert 0 < int(alone.counts[0, 1]) < int(alone.n_used[0])  # the counts do depend on the noise
    first = predict_adaptive(g, x, generator=torch.Generator().manual_seed(3), **kw)
    again = predict_adaptive(g, x, generator=torch.Generator().manual_seed(3), **kw)
    assert first.counts.tolist() == again.counts.tolist()
    for res in (both, alone, first):
        assert res.counts.dtype == torch.int64 and res.n_used.dtype == torch.int64
        assert res.prediction.dtype == torch.int64


def test_predict_adaptive_schedules_shares_and_callbacks():
    g = _constant(k=3, label=1)
    batches = _counting(g)
    seen = []
    res = predict_adaptive(g, torch.zeros(2, 1, 2, 2), n_max=300, batch_size=37, schedule=[1, 100, 300],
                           seeds=[0, 1], on_done=lambda pos, part: seen.extend(zip(pos.tolist(),
                                                                                   part.prediction.tolist())))
    # unanimous: undecided after 1 sample, decided at 100 (p = 2^-99 <= alpha / 3)
    assert res.prediction.tolist() == [1, 1] and res.n_used.tolist() == [100, 100]
    assert res.seconds.tolist() == [2.0, 2.0] and set(batches) == {37}
    assert sorted(seen) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match=r"must end at n_max=400, got 300$"):
        predict_adaptive(g, X, n_max=400, schedule=[100, 200, 300], seeds=[0])
    res = predict_adaptive(g, X, n_max=400, schedule=[100, 200, 400], seeds=[0])
    assert res.prediction.tolist() == [1]


# --- the geometric schedule and the futility bound ------------------------------------------

def test_default_schedule_is_strictly_increasing_blocks_ending_at_n_max():
    from smoothguard.contract import ContractError

    for growth in (1.1, 1.5, 2.0):
        for n_max in range(100, 20_001, 50):
            looks = default_schedule(n_max, growth=growth)
            assert looks[-1] == n_max
            assert all(b > a for a, b in zip(looks, looks[1:])), (n_max, growth, looks)
            assert all(v % NOISE_BLOCK == 0 for v in looks[:-1])
    # first * growth^2 = 450 = n_max: the last geometric point is n_max itself, not a block
    assert default_schedule(450) == [200, 300, 450]
    with pytest.raises(ContractError, match="^n_max must"):
        default_schedule(0)


def test_upper_confidence_bound_is_clopper_pearsons():
    from scipy.stats import beta

    n = 40
    for alpha in (0.05, 0.001):
        for n_a in range(n):
            want = beta.ppf(1 - alpha, n_a + 1, n - n_a)
            assert float(upper_confidence_bound(n_a, n, alpha)) == pytest.approx(want, rel=1e-12)
        assert float(upper_confidence_bound(n, n, alpha)) == 1.0


@pytest.mark.parametrize("fn", PROCEDURES, ids=lambda f: f.__name__)
def test_calls_without_sizes_use_the_command_lines_defaults(fn):
    """Behaviourally (the signatures above could hide a wrapper's own defaults): a schedule
    ending at the CLI's n_max is accepted only if that is the default budget, the sampler
    gets the default batch, and the selection step draws the CLI's n0."""
    cli = vars(build_parser().parse_args(["certify"]))
    g = _constant(sigma=1.0)
    batches = _counting(g)
    kw = dict(schedule=[100, cli["n_max"]], seeds=[0])
    res = fn(g, X, [0.1], **kw) if fn in (certify_adaptive, certify_sequential) else fn(g, X, **kw)
    assert set(batches) == {defaults.SAMPLING_BATCH["cpu"]}
    if hasattr(res, "counts_selection"):
        assert int(res.counts_selection.sum()) == cli["n0"]


def test_certify_anytime_default_tolerance_is_the_command_lines():
    cli = vars(build_parser().parse_args(["certify"]))
    schedule = cs_schedule(20_000)
    a = certify_anytime(_constant(), X, budget=20_000, schedule=schedule, seeds=[0])
    b = certify_anytime(_constant(), X, budget=20_000, schedule=schedule, seeds=[0], tolerance=cli["tolerance"])
    c = certify_anytime(_constant(), X, budget=20_000, schedule=schedule, seeds=[0], tolerance=1.0)
    assert int(a.n_used[0]) == int(b.n_used[0]) != int(c.n_used[0])
