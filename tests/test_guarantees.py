"""The guarantees users rely on, each tested as a property on a construction where a
broken line would show (issue 24; every case here was checked to fail under the mutation
named in its docstring).

* CERTIFY abstains exactly when the Clopper-Pearson bound on p_A is below 1/2.
* PREDICT returns a class only when the exact binomial p-value is <= alpha, so its error
  rate is at most alpha (and a looser threshold is detected).
* PGD and APGD return the worst case over every iterate of every restart, not the last
  iterate and not the last restart's best.
* TRADES' loss is CE + beta * KL(f(x) || f(x')) and its inner attack increases that KL.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_dist
from scipy.stats import binom, binomtest, norm
from torch import nn

from smoothguard.attacks import APGD, PGD
from smoothguard.smoothing import ABSTAIN, SmoothedClassifier
from smoothguard.smoothing.stats import (
    binom_pvalue,
    binom_pvalues,
    certified_accuracy_lower_bound,
    lower_confidence_bound,
    r_max,
    radius_from_bound,
)
from smoothguard.training import StepContext, get_objective
from smoothguard.training.adversarial import TradesPGD, kl_div_rows


# ----------------------------------------------------------------------------- helpers
class Scripted:
    """Query-only base classifier that answers a fixed sequence of labels, in order,
    whatever the inputs: the counts of a run are known exactly (stub counts)."""

    def __init__(self, labels):
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.pos = 0

    def __call__(self, x):
        n = x.shape[0]
        out = self.labels[self.pos:self.pos + n]
        assert out.shape[0] == n, "script exhausted"
        self.pos += n
        return out


def _script(*runs):
    """Concatenate runs of (label, count)."""
    return torch.cat([torch.full((count,), label, dtype=torch.int64) for label, count in runs])


# ----------------------------------------------------------------------------- statistics edges
def test_statistics_domains_and_return_types():
    """Each statistic accepts the edges of its domain, refuses what lies outside with a
    message naming the argument, and returns a float for scalars, an array for arrays."""
    assert isinstance(lower_confidence_bound(3, 10, 0.05), float)
    assert lower_confidence_bound(0, 1, 0.05) == 0.0 and lower_confidence_bound(1, 1, 0.05) == pytest.approx(0.05)
    arr = lower_confidence_bound(np.array([0, 5, 10]), 10, 0.05)
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)
    np.testing.assert_allclose(arr, [0.0, beta_dist.ppf(0.05, 5, 6), 0.05 ** 0.1], rtol=1e-12)
    for n_a, n in ((-1, 10), (11, 10), (0, 0)):
        with pytest.raises(ValueError, match=r"^need 0 <= n_a <= n and n >= 1$"):
            lower_confidence_bound(n_a, n, 0.05)
    assert isinstance(radius_from_bound(0.9, 0.5), float)
    assert radius_from_bound(0.9, 0.5) == pytest.approx(0.5 * norm.ppf(0.9), rel=1e-12)
    np.testing.assert_allclose(radius_from_bound(np.array([0.5, 0.975]), 2.0), [0.0, 2 * norm.ppf(0.975)])
    assert r_max(1.0, 1, 0.5) == pytest.approx(0.0, abs=1e-12)  # one sample: PhiInv(alpha)
    with pytest.raises(ValueError, match=r"^n must be .*1.*got 0$"):
        r_max(1.0, 0, 0.5)
    for fn, args in ((lower_confidence_bound, (1, 2)), (r_max, (1.0, 10))):
        for alpha in (0.0, 1.0):
            with pytest.raises(ValueError, match="alpha"):
                fn(*args, alpha)
    # certified accuracy bound: m >= 1, 0 <= y <= m, rho in (0, 1), default rho = 0.001
    assert certified_accuracy_lower_bound(1, 1, 0.001) == certified_accuracy_lower_bound(1, 1, 0.001, 0.001)
    assert certified_accuracy_lower_bound(0, 5, 0.001, 0.5) < 0 < certified_accuracy_lower_bound(5, 5, 0.001, 0.5)
    for y, m, rho, msg in ((1, 0, 0.5, r"^m must .*got 0$"),
                           (-1, 5, 0.5, r"^y_certified must .*got -1$"),
                           (6, 5, 0.5, r"^y_certified must .*got 6$"),
                           (1, 5, 0.0, r"^rho must .*got 0.0$"),
                           (1, 5, 1.0, r"^rho must .*got 1.0$")):
        with pytest.raises(ValueError, match=msg):
            certified_accuracy_lower_bound(y, m, 0.001, rho)
    # vectorized p-values: no trials -> 1, and equal to the scalar test
    np.testing.assert_array_equal(binom_pvalues([0, 3, 7], [0, 3, 1]), [1.0, 1.0, binom_pvalue(7, 1)])


# ----------------------------------------------------------------------------- CERTIFY
def _certify_boundary(n, alpha):
    """The smallest n_a whose (1 - alpha) Clopper-Pearson lower bound is >= 1/2."""
    n_a = np.arange(1, n + 1)
    bounds = beta_dist.ppf(alpha, n_a, n - n_a + 1)
    first = int(np.argmax(bounds >= 0.5))
    return int(n_a[first]), float(bounds[first - 1]), float(bounds[first])


@pytest.mark.parametrize("n,alpha", [(1000, 0.001), (10_000, 0.01)])
def test_certify_abstains_just_below_one_half_and_certifies_just_above(n, alpha):
    """Mutation `p_lower >= 0.5` -> `>= 0.3` (or any threshold below the bound just under
    1/2) certifies the first case; a wrong radius formula fails the second."""
    n0, sigma = 50, 0.25
    n_star, below, above = _certify_boundary(n, alpha)
    assert 0.49 < below < 0.5 <= above < 0.51  # the construction sits on the boundary

    # n_star - 1 votes for the selected class: p_lower just below 1/2 -> abstain
    g = SmoothedClassifier(Scripted(_script((2, n0), (2, n_star - 1), (0, n - n_star + 1))), 3, sigma)
    res = g.certify_batch(torch.zeros(1, 1, 2, 2), n0, n, alpha, batch_size=n)
    assert int(res.counts_estimation[0, 2]) == n_star - 1
    assert float(res.p_lower[0]) == pytest.approx(below, rel=1e-12)
    assert int(res.prediction[0]) == ABSTAIN
    assert float(res.radius[0]) == 0.0
    assert res.norm == "l2"  # Gaussian noise certifies an l2 radius

    # n_star votes: p_lower just at/above 1/2 -> certify class 2 at sigma * PhiInv(p_lower)
    g = SmoothedClassifier(Scripted(_script((2, n0), (2, n_star), (0, n - n_star))), 3, sigma)
    label, radius = g.certify(torch.zeros(1, 2, 2), n0, n, alpha, batch_size=n)
    assert label == 2
    assert radius == pytest.approx(sigma * norm.ppf(above), rel=1e-9, abs=1e-15)
    assert 0.0 <= radius < 0.01 * sigma


@pytest.mark.parametrize("n,alpha", [(1000, 0.001)])
def test_adaptive_certify_with_one_look_has_the_same_boundary(n, alpha):
    """The adaptive path with a single look at n (alpha / 1) is CERTIFY at radius 0: it
    abstains at n_star - 1 votes and certifies at n_star."""
    from smoothguard.smoothing.adaptive import certify_adaptive

    n0 = 50
    n_star, below, above = _certify_boundary(n, alpha)
    for votes, certified, bound in ((n_star - 1, False, below), (n_star, True, above)):
        g = SmoothedClassifier(Scripted(_script((2, n0), (2, votes), (0, n - votes))), 3, 0.25)
        res = certify_adaptive(g, torch.zeros(1, 1, 2, 2), [], n0=n0, n_max=n, alpha=alpha, batch_size=n,
                               schedule=[n])
        assert float(res.p_lower[0]) == pytest.approx(bound, rel=1e-12)
        assert int(res.prediction[0]) == (2 if certified else ABSTAIN)
        assert float(res.radius[0]) == 0.0


def test_certify_uses_the_selected_class_counts_of_fresh_samples():
    """Selection picks class 1 from the first n0 samples; the estimation samples (a fresh
    run) are counted for class 1 even when another class wins them."""
    n0, n, alpha, sigma = 20, 500, 0.001, 0.5
    g = SmoothedClassifier(Scripted(_script((1, n0), (0, 300), (1, 200))), 2, sigma)
    res = g.certify_batch(torch.zeros(1, 1, 1, 1), n0, n, alpha, batch_size=64)
    assert res.counts_selection[0].tolist() == [0, n0]
    assert res.counts_estimation[0].tolist() == [300, 200]
    assert float(res.p_lower[0]) == pytest.approx(beta_dist.ppf(alpha, 200, n - 200 + 1), rel=1e-12)
    assert int(res.prediction[0]) == ABSTAIN  # class 1 has only 200 of 500: no certificate

    g = SmoothedClassifier(Scripted(_script((1, n0), (1, 450), (0, 50))), 2, sigma)
    res = g.certify_batch(torch.zeros(1, 1, 1, 1), n0, n, alpha, batch_size=64)
    p = beta_dist.ppf(alpha, 450, 51)
    assert int(res.prediction[0]) == 1
    assert float(res.radius[0]) == pytest.approx(sigma * norm.ppf(p), rel=1e-9)


class _Threshold:
    """f(x + d) = 0 when the first noisy coordinate exceeds t, else 1 or 2 by the sign of
    the second: with x = 0, P(class 0) = 1 - Phi(t / sigma) exactly."""

    def __init__(self, t):
        self.t = t

    def __call__(self, z):
        z = z.flatten(1)
        other = torch.where(z[:, 1] > 0, 1, 2)
        return torch.where(z[:, 0] > self.t, 0, other).to(torch.int64)


@pytest.mark.parametrize("p_a,certified", [(0.47, False), (0.53, True)])
def test_certify_on_a_threshold_classifier_around_one_half(p_a, certified):
    """With p_A = 0.47 the bound from 100k samples stays below 1/2 (abstain; the `>= 0.3`
    mutation certifies); with 0.53 it is above (certify, radius below the true
    sigma * PhiInv(p_A)). Seeded; the margins are > 6 standard errors."""
    sigma, n0, n, alpha = 0.5, 1000, 100_000, 0.001
    g = SmoothedClassifier(_Threshold(sigma * norm.ppf(1 - p_a)), 3, sigma)
    res = g.certify_batch(torch.zeros(1, 1, 1, 2), n0, n, alpha, batch_size=20_000, seeds=[11])
    assert int(res.counts_selection[0].argmax()) == 0
    assert float(res.counts_estimation[0, 0]) / n == pytest.approx(p_a, abs=6 * math.sqrt(0.25 / n))
    if certified:
        assert int(res.prediction[0]) == 0
        assert 0.0 < float(res.radius[0]) < sigma * norm.ppf(p_a)
    else:
        assert int(res.prediction[0]) == ABSTAIN and float(res.radius[0]) == 0.0


def test_certify_at_p_lower_exactly_one_half_certifies_with_radius_zero():
    """Cohen's rule abstains only when p_lower < 1/2: with 2 of 3 votes at alpha = 1/2 the
    bound is the median of Beta(2, 2), exactly 1/2 (kills `>= 0.5` -> `> 0.5`)."""
    assert beta_dist.ppf(0.5, 2, 2) == 0.5
    g = SmoothedClassifier(Scripted(_script((1, 5), (1, 2), (0, 1))), 2, 0.5)
    res = g.certify_batch(torch.zeros(1, 1, 1, 1), 5, 3, 0.5)
    assert float(res.p_lower[0]) == 0.5
    assert int(res.prediction[0]) == 1 and float(res.radius[0]) == 0.0


class _Recording(_Threshold):
    """_Threshold that records the size of every forward batch it is given."""

    def __init__(self, t):
        super().__init__(t)
        self.sizes = []

    def __call__(self, z):
        self.sizes.append(z.shape[0])
        return super().__call__(z)


def test_seeds_and_generators_make_each_images_answer_reproducible():
    """Per-image seeds: certify_batch equals certify image by image, and predict likewise;
    the same generator seed reproduces a run, another seed changes the counts."""
    g = SmoothedClassifier(_Threshold(0.0), 3, 0.5)
    xs = torch.zeros(2, 1, 1, 2)
    batch = g.certify_batch(xs, 30, 300, 0.01, seeds=[5, 9])
    for i, seed in enumerate((5, 9)):
        one = g.certify_batch(xs[i:i + 1], 30, 300, 0.01, seeds=[seed])
        assert torch.equal(one.counts_selection[0], batch.counts_selection[i])
        assert torch.equal(one.counts_estimation[0], batch.counts_estimation[i])
        assert g.certify(xs[i], 30, 300, 0.01, seed=seed) == (int(batch.prediction[i]), float(batch.radius[i]))
    assert not torch.equal(batch.counts_estimation[0], batch.counts_estimation[1])
    # selection and estimation are different draws of one stream
    assert not torch.equal(batch.counts_selection * 10, batch.counts_estimation)

    pb = g.predict_batch(xs, 300, 0.01, seeds=[5, 9])
    for i, seed in enumerate((5, 9)):
        assert torch.equal(g.predict_batch(xs[i:i + 1], 300, 0.01, seeds=[seed]).counts[0], pb.counts[i])
        assert g.predict(xs[i], 300, 0.01, seed=seed) == int(pb.prediction[i])

    def counts(fn, seed, **kw):
        return fn(xs, *kw.pop("args"), generator=torch.Generator().manual_seed(seed), **kw)

    c1 = counts(g.certify_batch, 3, args=(30, 300, 0.01))
    c2 = counts(g.certify_batch, 3, args=(30, 300, 0.01))
    c3 = counts(g.certify_batch, 4, args=(30, 300, 0.01))
    assert torch.equal(c1.counts_estimation, c2.counts_estimation)
    assert not torch.equal(c1.counts_estimation, c3.counts_estimation)
    p1 = counts(g.predict_batch, 3, args=(300, 0.01))
    assert torch.equal(p1.counts, counts(g.predict_batch, 3, args=(300, 0.01)).counts)
    assert not torch.equal(p1.counts, counts(g.predict_batch, 4, args=(300, 0.01)).counts)
    draws = {g.certify_batch(xs[:1], 30, 300, 0.01, generator=torch.Generator().manual_seed(s)).counts_estimation[0, 0]
             for s in range(4)}
    assert len(draws) > 1


class _Vote:
    """Two classes: 0 when the first noisy coordinate exceeds sigma * PhiInv(1 - p), so
    P(class 0) = p at x = 0."""

    def __init__(self, p, sigma):
        self.t = sigma * norm.ppf(1 - p)

    def __call__(self, z):
        return (z.flatten(1)[:, 0] <= self.t).long()


def test_single_image_calls_pass_their_seed_or_generator_through():
    """certify(seed=s) / predict(seed=s) answer exactly as the batch call with seeds=[s],
    and a generator seeded alike gives the same answer, on constructions where the answer
    depends on the noise (a radius from p_A = 0.8; PREDICT at its decision boundary)."""
    sigma = 0.5
    x = torch.zeros(1, 1, 2)
    cert = SmoothedClassifier(_Vote(0.8, sigma), 2, sigma)
    pred = SmoothedClassifier(_Vote(0.6, sigma), 2, sigma)
    radii, answers = set(), set()
    for s in range(12):
        one = cert.certify(x, 20, 300, 0.01, seed=s)
        batch = cert.certify_batch(x[None], 20, 300, 0.01, seeds=[s])
        assert one == (int(batch.prediction[0]), float(batch.radius[0]))
        radii.add(one[1])
        viagen = cert.certify(x, 20, 300, 0.01, generator=torch.Generator().manual_seed(100 + s))
        batch = cert.certify_batch(x[None], 20, 300, 0.01, generator=torch.Generator().manual_seed(100 + s))
        assert viagen == (int(batch.prediction[0]), float(batch.radius[0]))
        radii.add(viagen[1])
        label = pred.predict(x, 100, 0.05, seed=s)
        assert label == int(pred.predict_batch(x[None], 100, 0.05, seeds=[s]).prediction[0])
        answers.add(label)
        label = pred.predict(x, 100, 0.05, generator=torch.Generator().manual_seed(100 + s))
        gen = torch.Generator().manual_seed(100 + s)
        assert label == int(pred.predict_batch(x[None], 100, 0.05, generator=gen).prediction[0])
        answers.add(label)
    assert len(radii) > 10 and answers == {0, ABSTAIN}  # the answers do depend on the noise


@pytest.mark.parametrize("batch_size", [40, 250])
def test_forward_batches_never_exceed_batch_size(batch_size):
    f = _Recording(0.0)
    g = SmoothedClassifier(f, 3, 0.5)
    g.certify_batch(torch.zeros(2, 1, 1, 2), 30, 500, 0.01, batch_size, seeds=[1, 2])
    g.certify(torch.zeros(1, 1, 2), 30, 500, 0.01, batch_size, seed=1)
    g.predict_batch(torch.zeros(2, 1, 1, 2), 500, 0.01, batch_size, seeds=[1, 2])
    g.predict(torch.zeros(1, 1, 2), 500, 0.01, batch_size, seed=1)
    assert min(batch_size, 200) <= max(f.sizes) <= batch_size  # (blocks of min(100, batch_size) packed)
    assert sum(f.sizes) == 2 * 530 + 530 + 2 * 500 + 500


def test_certify_and_predict_validate_their_arguments():
    g = SmoothedClassifier(_Threshold(0.0), 3, 0.5, in_shape=(1, 1, 2))
    x = torch.zeros(1, 1, 2)
    for n0, n, bad in ((0, 10, "n0"), (10, 0, "n")):
        with pytest.raises(ValueError, match=rf"^{bad} must be an integer >= 1; got 0$"):
            g.certify(x, n0, n, 0.01)
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1; got 0$"):
        g.predict(x, 0, 0.01)
    assert g.certify(x, 1, 1, 0.01, seed=0) == (ABSTAIN, 0.0)  # n0 = n = 1 are allowed
    assert g.predict(x, 1, 0.01, seed=0) == ABSTAIN
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha"):
            g.certify(x, 10, 10, alpha)
        with pytest.raises(ValueError, match="alpha"):
            g.predict(x, 10, alpha)
    with pytest.raises(ValueError, match=r"^x must be a torch.Tensor"):
        g.certify_batch([[0.0, 0.0]], 10, 10, 0.01)
    with pytest.raises(ValueError, match=r"^x must be a torch.Tensor"):
        g.certify([[0.0, 0.0]], 10, 10, 0.01)
    with pytest.raises(ValueError, match=r"^x must be a torch.Tensor"):
        g.predict([[0.0, 0.0]], 10, 0.01)
    with pytest.raises(ValueError, match=r"^x has images of shape \(1, 2, 1\)"):
        g.certify_batch(torch.zeros(1, 1, 2, 1), 10, 10, 0.01)
    two = torch.zeros(2, 1, 1, 2)
    with pytest.raises(ValueError, match=r"^certify\(\) takes one image.*got 2 images.*Use certify_batch\(\)"):
        g.certify(two, 10, 10, 0.01)
    with pytest.raises(ValueError, match=r"^predict\(\) takes one image.*Use predict_batch\(\)"):
        g.predict(two, 10, 0.01)


# ----------------------------------------------------------------------------- PREDICT
def _pvalue_case(n=100):
    """Counts (n_a, n_b) whose two-sided p-value lies in (0.005, 0.02)."""
    for n_a in range(n // 2, n + 1):
        p = binomtest(n_a, n, 0.5).pvalue
        if 0.005 < p < 0.02:
            return n_a, n - n_a, p
    raise AssertionError("no case")


def test_predict_threshold_is_the_exact_binomial_pvalue_at_alpha():
    """PREDICT answers iff p-value <= alpha: at alpha = p it answers (kills `<`), just
    below p it abstains, and at alpha = p / 3.9 it abstains (kills `p <= 4 alpha`)."""
    n_a, n_b, p = _pvalue_case()
    n = n_a + n_b

    def run(alpha):
        g = SmoothedClassifier(Scripted(_script((1, n_a), (0, n_b))), 2, 0.25)
        res = g.predict_batch(torch.zeros(1, 1, 1, 1), n, alpha, batch_size=n)
        assert res.counts[0].tolist() == [n_b, n_a]
        return int(res.prediction[0]), float(res.pvalue[0])

    label, pvalue = run(p)
    assert pvalue == pytest.approx(p, rel=1e-12)
    assert label == 1
    assert run(math.nextafter(p, 0.0))[0] == ABSTAIN
    assert run(p / 3.9)[0] == ABSTAIN
    assert run(p / 1.01)[0] == ABSTAIN
    assert run(min(0.5, 1.01 * p))[0] == 1


class _Coin:
    """Query-only classifier: class 0 with probability p, else class 1 (its own generator)."""

    def __init__(self, p, seed):
        self.p = p
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        return (torch.rand(x.shape[0], generator=self.gen) >= self.p).long()


def _predict_rates(n, p, alpha):
    """Exact probabilities that PREDICT on Bin(n, p) votes for class 0 returns class 1
    (wrong) and class 0, at threshold alpha (two-sided exact test on the top two)."""
    k = np.arange(n + 1)  # votes for class 0
    pmf = binom.pmf(k, n, p)
    pv = np.minimum(1.0, 2 * binom.sf(np.maximum(k, n - k) - 1, n, 0.5))
    decided = pv <= alpha
    return float(pmf[decided & (k < n - k)].sum()), float(pmf[decided & (k > n - k)].sum())


def test_predict_error_rate_is_at_most_alpha_and_a_looser_threshold_is_detected():
    """g(x) = class 0 with p = 0.51: PREDICT returns class 1 with probability ~0.019 at
    alpha = 0.05 (exact: see _predict_rates); a 4x looser threshold would return it with
    probability ~0.072. 6000 seeded draws: standard error 0.0018 (0.0033 under the
    mutation), so the observed rate is checked against the exact one within 4 standard
    errors, and against alpha."""
    n, p, alpha, reps = 100, 0.51, 0.05, 6000
    want_wrong, want_right = _predict_rates(n, p, alpha)
    loose_wrong, _ = _predict_rates(n, p, 4 * alpha)
    se = math.sqrt(want_wrong * (1 - want_wrong) / reps)
    assert want_wrong < alpha and loose_wrong > alpha + 4 * se  # the test can tell them apart

    g = SmoothedClassifier(_Coin(p, seed=7), 2, 0.25)
    res = g.predict_batch(torch.zeros(reps, 1, 1, 1), n, alpha, batch_size=20_000, seeds=list(range(reps)))
    wrong = float((res.prediction == 1).float().mean())
    right = float((res.prediction == 0).float().mean())
    assert wrong <= alpha
    assert wrong == pytest.approx(want_wrong, abs=4 * se)
    assert right == pytest.approx(want_right, abs=4 * math.sqrt(want_right * (1 - want_right) / reps))


# ----------------------------------------------------------------------------- PGD / APGD
class TwoPeaks(nn.Module):
    """One-pixel model whose CE loss (label 0) has two local maxima in the ball around
    0.5 (eps 0.3): h(v) = max(-2 - 10|v - 0.3|, -1 - 10|v - 0.7|), logits (0, h). The
    basins meet at v = 0.45; class 1 is never reached (h <= -1), so the attacks keep the
    highest-loss point. Every forward input is recorded while ``record`` is set."""

    LOW, HIGH = 0.3, 0.7

    def __init__(self):
        super().__init__()
        self.record = False
        self.seen = []

    @staticmethod
    def h(v):
        return torch.maximum(-2 - 10 * (v - 0.3).abs(), -1 - 10 * (v - 0.7).abs())

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        if self.record:
            self.seen.append(v.detach().clone())
        h = self.h(v)
        return torch.stack([torch.zeros_like(h), h], 1)


def _two_peak_run(attack_cls, **kw):
    model = TwoPeaks()
    atk = attack_cls(model, norm="linf", eps=0.3, seed=0, sanity_checks=False, **kw)
    n = 64
    x = torch.full((n, 1, 1, 1), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    model.record = True
    res = atk.run(x, y)
    model.record = False
    return model, atk, res


def _dist_to_nearest_peak(v):
    return torch.minimum((v - TwoPeaks.LOW).abs(), (v - TwoPeaks.HIGH).abs())


@pytest.mark.parametrize("attack_cls,kw", [
    (PGD, dict(steps=10, step_size=0.07, restarts=4)),
    (APGD, dict(steps=20, restarts=4)),
], ids=["pgd", "apgd"])
def test_attack_returns_the_worst_point_it_examined_over_steps_and_restarts(attack_cls, kw):
    """The returned point has the highest loss of every point the attack evaluated (all
    iterates of all restarts): killed by returning the last iterate, or letting each
    restart overwrite the best. The reported per-restart losses agree with it."""
    model, atk, res = _two_peak_run(attack_cls, **kw)
    # no image is ever fooled (class 1 is unreachable), so every forward holds all 64
    assert model.seen and all(s.shape[0] == 64 for s in model.seen)
    h_best = torch.stack([TwoPeaks.h(s) for s in model.seen]).max(0).values
    v = res.x_adv.flatten(1)[:, 0]
    h_ret = TwoPeaks.h(v)
    torch.testing.assert_close(h_ret, h_best, rtol=0, atol=1e-6)
    assert not bool(res.success.any())
    # per-restart losses: the returned point's loss is their maximum
    ce_ret = F.softplus(h_ret)
    torch.testing.assert_close(ce_ret, res.losses.max(dim=1).values, rtol=1e-6, atol=1e-6)
    # whenever some restart reached the high basin (loss > the low peak's), the returned
    # point is in the high basin; with 4 restarts most images get there
    high = res.losses.max(dim=1).values > float(F.softplus(torch.tensor(-2.0)))
    assert bool((v[high] > 0.45).all())
    assert int(high.sum()) >= 48


def test_pgd_paper_defaults_start_rule_and_parameter_names():
    """The library's l_inf radius by default (smoothguard.defaults: 0.1; l_2: 1.0) with Madry
    et al.'s 40 steps of 2.5 eps / 40, one restart, deterministic model (eot 1);
    random_start=False starts at x (one step of 0.01 is then exactly x + 0.01 sign(g));
    errors name the parameter."""
    model = TwoPeaks()
    atk = PGD(model, sanity_checks=False)
    assert (atk.norm, atk.eps, atk.steps, atk.alpha, atk.restarts, atk.eot, atk.random_start, atk.kappa) == (
        "linf", 0.1, 40, 2.5 * 0.1 / 40, 1, 1, True, math.inf)
    assert PGD(model, norm="l2").eps == 1.0
    assert PGD(model).sanity_checks and not atk.sanity_checks
    x = torch.full((4, 1, 1, 1), 0.5)  # h rises towards the high peak at 0.7
    for seed in (0, 1):
        fixed = PGD(model, eps=0.3, steps=1, step_size=0.01, random_start=False, seed=seed, sanity_checks=False)
        torch.testing.assert_close(fixed(x, torch.zeros(4, dtype=torch.long)), x + 0.01, rtol=0, atol=1e-7)
    for kw, name in ((dict(steps=0), "steps"), (dict(restarts=0), "restarts"), (dict(step_size=-1.0), "step_size")):
        with pytest.raises(ValueError, match=rf"^{name} must"):
            PGD(model, **kw)


def test_pgd_keeps_the_best_iterate_when_its_steps_oscillate_around_a_peak():
    """Sign steps of 0.07 bounce across each peak: the best iterate is within 0.035 of the
    peak, the last iterate often is not (shown with ``return_last``). Independent of the
    attack's own loss bookkeeping."""
    model, atk, res = _two_peak_run(PGD, steps=10, step_size=0.07, restarts=1)
    v = res.x_adv.flatten(1)[:, 0]
    assert bool((_dist_to_nearest_peak(v) <= 0.035 + 1e-6).all())
    # the construction is discriminating: the last iterates are often farther away
    atk.return_last = True
    last = atk(torch.full((64, 1, 1, 1), 0.5), torch.zeros(64, dtype=torch.long)).flatten(1)[:, 0]
    assert int((_dist_to_nearest_peak(last) > 0.035 + 1e-3).sum()) >= 10


def test_pgd_restarts_find_the_higher_peak_that_one_restart_can_miss():
    """One restart lands in the low basin for about half the images; four restarts leave
    only ~1/16 there. The returned loss never decreases when restarts are added (same
    seed: the first restart is the same run)."""
    _, _, one = _two_peak_run(PGD, steps=10, step_size=0.07, restarts=1)
    _, _, four = _two_peak_run(PGD, steps=10, step_size=0.07, restarts=4)
    v1, v4 = one.x_adv.flatten(1)[:, 0], four.x_adv.flatten(1)[:, 0]
    assert 16 <= int((v1 < 0.45).sum()) <= 48
    assert int((v4 < 0.45).sum()) <= 12
    assert bool((TwoPeaks.h(v4) >= TwoPeaks.h(v1) - 1e-6).all())


class Centers(nn.Module):
    """One-pixel, three classes: the class whose center (0.1, 0.5, 0.9) is nearest wins."""

    def forward(self, x):
        v = x.flatten(1)[:, :1]
        return -50 * (v - torch.tensor([[0.1, 0.5, 0.9]])) ** 2


@pytest.mark.parametrize("attack_cls", [PGD, APGD])
def test_targeted_attack_still_attacks_a_point_misclassified_as_another_class(attack_cls):
    """x = 0.45 is classified 1 with label 0: already misclassified, but not as the target
    2, so a targeted attack is not done yet; the target region (v > 0.7) is inside the
    ball (eps 0.3). Counting the clean misclassification as success leaves x unattacked."""
    atk = attack_cls(Centers(), norm="linf", eps=0.3, steps=20, seed=0, sanity_checks=False)
    res = atk.run(torch.full((1, 1, 1, 1), 0.45), torch.tensor([0]), targets=torch.tensor([2]))
    assert int(res.clean_pred[0]) == 1
    assert bool(res.success[0]) and int(res.adv_pred[0]) == 2


def test_pgd_stops_attacking_a_point_once_fooled_and_skips_its_later_restarts():
    """Image A (x = 0.7) is fooled within the first restart (class 1 for v > 0.75), image B
    (x = 0.2) never: A's later restarts are skipped (NaN losses), B's all run."""
    class Edge(nn.Module):
        def forward(self, x):
            h = 10 * (x.flatten(1)[:, 0] - 0.75)
            return torch.stack([torch.zeros_like(h), h], 1)

    atk = PGD(Edge(), norm="linf", eps=0.3, steps=10, step_size=0.05, restarts=3, seed=0, sanity_checks=False)
    res = atk.run(torch.tensor([0.7, 0.2]).view(2, 1, 1, 1), torch.tensor([0, 0]))
    assert res.success.tolist() == [True, False]
    assert bool(torch.isfinite(res.losses[0, 0])) and bool(torch.isnan(res.losses[0, 1:]).all())
    assert bool(torch.isfinite(res.losses[1]).all())


class _Peak(nn.Module):
    """One pixel, label 0, CE loss softplus(h) with h = -1 - 10 |v - PEAK|: a single
    peak inside the ball; sign steps larger than the distance to it overshoot. Every
    forward input is recorded."""

    PEAK = 0.6137

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        self.seen.append(v.detach().clone())
        h = -1 - 10 * (v - self.PEAK).abs()
        return torch.stack([torch.zeros_like(h), h], 1)


def _paper_checkpoints(n_iter):
    """w_j = ceil(p_j N_iter), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * n_iter, 6)) for q in p[1:]})


def _apgd_paper_path(f, df, x0, eps, n_iter, alpha=0.75, rho=0.75):
    """Croce & Hein (2020), Algorithm 1, for one scalar coordinate on the l_inf ball and
    [0, 1]: eta = 2 eps; x1 = P(x0 + eta sign f'(x0)); then z = P(x_k + eta sign f'(x_k)),
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})); at a checkpoint w_j the
    step halves and x restarts at x_max (no momentum) when condition 1 (the loss rose in
    fewer than rho (w_j - w_{j-1}) steps) or condition 2 (no halving at w_{j-1} and no new
    f_max since) holds; condition 2 is not tested at w_1. Returns the iterates x1..xN."""
    def proj(v):
        return min(max(v, x0 - eps, 0.0), x0 + eps, 1.0)

    def sign(v):
        return (v > 0) - (v < 0)

    checkpoints = [w for w in _paper_checkpoints(n_iter) if w < n_iter]
    eta, x, x_prev = 2 * eps, x0, x0
    fx = f(x)
    x_max, f_max, f_max_before, halved_before = x, fx, fx, True
    rises, last_w, path = 0, 0, []
    for k in range(n_iter):
        a = 1.0 if k == 0 else alpha
        z = proj(x + eta * sign(df(x)))
        x, x_prev = proj(x + a * (z - x) + (1 - a) * (x - x_prev)), x
        f_new = f(x)
        path.append(x)
        rises += f_new > fx
        fx = f_new
        if fx > f_max:
            x_max, f_max = x, fx
        if k + 1 in checkpoints:
            w = k + 1
            halve = rises < rho * (w - last_w) or (not halved_before and f_max_before >= f_max)
            if halve:
                eta /= 2
                x = x_prev = x_max
                fx = f_max
            halved_before, f_max_before, rises, last_w = halve, f_max, 0, w
    return path


@pytest.mark.parametrize("n_iter", [12, 40])
def test_apgd_iterates_follow_the_papers_algorithm_on_a_one_pixel_peak(n_iter):
    """Step 2 eps, momentum 0.75 after a first plain step, halving and restart at the best
    point at the checkpoints under conditions 1 and 2: the points APGD queries are those of
    Algorithm 1 written out by hand for one coordinate (four starts, so the per-image
    halving decisions differ). E.g. from 0.5: 0.8, then 0.8 + 0.75 (0.2 - 0.8) + 0.25 (0.8
    - 0.5) = 0.425 (no momentum would give 0.2, momentum 0.5 gives 0.65)."""
    starts = [0.5, 0.41, 0.77, 0.45]
    model = _Peak()
    atk = APGD(model, norm="linf", eps=0.3, steps=n_iter, random_start=False, seed=0, sanity_checks=False)
    x = torch.tensor(starts).view(-1, 1, 1, 1)
    x_adv = atk.perturb(x, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    seen = torch.stack(model.seen).double()  # loss at x, the start x, then x1 .. xN
    assert seen.shape == (n_iter + 2, 4)
    torch.testing.assert_close(seen[0], x.flatten().double(), rtol=0, atol=0)
    torch.testing.assert_close(seen[1], x.flatten().double(), rtol=0, atol=0)

    def f(v):
        return -abs(v - _Peak.PEAK)

    def df(v):
        return -1.0 if v > _Peak.PEAK else 1.0

    for i, x0 in enumerate(starts):
        want = _apgd_paper_path(f, df, float(np.float32(x0)), 0.3, n_iter)
        np.testing.assert_allclose(seen[2:, i].numpy(), want, rtol=0, atol=2e-6, err_msg=f"start {x0}")
    assert float(seen[3, 0]) == pytest.approx(0.425, abs=1e-6)
    # the returned point is the best one queried; with the halvings it nears the peak
    best = seen[1:].gather(0, (seen[1:] - _Peak.PEAK).abs().argmin(0, keepdim=True))[0]
    torch.testing.assert_close(x_adv.flatten().double(), best, rtol=0, atol=1e-7)
    if n_iter == 40:
        assert float((x_adv.flatten() - _Peak.PEAK).abs().max()) < 2e-3


def test_apgd_step_halving_is_what_reaches_an_interior_peak():
    """Without halving, the 2 eps = 0.6 step keeps bouncing between the ball's faces and
    the momentum mixtures; with it, APGD ends within 1e-3 of a peak that no fixed grid of
    the first steps contains, and its late steps are short."""
    model = _Peak()
    atk = APGD(model, norm="linf", eps=0.3, steps=100, random_start=False, seed=0, sanity_checks=False)
    x = torch.tensor([0.5, 0.41, 0.77, 0.45]).view(-1, 1, 1, 1)
    x_adv = atk.perturb(x, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    seen = torch.stack(model.seen)
    first = (seen[2:12] - _Peak.PEAK).abs().min(0).values
    assert bool((first > 1e-3).all())  # the first ten iterates stay away from the peak
    assert float((x_adv.flatten() - _Peak.PEAK).abs().max()) < 1e-3
    late_moves = (seen[-10:] - seen[-11:-1]).abs().max()
    assert float(late_moves) < 0.6 / 2 ** 5


class _Window(nn.Module):
    """One pixel, three classes, label 0. Class 1 wins only inside (lo, hi) (its logit is
    0.05 there and -0.5 elsewhere, without gradient); class 2 never wins (logit h2 < 0)
    but raises the loss where h2 is high, so a non-adversarial point can have a higher
    loss than an adversarial one."""

    def __init__(self, lo, hi, h2):
        super().__init__()
        self.lo, self.hi, self.h2 = lo, hi, h2
        self.seen = []

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        self.seen.append(v.detach().clone())
        h1 = torch.where((v > self.lo) & (v < self.hi), 0.05, -0.5) + 0 * v
        return torch.stack([torch.zeros_like(v), h1, self.h2(v)], 1)


def _ce(model, v):
    with torch.no_grad():
        return F.cross_entropy(model(v.view(-1, 1, 1, 1)), torch.zeros(v.numel(), dtype=torch.long), reduction="none")


def test_pgd_returns_its_first_adversarial_point_though_a_later_step_has_higher_loss():
    """From 0.5, steps of 0.07 reach 0.57 (class 1: fooled), and one more step would reach
    0.64 (class 0 again, higher loss, zero gradient after). PGD stops attacking the fooled
    point, so the returned example is adversarial; the control that keeps ascending
    (stop_on_success off) returns 0.64."""
    model = _Window(0.55, 0.6, lambda v: torch.clamp(-2 + 25 * (v - 0.57), max=-0.3))
    assert float(_ce(model, torch.tensor([0.64]))) > float(_ce(model, torch.tensor([0.57]))) + 0.05
    atk = PGD(model, norm="linf", eps=0.3, steps=5, step_size=0.07, random_start=False, seed=0,
              sanity_checks=False)
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    res = atk.run(x, y)
    assert bool(res.success[0]) and int(res.adv_pred[0]) == 1
    assert float(res.x_adv.flatten()[0]) == pytest.approx(0.57, abs=1e-6)
    assert float(res.losses[0, 0]) == pytest.approx(float(_ce(model, torch.tensor([0.57]))), rel=1e-6)
    atk.stop_on_success = False
    later = atk.run(x, y)
    assert float(later.x_adv.flatten()[0]) == pytest.approx(0.64, abs=1e-6) and not bool(later.success[0])


def test_apgd_returns_its_first_adversarial_point_though_later_iterates_have_higher_loss():
    """APGD's first step lands at 0.8 (class 1: fooled); the loss then pulls it towards
    0.6137 (class 0, higher loss). The returned point is the first success, with its loss;
    the points queried after it include non-adversarial ones of higher loss."""
    model = _Window(0.78, 0.82, lambda v: -0.3 - 10 * (v - 0.6137).abs())
    atk = APGD(model, norm="linf", eps=0.3, steps=20, random_start=False, seed=0, sanity_checks=False)
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    res = atk.run(x, y)
    assert bool(res.success[0]) and int(res.adv_pred[0]) == 1
    assert float(res.x_adv.flatten()[0]) == pytest.approx(0.8, abs=1e-6)
    ce_first = float(_ce(model, torch.tensor([0.8])))
    assert float(res.losses[0, 0]) == pytest.approx(ce_first, rel=1e-6)
    queried = torch.cat(model.seen)
    outside = queried[(queried < 0.78) | (queried > 0.82)]
    assert float(_ce(model, outside).max()) > ce_first + 0.05


def test_apgd_restarts_skip_fooled_points_and_keep_the_best_over_runs():
    """Image A is fooled in the first run (NaN losses for its later runs); image B (peak
    model, never fooled) runs every restart, and its returned loss is the best run's."""
    model = _Window(0.78, 0.82, lambda v: -0.3 - 10 * (v - 0.6137).abs())
    atk = APGD(model, norm="linf", eps=0.3, steps=6, restarts=3, seed=6, sanity_checks=False)
    x = torch.tensor([0.5, 0.45]).view(2, 1, 1, 1)  # from 0.45 the window (0.78, 0.82) is out of reach
    res = atk.run(x, torch.tensor([0, 0]))
    assert res.success.tolist() == [True, False]
    assert bool(torch.isfinite(res.losses[0, 0])) and bool(torch.isnan(res.losses[0, 1:]).all())
    assert bool(torch.isfinite(res.losses[1]).all())
    assert len(set(res.losses[1].tolist())) == 3  # random starts: three different runs
    assert float(res.losses[1].argmax()) != 2  # here the best run is not the last one
    ce_b = float(_ce(model, res.x_adv.flatten()[1:]))
    assert ce_b == pytest.approx(float(res.losses[1].max()), rel=1e-6)


def test_apgd_on_already_fooled_points_and_float64_models():
    """Points misclassified before the attack are returned unchanged with NaN losses (no
    run is spent on them; with every point fooled the attack ends at once), and a float64
    model's losses stay float64."""
    model = _Window(0.78, 0.82, lambda v: -0.3 - 10 * (v - 0.6137).abs())
    for restarts in (1, 3):
        atk = APGD(model, norm="linf", eps=0.3, steps=5, restarts=restarts, seed=0, sanity_checks=False)
        x = torch.full((2, 1, 1, 1), 0.8)  # inside the class-1 window: already fooled
        res = atk.run(x, torch.tensor([0, 0]))
        assert res.success.tolist() == [True, True] and torch.equal(res.x_adv, x)
        assert res.losses.shape == (2, restarts) and bool(torch.isnan(res.losses).all())
        # fooled in the first run (its first step lands at 0.8): the later runs are skipped
        atk = APGD(model, norm="linf", eps=0.3, steps=5, restarts=restarts, random_start=False, seed=0,
                   sanity_checks=False)
        res = atk.run(torch.full((2, 1, 1, 1), 0.5), torch.tensor([0, 0]))
        assert res.success.tolist() == [True, True]
        assert bool(torch.isfinite(res.losses[:, 0]).all()) and bool(torch.isnan(res.losses[:, 1:]).all())
    double = _Peak().double()
    atk = APGD(double, norm="linf", eps=0.3, steps=5, random_start=False, seed=0, sanity_checks=False)
    res = atk.run(torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64), torch.tensor([0]))
    assert res.losses.dtype == torch.float64 and res.x_adv.dtype == torch.float64


def test_apgd_warns_when_the_start_gradient_is_zero():
    """A flat model (zero input gradient everywhere) makes APGD's results meaningless: the
    sanity check at the start point says so, as PGD's does."""
    from smoothguard.attacks.sanity import RobustnessWarning

    class Flat(nn.Module):
        def forward(self, x):
            return (x * 0).flatten(1)[:, :1].repeat(1, 2) + torch.tensor([2.0, 0.0])

    with pytest.warns(RobustnessWarning, match="all-zero input gradient at the start point"):
        APGD(Flat(), norm="linf", eps=0.1, steps=2).run(torch.full((2, 1, 1, 1), 0.5), torch.tensor([0, 0]))


# ----------------------------------------------------------------------------- TRADES
def _tiny_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[4.0, -1.0], [-2.0, 3.0], [0.5, 0.5]]))
        model[1].bias.copy_(torch.tensor([0.3, -0.2, 0.0]))
    return model


def _np_kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_kl_div_rows_is_kl_of_the_first_argument_from_the_second():
    p_logits = torch.tensor([[3.0, 0.0, -1.0], [0.2, 0.1, 2.0]])
    q_logits = torch.tensor([[0.0, 2.0, 0.5], [1.0, -1.0, 0.0]])
    p, q = _np_softmax(p_logits.double().numpy()), _np_softmax(q_logits.double().numpy())
    got = kl_div_rows(p_logits, q_logits).double().numpy()
    np.testing.assert_allclose(got, _np_kl(p, q), rtol=1e-5)
    assert np.all(np.abs(_np_kl(p, q) - _np_kl(q, p)) > 0.1)  # the direction matters here


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_trades_loss_is_ce_plus_beta_kl_of_clean_from_adversarial_by_hand(norm):
    """loss = CE(f(x), y) + beta * mean KL(f(x) || f(x')), computed by hand in float64 at
    the x' the inner attack returns (same generator seed); the reverse KL differs by far
    more than the tolerance."""
    model = _tiny_linear()
    x = torch.tensor([[[[0.4, 0.5]]], [[[0.6, 0.3]]], [[[0.5, 0.5]]]])
    y = torch.tensor([0, 1, 2])
    beta_, eps, steps, step = 6.0, 0.1, 2, 0.03  # x' inside the box: the step size shows
    obj = get_objective("trades", beta=beta_, eps=eps, norm=norm, attack_steps=steps, step_size=step)
    out = obj(model, x, y, StepContext(0, 1, 0, 1, torch.Generator().manual_seed(3)))

    inner = TradesPGD(model, norm=norm, eps=eps, steps=steps, step_size=step, sanity_checks=False)
    x_adv = inner.perturb(x, y, torch.Generator().manual_seed(3))
    with torch.no_grad():
        p = _np_softmax(model(x).double().numpy())
        q = _np_softmax(model(x_adv).double().numpy())
    ce = float(-np.log(p[np.arange(3), y.numpy()]).mean())
    kl, kl_rev = float(_np_kl(p, q).mean()), float(_np_kl(q, p).mean())
    assert abs(kl - kl_rev) > 0.05 * kl  # 9% here, against a tolerance of 1e-5
    assert float(out.loss.detach()) == pytest.approx(ce + beta_ * kl, rel=1e-5)
    assert float(out.stats["kl"]) == pytest.approx(kl, rel=1e-5)
    assert set(out.stats) == {"adv_acc", "kl"}
    with torch.no_grad():
        torch.testing.assert_close(out.logits.detach(), model(x))  # train accuracy is the clean one
        assert float(out.stats["adv_acc"]) == float((model(x_adv).argmax(1) == y).float().mean())
    # gradients flow into the model through the loss
    out.loss.backward()
    assert model[1].weight.grad is not None and float(model[1].weight.grad.abs().sum()) > 0


def test_trades_inner_attack_increases_the_kl_to_near_its_maximum_on_the_box():
    """KL(f(x) || f(.)) of a linear model is convex, so its maximum on the eps-box lies at
    a corner, and every local maximum is a corner. From a start where the KL is ~0, the
    inner attack ends at a corner with at least 75% of the maximum (a minimizing attack
    stays near 0)."""
    model = _tiny_linear()
    x = torch.tensor([[[[0.4, 0.5]]], [[[0.6, 0.3]]], [[[0.5, 0.5]]]])
    y = torch.tensor([0, 1, 2])
    eps = 0.1
    inner = TradesPGD(model, norm="linf", eps=eps, steps=10, step_size=0.025, sanity_checks=False)
    x_adv = inner.perturb(x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model(x)
        kl_adv = kl_div_rows(clean, model(x_adv))
        start = inner._start(x, torch.Generator().manual_seed(0))
        kl_start = kl_div_rows(clean, model(start))
        corners = torch.tensor([[sx, sy] for sx in (-eps, eps) for sy in (-eps, eps)])
        kl_max = torch.stack([kl_div_rows(clean, model(x + c.view(1, 1, 1, 2))) for c in corners]).max(0).values
    assert bool((kl_max > 0.02).all())
    assert bool((kl_start < 1e-3 * kl_max).all())
    assert bool((kl_adv >= 0.75 * kl_max).all()), (kl_adv, kl_max)
    torch.testing.assert_close((x_adv - x).abs(), torch.full_like(x, eps), rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_at_loss_weighs_adversarial_and_clean_cross_entropy_by_hand(norm):
    """PGD-AT with adv_weight w: w CE(f(x_adv), y) + (1 - w) CE(f(x), y) at the last PGD
    iterate from the same generator seed (two steps of 0.03 in a 0.1 box: the point
    depends on the random start, so the trainer's generator must be the one used); the
    logged accuracies and the logits are the adversarial ones (and the clean accuracy
    when w < 1)."""
    model = _tiny_linear()
    x = torch.tensor([[[[0.4, 0.5]]], [[[0.6, 0.3]]], [[[0.5, 0.5]]]])
    y = torch.tensor([0, 1, 2])
    eps, steps, step = 0.1, 2, 0.03
    for w in (0.25, 1.0):
        obj = get_objective("pgd_at", eps=eps, norm=norm, attack_steps=steps, step_size=step, adv_weight=w)
        out = obj(model, x, y, StepContext(0, 1, 0, 1, torch.Generator().manual_seed(5)))
        atk = PGD(model, norm=norm, eps=eps, steps=steps, step_size=step, sanity_checks=False)
        atk.return_last = True
        x_adv = atk.perturb(x, y, torch.Generator().manual_seed(5))
        other = atk.perturb(x, y, torch.Generator().manual_seed(6))
        assert float((other - x_adv).abs().max()) > 1e-3  # the start matters here
        with torch.no_grad():
            logits_adv, logits = model(x_adv), model(x)
            want = w * F.cross_entropy(logits_adv, y) + (1 - w) * F.cross_entropy(logits, y)
            assert float(F.cross_entropy(logits_adv, y)) > float(F.cross_entropy(logits, y)) + 0.02
        assert float(out.loss.detach()) == pytest.approx(float(want), rel=1e-5)
        torch.testing.assert_close(out.logits.detach(), logits_adv)
        acc_adv = float((logits_adv.argmax(1) == y).float().mean())
        assert set(out.stats) == ({"adv_acc", "clean_acc"} if w < 1 else {"adv_acc"})
        assert float(out.stats["adv_acc"]) == acc_adv
        if w < 1:
            assert float(out.stats["clean_acc"]) == float((logits.argmax(1) == y).float().mean())
        assert bool(((x_adv - x).abs() <= eps + 1e-6).all())
