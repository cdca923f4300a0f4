"""Adaptive CERTIFY at the radii of a table: the same guarantee with far fewer samples.

Cohen et al.'s CERTIFY spends n (typically 100,000) estimation samples on every input,
although most inputs are decided much earlier. For a table of radii r_1 < ... < r_k the
question per image is only "which is the largest r_i with p_A >= Phi(r_i / sigma)?". We
answer it with a group-sequential test:

* the selection step is Cohen's (n0 fresh samples pick the top class c_A);
* estimation samples arrive in a growing schedule of looks n_1 < n_2 < ... < n_L = n_max
  (geometric, growth 1.5, with a look moved to where unanimous counts first certify each
  grid radius: :func:`grid_schedule`);
* at look j the one-sided Clopper-Pearson lower bound L_j is computed at level
  alpha_j = alpha / L (Bonferroni alpha spending), and an upper bound U_j at the same
  level decides futility;
* we stop at n_max, or as soon as a larger grid radius is out of reach: with U_j the
  upper confidence bound of p_A at level ``futility_alpha`` (default 0.05), not even
  n_max samples at a true p_A of U_j would give a lower bound that certifies a larger
  radius than L_j already does; we return the largest grid radius r with
  L_j >= Phi(r / sigma) (ABSTAIN when even p_A > 1/2 is not shown).

Validity: the event "some look's bound exceeds the true p_A" has probability at most
sum_j alpha_j = alpha (union bound), whatever the stopping rule, so the probability of
certifying a grid radius larger than the true radius of g is at most alpha - the
guarantee of CERTIFY. Each alpha_j <= alpha, so on the same counts a decision is never
looser than the fixed-n test. The futility rule only decides *when to stop looking*, so
it cannot affect validity; it trades a little power for samples: an image whose p_A sits
just above a grid threshold may be given the lower radius where n_max samples might have
shown the higher one. On the embedded Fashion-MNIST model (500 images, grid
0.25/0.5/0.75, n_max 100,000) ``futility_alpha=0.05`` cut the mean samples per image from
about 13,600 (stopping only when U_j at level alpha_j rules out a larger radius) to about
8,600, with certified accuracy within 1 point of fixed n = 100,000 (BENCHMARKS.md);
``futility_alpha`` -> 0 approaches the fixed-n decisions. The union bound is the simplest valid alpha-spending rule
(see Jennison and Turnbull, "Group Sequential Methods", 2000, ch. 7); it costs little
here because the Clopper-Pearson bound moves only logarithmically with its level.
The same scheme decides PREDICT (:func:`predict_adaptive`): at each look Cohen's
two-sided binomial test on the top two counts runs at level alpha / L, and the image
stops as soon as the test rejects (the top class is returned) or, with futility level
``futility_alpha``, not even n_max samples could make it reject (abstain).

Anytime-valid variant (issue 21; ``--sequential cs``, the CLI's default):
:func:`certify_sequential`, :func:`predict_sequential` and :func:`certify_anytime` replace
the Bonferroni split by the confidence sequences of
:mod:`smoothguard.smoothing.sequential` (Waudby-Smith and Ramdas, JRSS-B 2023; Howard et
al., Ann. Statist. 2021): the counts are looked at after every 100 samples (then every
~5 %) at no cost in alpha, and one e-process per threshold, not alpha / L, decides. It is
cheaper for clear images (a unanimous image certifies r = 0.75 at sigma 0.25 after 5,600
samples instead of 7,300) and for images between thresholds; an image sitting right at a
threshold needs more samples than the fixed-n test at the same n (Ville's bound costs
ln(1/alpha) where a fixed-n test costs z_alpha^2 / 2), see BENCHMARKS.md. The grid logic
on counts alone is :class:`SequentialGridTest` (used by the simulations).

Other noises: the grid thresholds and the anytime radius are the noise object's
(:meth:`smoothguard.noise.Noise.p_needed` and :meth:`~smoothguard.noise.Noise.radius`):
Phi(r / sigma) and sigma * PhiInv(p) for Gaussian noise (l_2), and the l_1 formulas of
uniform and Laplace noise otherwise; the tests of validity above never used the form of
Phi.

Rows as images finish: every procedure takes ``on_done(positions, result)``, called as
soon as images stop (their answers can no longer change) with their positions in ``x``
and their part of the result, so a caller can write their rows before the other images
of the call are done. Each result's ``seconds`` is the time attributable to each image
(its share of every forward batch it took part in, :mod:`smoothguard.smoothing.sampler`).

Related work on randomized smoothing: Horvath et al., "Boosting randomized smoothing with
variance reduced classifiers", ICLR 2022; Chen et al., "Input-specific robustness
certification for randomized smoothing", 2022; Voracek, "Treatment of statistical
estimation problems in randomized smoothing", 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from smoothguard.contract import check_alpha, check_int
from smoothguard import ABSTAIN
from smoothguard.smoothing.core import NOISE_BLOCK, SmoothedClassifier
from smoothguard.smoothing.sequential import BernoulliCS
from smoothguard.smoothing.stats import binom_pvalues, lower_confidence_bound


def default_schedule(n_max: int, first: int = 2 * NOISE_BLOCK, growth: float = 1.5) -> list[int]:
    """Looks at first, first * growth, ... (multiples of NOISE_BLOCK), ending at n_max."""
    check_int("n_max", n_max)
    looks, n = [], float(first)
    while n < n_max:
        look = int(round(n / NOISE_BLOCK)) * NOISE_BLOCK
        if not looks or look > looks[-1]:
            looks.append(look)
        n *= growth
    if not looks or looks[-1] != n_max:
        looks.append(n_max)
    return looks


def grid_schedule(n_max: int, thresholds: Sequence[float], alpha: float, first: int = 2 * NOISE_BLOCK,
                  growth: float = 1.5) -> list[int]:
    """:func:`default_schedule` with a look where each grid radius first becomes certifiable.

    For a grid threshold t (the p_A a radius needs), unanimous counts certify it from
    n_t = ln(alpha / L) / ln(t) samples on (the Clopper-Pearson bound of n of n is
    (alpha / L)^(1 / n)), rounded up to a multiple of NOISE_BLOCK. The first look at or
    after n_t moves down to n_t, so the many clean images stop there instead of at the
    next look of the geometric schedule. The number of looks L, hence each look's level,
    is unchanged, and the schedule depends only on (n_max, the grid, sigma, alpha), never
    on the data, so the union bound over the looks still holds.
    """
    looks = default_schedule(n_max, first, growth)
    level = alpha / len(looks)
    for t in sorted(float(v) for v in thresholds):
        if not 0.0 < t < 1.0:
            continue
        n_t = int(math.ceil(math.log(level) / math.log(t) / NOISE_BLOCK)) * NOISE_BLOCK
        if n_t <= looks[0] or n_t >= n_max:
            continue
        j = next(i for i, v in enumerate(looks) if v >= n_t)
        if looks[j - 1] < n_t < looks[j]:
            looks[j] = n_t
    return looks


def upper_confidence_bound(n_a, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson upper bound (1 when n_a = n)."""
    from scipy.stats import beta  # imported here, as in smoothguard.smoothing.stats (start-up time)

    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(1.0 - alpha, n_a + 1.0, np.maximum(n - n_a, 1.0))
    return np.where(n_a >= n, 1.0, bound)


def grid_level(p_bound, thresholds: np.ndarray) -> np.ndarray:
    """Index of the largest threshold <= p_bound (-1 when below all)."""
    p = np.atleast_1d(np.asarray(p_bound, dtype=np.float64))
    return np.searchsorted(thresholds, p, side="right") - 1


def cs_schedule(n_max: int, step: int = NOISE_BLOCK, dense_until: int = 10_000, growth: float = 1.05) -> list[int]:
    """Looks for the anytime-valid method: every ``step`` samples up to ``dense_until``, then
    about every ``growth - 1`` of the samples so far (multiples of ``step``), ending at n_max.

    A confidence sequence may be looked at after every sample at no cost in alpha; the
    schedule only bounds the number of Python rounds. It depends on n_max alone, never on
    the data or on the other images of a call, so a row does not depend on the grouping.
    """
    check_int("n_max", n_max)
    if step < 1 or growth <= 1.0:
        raise ValueError(f"need step >= 1 and growth > 1, got {step} and {growth}")
    looks, n = [], step
    while n < n_max:
        looks.append(n)
        n = n + step if n < dense_until else max(n + step, int(round(n * growth / step)) * step)
    looks.append(n_max)
    return looks


class SequentialGridTest:
    """The decision rule of anytime-valid grid certification, on counts alone.

    ``thresholds`` are the p_A each grid level needs (increasing; level 0 is 1/2, i.e.
    "predict c_A"). After each look with ``s`` votes for c_A in ``n`` samples,
    :meth:`update` raises the certified level to the largest i with E_n(t_i) >= 1/alpha
    (the e-process of :class:`~smoothguard.smoothing.sequential.BernoulliCS`, kept as a
    running maximum: Ville's inequality bounds the probability that E_n(t) *ever*
    crosses 1/alpha for t >= p_A by alpha) and says which images stop: those at the top
    level, at n_max, or whose next level is out of reach (see :meth:`reachable`).

    Validity: certifying level i while p_A < t_i (or p_A <= 1/2 for level 0) requires
    E_n(t_j) >= 1/alpha at some n for the smallest t_j >= p_A, and since E_n(t) decreases
    in t, that one e-process crossing is the whole error event: probability <= alpha
    whatever the stopping rule (no split of alpha over looks or over radii).
    """

    def __init__(self, thresholds: Sequence[float], alpha: float, n_max: int, futility_alpha: float = 0.05,
                 cs: BernoulliCS | None = None) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or np.any(np.diff(self.thresholds) <= 0):
            raise ValueError(f"thresholds must be increasing, got {list(thresholds)}")
        check_alpha(futility_alpha, "futility_alpha")
        self.cs = cs if cs is not None else BernoulliCS(alpha)
        self.futility = BernoulliCS(futility_alpha, self.cs.thetas, self.cs.weights)
        self.n_max = int(n_max)

    def certified(self, s, n) -> np.ndarray:
        """Largest level whose threshold the e-process rejects now (-1 when none)."""
        s, n = np.asarray(s, dtype=np.float64), np.asarray(n, dtype=np.float64)
        rej = self.cs.rejects_below(s[:, None], n[:, None], self.thresholds[None, :])
        return rej.sum(1) - 1  # E_n(t) decreases in t: the rejected thresholds are a prefix

    def reachable(self, s, n, level) -> np.ndarray:
        """Whether level + 1 could still be certified by n_max: with p_A at its anytime upper
        bound at ``futility_alpha`` for the remaining samples, the e-process at n_max
        would cross. A stopping rule only; it never changes what a look certifies."""
        s, n = np.asarray(s, dtype=np.float64), np.asarray(n, dtype=np.float64)
        nxt = np.asarray(level) + 1
        top = nxt >= self.thresholds.size
        t = self.thresholds[np.minimum(nxt, self.thresholds.size - 1)]
        u = self.futility.upper(s, n)
        s_end = s + u * (self.n_max - n)
        return ~top & (self.cs.log_evalue(s_end, np.full(s.shape, float(self.n_max)), t) >= self.cs.log_level)

    def update(self, s, n, level) -> tuple[np.ndarray, np.ndarray]:
        """(new level, stop) for images with ``s`` of ``n`` votes and running level ``level``."""
        level = np.maximum(np.asarray(level), self.certified(s, n))
        stop = (np.asarray(n) >= self.n_max) | ~self.reachable(s, n, level)
        return level, stop


def grid_thresholds(smoothed: SmoothedClassifier, grid: Sequence[float]) -> np.ndarray:
    """The p_A each grid radius needs under the classifier's noise (its inverse radius,
    :meth:`smoothguard.noise.Noise.p_needed`: Phi(r / sigma) for Gaussian noise), with
    1/2 for the radius 0 ("predict c_A"). A radius the noise cannot certify at any p_A < 1
    (uniform noise: l_1 radii below lambda) is refused."""
    noise = smoothed.noise
    grid = np.asarray(grid, dtype=np.float64)
    limit = float(noise.radius(1.0))  # the supremum of the noise's radii: inf for Gaussian and Laplace
    if np.any(grid >= limit):
        raise ValueError(f"radii {grid[grid >= limit].tolist()} are beyond what {noise.name} noise of sigma "
                         f"{noise.sigma} can certify ({noise.norm} radii below {limit:g})")
    thresholds = np.asarray(noise.p_needed(grid), dtype=np.float64)
    thresholds[0] = 0.5
    return thresholds


def _finisher(on_done, result):
    """The callback of :func:`_looks`: hands the caller's ``on_done`` the positions of the
    images that just finished and ``result(positions)``."""
    return None if on_done is None else (lambda pos: on_done(pos, result(pos)))


def _looks(smoothed: SmoothedClassifier, x: torch.Tensor, gens, looks: Sequence[int], batch_size: int,
           active: np.ndarray, seconds: np.ndarray, finished: Callable[[np.ndarray], None] | None = None):
    """The loop every sequential procedure shares: at each look, the images still ``active``
    (the caller clears entries as images are decided; the array is read anew at each look)
    get the estimation samples that bring them to ``look``, from their own generators, and
    their shares of the batches' time added to ``seconds``. Yields (look, positions of those
    images, class counts of the new samples). Once the caller has cleared an image (or the
    looks end), ``finished(positions)`` hears of it at once, before the next look."""
    done_n = 0
    for look in looks:
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return
        spent = np.zeros(idx.size)
        counts = smoothed.sample_counts(x[idx], look - done_n, batch_size, generators=[gens[i] for i in idx],
                                        seconds=spent)
        seconds[idx] += spent
        done_n = look
        yield look, idx, counts
        stopped = idx[~active[idx]]
        if finished is not None and stopped.size:
            finished(stopped)
    rest = np.flatnonzero(active)
    if finished is not None and rest.size:
        finished(rest)


@dataclass
class AdaptiveResult:
    """Per-image results of :func:`certify_adaptive`."""

    prediction: torch.Tensor  # int64 (B,), ABSTAIN = -1
    radius: torch.Tensor  # float64 (B,): the largest certified grid radius (0.0 for r = 0 or abstain)
    p_lower: torch.Tensor  # float64 (B,): the lower bound at the stopping look (level alpha / L)
    n_used: torch.Tensor  # int64 (B,): estimation samples spent (excluding the n0 selection samples)
    counts_selection: torch.Tensor  # int64 (B, K)
    seconds: np.ndarray | None = None  # float64 (B,): each image's share of the forward batches' time


OnDone = Callable[[np.ndarray, "AdaptiveResult | AdaptivePredictResult"], None]


def certify_adaptive(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    radii: Sequence[float],
    n0: int = 100,
    n_max: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 400,
    *,
    schedule: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    futility_alpha: float = 0.05,
    on_done: OnDone | None = None,
) -> AdaptiveResult:
    """Adaptive CERTIFY on a grid of radii (see the module docstring).

    ``futility_alpha`` in (0, 1) sets how sure the procedure must be that a larger radius
    is out of reach before it stops early; it never affects the guarantee, only the
    samples spent and how close decisions come to the fixed-n_max test.

    For each image, with probability >= 1 - alpha, a non-abstaining answer is g(x) and g
    is robust within the returned grid radius; the grid radius 0 (g(x) is the class, with
    p_A > 1/2) is always part of the grid.
    """
    check_alpha(alpha)
    check_int("n0", n0)
    check_alpha(futility_alpha, "futility_alpha")
    grid = sorted({0.0, *(float(r) for r in radii)})
    if any(r < 0 or not np.isfinite(r) for r in grid):
        raise ValueError(f"radii must be finite and >= 0, got {list(radii)}")
    thresholds = grid_thresholds(smoothed, grid)  # p_A needed per grid radius
    looks = list(schedule) if schedule is not None else grid_schedule(n_max, thresholds, alpha)
    if any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1:
        raise ValueError(f"the schedule must be increasing positive sample counts, got {looks}")
    if schedule is not None and looks[-1] != n_max:
        raise ValueError(f"the schedule must end at n_max={n_max}, got {looks[-1]}")
    alpha_look = alpha / len(looks)

    if x.dim() == 3:
        x = x.unsqueeze(0)
    count = x.shape[0]
    gens, seconds = smoothed._generators(count, seeds, generator), np.zeros(count)
    counts0 = smoothed.sample_counts(x, n0, batch_size, generators=gens, seconds=seconds)
    c_a = counts0.argmax(1)
    n_a = torch.zeros(count, dtype=torch.int64)
    n_used = torch.zeros(count, dtype=torch.int64)
    level = np.full(count, -1)
    p_lower = np.zeros(count)
    active = np.ones(count, dtype=bool)
    grid_arr = np.asarray(grid)

    def result(pos: np.ndarray) -> AdaptiveResult:
        sel, certified = torch.as_tensor(pos), level[pos] >= 0
        prediction = torch.where(torch.as_tensor(certified), c_a[sel], torch.full_like(c_a[sel], ABSTAIN))
        radius = torch.as_tensor(np.where(certified, grid_arr[np.maximum(level[pos], 0)], 0.0), dtype=torch.float64)
        return AdaptiveResult(prediction, radius, torch.as_tensor(p_lower[pos], dtype=torch.float64), n_used[sel],
                              counts0[sel], seconds[pos])

    for look, idx, counts in _looks(smoothed, x, gens, looks, batch_size, active, seconds,
                                    _finisher(on_done, result)):
        sel = torch.as_tensor(idx)
        n_a[sel] += counts.gather(1, c_a[sel][:, None]).squeeze(1)
        n_used[sel] = look
        na = n_a[sel].numpy()
        low = np.atleast_1d(lower_confidence_bound(na, np.full(idx.size, look), alpha_look))
        lv = grid_level(low, thresholds)
        # the largest level n_max samples could still certify if p_A were its upper bound
        high = np.atleast_1d(upper_confidence_bound(na, np.full(idx.size, look), futility_alpha))
        reach = np.atleast_1d(lower_confidence_bound(np.floor(high * n_max), np.full(idx.size, n_max), alpha_look))
        best = np.maximum(lv, grid_level(reach, thresholds))
        level[idx], p_lower[idx] = lv, low
        active[idx[lv >= best]] = False  # decided: the certified level is the best still possible
    return result(np.arange(count))


def certify_sequential(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    radii: Sequence[float],
    n0: int = 100,
    n_max: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 400,
    *,
    schedule: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    futility_alpha: float = 0.05,
    cs: BernoulliCS | None = None,
    on_done: OnDone | None = None,
) -> AdaptiveResult:
    """Anytime-valid CERTIFY on a grid of radii (``certify --radii ... --sequential cs``).

    Cohen's selection step (n0 fresh samples pick c_A), then estimation samples in looks
    (:func:`cs_schedule`: every 100 samples up to 10,000, then every ~5 %) decided by
    :class:`SequentialGridTest`: the certified level is the largest grid radius r whose
    threshold Phi(r / sigma) the confidence sequence's e-process has rejected at any look
    so far; an image stops at the top radius, at n_max, or once the next radius is out of
    reach by n_max with p_A at its anytime upper bound at ``futility_alpha``.

    For each image, with probability >= 1 - alpha, a non-abstaining answer is g(x) and g
    is robust within the returned grid radius (Ville's inequality; no Bonferroni split).
    ``p_lower`` is the confidence sequence's lower bound L_n at the stopping look.
    """
    check_alpha(alpha)
    check_int("n0", n0)
    check_int("n_max", n_max)
    grid = sorted({0.0, *(float(r) for r in radii)})
    if any(r < 0 or not np.isfinite(r) for r in grid):
        raise ValueError(f"radii must be finite and >= 0, got {list(radii)}")
    thresholds = grid_thresholds(smoothed, grid)
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError(f"radii {list(radii)} are too large for sigma {smoothed.sigma}: their thresholds "
                         "p_needed(r) round to 1")
    if cs is not None and cs.alpha != alpha:
        raise ValueError(f"the confidence sequence has alpha {cs.alpha}, the call {alpha}")
    test = SequentialGridTest(thresholds, alpha, n_max, futility_alpha, cs)
    looks = list(schedule) if schedule is not None else cs_schedule(n_max)
    if any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1 or looks[-1] != n_max:
        raise ValueError(f"the schedule must be increasing positive sample counts ending at n_max={n_max}, "
                         f"got {looks[:3]}...{looks[-1:]}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    count = x.shape[0]
    gens, seconds = smoothed._generators(count, seeds, generator), np.zeros(count)
    counts0 = smoothed.sample_counts(x, n0, batch_size, generators=gens, seconds=seconds)
    c_a = counts0.argmax(1)
    n_a = np.zeros(count)
    n_used = np.zeros(count, dtype=np.int64)
    level = np.full(count, -1)
    active = np.ones(count, dtype=bool)
    grid_arr = np.asarray(grid)

    def result(pos: np.ndarray) -> AdaptiveResult:
        sel, certified = torch.as_tensor(pos), level[pos] >= 0
        p_lower = test.cs.lower(n_a[pos], n_used[pos].astype(np.float64))
        prediction = torch.where(torch.as_tensor(certified), c_a[sel], torch.full_like(c_a[sel], ABSTAIN))
        radius = torch.as_tensor(np.where(certified, grid_arr[np.maximum(level[pos], 0)], 0.0), dtype=torch.float64)
        return AdaptiveResult(prediction, radius, torch.as_tensor(p_lower, dtype=torch.float64),
                              torch.as_tensor(n_used[pos]), counts0[sel], seconds[pos])

    for look, idx, counts in _looks(smoothed, x, gens, looks, batch_size, active, seconds,
                                    _finisher(on_done, result)):
        sel = torch.as_tensor(idx)
        n_a[idx] += counts.gather(1, c_a[sel][:, None]).squeeze(1).numpy()
        n_used[idx] = look
        level[idx], stop = test.update(n_a[idx], n_used[idx].astype(np.float64), level[idx])
        active[idx[stop]] = False
    return result(np.arange(count))


def certify_anytime(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    n0: int = 100,
    budget: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 400,
    *,
    tolerance: float = 0.01,
    schedule: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    futility_alpha: float = 0.05,
    cs: BernoulliCS | None = None,
    on_done: OnDone | None = None,
) -> AdaptiveResult:
    """Anytime-valid CERTIFY without a grid (``certify --budget N``): a radius per image.

    After Cohen's selection step, estimation samples arrive in looks (:func:`cs_schedule`);
    the certified radius is sigma * PhiInv(L) with L the largest lower bound of the
    confidence sequence seen so far (ABSTAIN while L <= 1/2). An image stops at ``budget``
    samples or as soon as its radius can no longer grow by more than ``tolerance`` (l2,
    pixel units): with p_A at its anytime upper bound at ``futility_alpha`` for the
    remaining samples, the lower bound at ``budget`` would not give a radius larger than
    the current one plus ``tolerance`` (an abstaining image stops once not even 1/2 is
    reachable). The stopping rule never changes what a look certifies.

    Guarantee: with probability >= 1 - alpha, a non-abstaining answer is g(x) and g is
    robust within the returned radius, whenever the image stopped (Ville's inequality).
    The radius is below fixed-n CERTIFY's at the same n (the price of looking at every n):
    for an image right at its largest radius, fixed n gives a larger radius.
    """
    check_alpha(alpha)
    check_int("n0", n0)
    check_int("budget", budget)
    if not (tolerance >= 0 and np.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite radius >= 0, got {tolerance}")
    check_alpha(futility_alpha, "futility_alpha")
    cs = cs if cs is not None else BernoulliCS(alpha)
    if cs.alpha != alpha:
        raise ValueError(f"the confidence sequence has alpha {cs.alpha}, the call {alpha}")
    futility = BernoulliCS(futility_alpha, cs.thetas, cs.weights)
    looks = list(schedule) if schedule is not None else cs_schedule(budget)
    if any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1 or looks[-1] != budget:
        raise ValueError(f"the schedule must be increasing positive sample counts ending at budget={budget}")
    noise = smoothed.noise

    def radius_of(p):  # the noise's radius (Gaussian: sigma * PhiInv(p)); -inf while nothing is shown
        return np.where(p > 0.5, noise.radius(p), -np.inf)

    if x.dim() == 3:
        x = x.unsqueeze(0)
    count = x.shape[0]
    gens, seconds = smoothed._generators(count, seeds, generator), np.zeros(count)
    counts0 = smoothed.sample_counts(x, n0, batch_size, generators=gens, seconds=seconds)
    c_a = counts0.argmax(1)
    n_a = np.zeros(count)
    n_used = np.zeros(count, dtype=np.int64)
    best = np.zeros(count)  # running maximum of L_n (0: nothing shown yet)
    active = np.ones(count, dtype=bool)

    def result(pos: np.ndarray) -> AdaptiveResult:
        sel, certified = torch.as_tensor(pos), best[pos] > 0.5
        prediction = torch.where(torch.as_tensor(certified), c_a[sel], torch.full_like(c_a[sel], ABSTAIN))
        radius = torch.as_tensor(np.where(certified, noise.radius(best[pos]), 0.0), dtype=torch.float64)
        return AdaptiveResult(prediction, radius, torch.as_tensor(best[pos], dtype=torch.float64),
                              torch.as_tensor(n_used[pos]), counts0[sel], seconds[pos])

    for look, idx, counts in _looks(smoothed, x, gens, looks, batch_size, active, seconds,
                                    _finisher(on_done, result)):
        n_a[idx] += counts.gather(1, c_a[torch.as_tensor(idx)][:, None]).squeeze(1).numpy()
        n_used[idx] = look
        s, n = n_a[idx], np.full(idx.size, float(look))
        best[idx] = np.maximum(best[idx], cs.lower(s, n))
        if look >= budget:
            active[idx] = False
            continue
        s_end = s + futility.upper(s, n) * (budget - look)
        reach = radius_of(cs.lower(s_end, np.full(idx.size, float(budget))))
        now = radius_of(best[idx])
        grows = np.where(np.isfinite(now), reach > now + tolerance, np.isfinite(reach))
        active[idx[~grows]] = False
    return result(np.arange(count))


@dataclass
class AdaptivePredictResult:
    """Per-image results of :func:`predict_adaptive`."""

    prediction: torch.Tensor  # int64 (B,), ABSTAIN = -1
    p_value: torch.Tensor  # float64 (B,): the top-two test's p-value at the stopping look (level alpha / L)
    n_used: torch.Tensor  # int64 (B,): noise samples spent
    counts: torch.Tensor  # int64 (B, K): the class counts of those samples
    seconds: np.ndarray | None = None  # float64 (B,): each image's share of the forward batches' time


def predict_adaptive(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    n_max: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 400,
    *,
    schedule: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    futility_alpha: float = 0.05,
    on_done: OnDone | None = None,
) -> AdaptivePredictResult:
    """Adaptive PREDICT: Cohen's PREDICT with looks at a growing number of samples.

    At look j (n_j samples in all) the two-sided exact binomial test of the top two counts
    runs at level alpha / L; the image stops with its top class when the test rejects, and
    abstains when it cannot reject by n_max even if the top class's share of the top two
    were at its (1 - ``futility_alpha``) upper confidence bound (or at n_max).

    For each image, the probability of returning a class other than g(x) is at most
    alpha: each look is Cohen's PREDICT at level alpha / L (valid, Hung and Fithian 2019),
    and a union bound over the L looks holds whatever the stopping rule.
    """
    check_alpha(alpha)
    check_alpha(futility_alpha, "futility_alpha")
    looks = list(schedule) if schedule is not None else default_schedule(n_max)
    if any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1:
        raise ValueError(f"the schedule must be increasing positive sample counts, got {looks}")
    if schedule is not None and looks[-1] != n_max:
        raise ValueError(f"the schedule must end at n_max={n_max}, got {looks[-1]}")
    alpha_look = alpha / len(looks)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    count = x.shape[0]
    gens, seconds = smoothed._generators(count, seeds, generator), np.zeros(count)
    counts = torch.zeros(count, smoothed.num_classes, dtype=torch.int64)
    n_used = torch.zeros(count, dtype=torch.int64)
    prediction = torch.full((count,), ABSTAIN, dtype=torch.int64)
    p_value = np.ones(count)
    active = np.ones(count, dtype=bool)

    def result(pos: np.ndarray) -> AdaptivePredictResult:
        sel = torch.as_tensor(pos)
        return AdaptivePredictResult(prediction[sel], torch.as_tensor(p_value[pos], dtype=torch.float64),
                                     n_used[sel], counts[sel], seconds[pos])

    for look, idx, new in _looks(smoothed, x, gens, looks, batch_size, active, seconds,
                                 _finisher(on_done, result)):
        sel = torch.as_tensor(idx)
        counts[sel] += new
        n_used[sel] = look
        top2 = counts[sel].topk(2, dim=1)
        n1, n2 = top2.values[:, 0].numpy(), top2.values[:, 1].numpy()
        pv = binom_pvalues(n1, n2)
        p_value[idx] = pv
        decided = pv <= alpha_look
        prediction[sel[torch.as_tensor(decided)]] = top2.indices[torch.as_tensor(decided), 0]
        # futility: the top class's share of the top two at its upper bound, over the top-two
        # samples n_max would bring, still not significant
        share = np.atleast_1d(upper_confidence_bound(n1, n1 + n2, futility_alpha))
        m = np.floor((n1 + n2) * (n_max / look))
        hopeless = binom_pvalues(np.floor(share * m), m - np.floor(share * m)) > alpha_look
        active[idx[decided | hopeless]] = False
    return result(np.arange(count))


def predict_sequential(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    n_max: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 400,
    *,
    schedule: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    futility_alpha: float = 0.05,
    cs: BernoulliCS | None = None,
    on_done: OnDone | None = None,
) -> AdaptivePredictResult:
    """Anytime-valid PREDICT (``predict --adaptive --sequential cs``).

    For classes c != c', the samples that land in {c, c'} are a Bernoulli stream with mean
    p_c / (p_c + p_c'); the confidence sequence's e-process at t = 1/2 at level
    alpha / (K - 1) tests "p_c <= p_c'". At every look (:func:`cs_schedule`) the leading
    class is returned as soon as it beats every other class this way (the runner-up is the
    binding one: fewer of its votes only raise the e-value); an image abstains at n_max,
    or once, with the leader's share of the top two at its anytime upper bound at
    ``futility_alpha``, not even n_max samples would let it beat the runner-up.

    Guarantee: returning c != g(x) needs the e-process of the pair (c, g(x)) to cross
    (K - 1) / alpha under its null; a union over the K - 1 possible c bounds the
    probability by alpha, whatever the stopping time (Ville's inequality).
    """
    check_alpha(alpha)
    check_int("n_max", n_max)
    check_alpha(futility_alpha, "futility_alpha")
    k = smoothed.num_classes
    pair_alpha = alpha / max(k - 1, 1)
    cs = BernoulliCS(pair_alpha, cs.thetas, cs.weights) if cs is not None else BernoulliCS(pair_alpha)
    futility = BernoulliCS(futility_alpha, cs.thetas, cs.weights)
    looks = list(schedule) if schedule is not None else cs_schedule(n_max)
    if any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1 or looks[-1] != n_max:
        raise ValueError(f"the schedule must be increasing positive sample counts ending at n_max={n_max}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    count = x.shape[0]
    gens, seconds = smoothed._generators(count, seeds, generator), np.zeros(count)
    counts = torch.zeros(count, k, dtype=torch.int64)
    n_used = torch.zeros(count, dtype=torch.int64)
    prediction = torch.full((count,), ABSTAIN, dtype=torch.int64)
    log_e = np.zeros(count)
    active = np.ones(count, dtype=bool)

    def result(pos: np.ndarray) -> AdaptivePredictResult:
        sel = torch.as_tensor(pos)
        # p_value: 1 / E (an anytime-valid p-value for the binding pair, capped at 1)
        p_value = np.minimum(1.0, np.exp(-log_e[pos]) * max(k - 1, 1))
        return AdaptivePredictResult(prediction[sel], torch.as_tensor(p_value, dtype=torch.float64), n_used[sel],
                                     counts[sel], seconds[pos])

    for look, idx, new in _looks(smoothed, x, gens, looks, batch_size, active, seconds,
                                 _finisher(on_done, result)):
        sel = torch.as_tensor(idx)
        counts[sel] += new
        n_used[sel] = look
        if k < 2:
            prediction[sel] = 0
            active[idx] = False
            continue
        top2 = counts[sel].topk(2, dim=1)
        n1, n2 = top2.values[:, 0].double().numpy(), top2.values[:, 1].double().numpy()
        m = n1 + n2
        log_e[idx] = cs.log_evalue(n1, m, 0.5)
        decided = log_e[idx] >= cs.log_level
        prediction[sel[torch.as_tensor(decided)]] = top2.indices[torch.as_tensor(decided), 0]
        share = futility.upper(n1, m)
        m_end = m * (n_max / look)
        hopeless = cs.log_evalue(n1 + share * (m_end - m), m_end, 0.5) < cs.log_level
        active[idx[decided | hopeless | (look >= n_max)]] = False
    return result(np.arange(count))
