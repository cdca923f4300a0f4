"""Statistical and closed-form tests of PREDICT and CERTIFY (Cohen et al. 2019)."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from smoothguard.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    binom_pvalue,
    certified_accuracy_lower_bound,
    lower_confidence_bound,
    r_max,
)
from smoothguard.smoothing import core


def binomial_slack(p, reps, k=3.0):
    """k standard errors of a frequency estimated from reps trials."""
    return k * math.sqrt(p * (1 - p) / reps)


# ----------------------------------------------------------------------------- statistics
def test_lower_bound_equals_beta_ppf_over_a_grid():
    for n in (1, 10, 100, 1000, 100_000):
        for n_a in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            if n_a < 0:
                continue
            for alpha in (0.001, 0.01, 0.05):
                got = lower_confidence_bound(n_a, n, alpha)
                want = 0.0 if n_a == 0 else beta.ppf(alpha, n_a, n - n_a + 1)
                assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (n_a, n, alpha)


def test_lower_bound_undercovers_with_frequency_at_most_alpha():
    rng = np.random.default_rng(0)
    alpha, n, reps = 0.05, 200, 20_000
    for p in (0.3, 0.5, 0.8, 0.97):
        n_a = rng.binomial(n, p, size=reps)
        bounds = lower_confidence_bound(n_a, np.full(reps, n), alpha)
        miss = float(np.mean(bounds > p))
        assert miss <= alpha + binomial_slack(alpha, reps), (p, miss)
        assert miss > 0.2 * alpha  # and it is not absurdly conservative


def test_r_max_table_of_algorithms_md():
    for n, factor in ((100, 1.500), (1000, 2.463), (10_000, 3.199), (100_000, 3.811)):
        assert r_max(1.0, n, 0.001) == pytest.approx(factor, abs=6e-4)
    assert r_max(0.25, 100_000, 0.001) == pytest.approx(0.953, abs=1e-3)


def test_binomial_pvalue_matches_scipy_and_small_n_cannot_reach_alpha():
    from scipy.stats import binomtest

    assert binom_pvalue(60, 40) == pytest.approx(binomtest(60, 100, 0.5).pvalue)
    assert binom_pvalue(10, 0) > 0.001  # 2 * 0.5**10 = 0.00195
    assert binom_pvalue(0, 0) == 1.0


def test_certified_accuracy_lower_bound_is_theorem_6_as_printed():
    y, m, alpha, rho = 450, 500, 0.001, 0.001
    l = math.log(1 / rho)
    want = (y / m - alpha - math.sqrt(2 * alpha * (1 - alpha) * l / m) - l / (3 * m)) / (1 - alpha)
    assert certified_accuracy_lower_bound(y, m, alpha, rho) == pytest.approx(want, rel=1e-12)
    assert certified_accuracy_lower_bound(y, m, alpha, rho) < y / m


# ----------------------------------------------------------------------------- base classifiers
class Linear(torch.nn.Module):
    """Binary linear classifier f(x) = [w.x + b > 0], as logits (0, w.x + b)."""

    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


class Coin:
    """Query-only classifier returning labels: class 0 with probability p, else class 1."""

    def __init__(self, p, seed=0, num_classes=2):
        self.p, self.k = p, num_classes
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        u = torch.rand(x.shape[0], generator=self.gen)
        if self.k == 2:
            return (u >= self.p).long()
        return torch.randint(0, self.k, (x.shape[0],), generator=self.gen)


def _linear_case(margin_in_sigmas, sigma=0.5):
    w = torch.tensor([[[0.6, -0.8], [0.0, 0.0]]])  # ||w|| = 1
    x = torch.full((1, 2, 2), 0.5)
    b = margin_in_sigmas * sigma - float((w * x).sum())
    return Linear(w, b), x, abs(margin_in_sigmas * sigma)


def test_linear_oracle_radius_is_never_exceeded_more_than_alpha():
    sigma, alpha, reps = 0.5, 0.1, 300
    model, x, true_r = _linear_case(1.0, sigma)  # p_A = Phi(1) = 0.841
    g = SmoothedClassifier(model, 2, sigma)
    xs = x.expand(reps, *x.shape).contiguous()
    res = g.certify_batch(xs, n0=50, n=1000, alpha=alpha, batch_size=1000, seeds=list(range(reps)))
    assert (res.prediction == 1).float().mean() > 0.99
    over = float((res.radius > true_r).float().mean())
    assert over <= alpha + binomial_slack(alpha, reps)
    assert float(res.radius.mean()) > 0.8 * true_r  # and not vacuous


def test_linear_oracle_radius_is_tight_for_large_n():
    sigma = 0.5
    model, x, true_r = _linear_case(-1.2, sigma)  # class 0, p_A = Phi(1.2)
    g = SmoothedClassifier(model, 2, sigma)
    label, radius = g.certify(x, n0=100, n=200_000, alpha=0.001, batch_size=20_000, seed=3)
    assert label == 0
    assert radius <= true_r
    assert radius >= 0.96 * true_r


def test_constant_classifier_certifies_r_max_exactly():
    g = SmoothedClassifier(lambda x: torch.full((x.shape[0],), 3, dtype=torch.long), 10, 0.25)
    label, radius = g.certify(torch.zeros(1, 4, 4), n0=100, n=10_000, alpha=0.001, seed=0)
    assert label == 3
    assert radius == pytest.approx(r_max(0.25, 10_000, 0.001), rel=1e-9)


def test_uniformly_random_classifier_abstains():
    g = SmoothedClassifier(Coin(0.1, seed=1, num_classes=10), 10, 0.25)
    for seed in range(5):
        assert g.certify(torch.zeros(1, 2, 2), 100, 5000, 0.001, seed=seed) == (ABSTAIN, 0.0)
        assert g.predict(torch.zeros(1, 2, 2), 5000, 0.001, seed=seed) == ABSTAIN


def test_predict_abstains_for_ten_or_fewer_samples():
    g = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], dtype=torch.long), 2, 0.25)
    for n in (1, 5, 10):
        assert g.predict(torch.zeros(1, 2, 2), n, 0.001, seed=0) == ABSTAIN
    assert g.predict(torch.zeros(1, 2, 2), 11, 0.001, seed=0) == 0


def test_predict_error_rate_on_a_coin_is_at_most_alpha():
    alpha, reps, p = 0.05, 1500, 0.53  # g(x) = class 0, but barely
    g = SmoothedClassifier(Coin(p, seed=5), 2, 0.25)
    res = g.predict_batch(torch.zeros(reps, 1, 1, 1), n=200, alpha=alpha, batch_size=20_000, seeds=list(range(reps)))
    wrong = float((res.prediction == 1).float().mean())
    assert wrong <= alpha + binomial_slack(alpha, reps)
    assert float((res.prediction == ABSTAIN).float().mean()) > 0.5  # mostly undecided at this margin


# ----------------------------------------------------------------------------- batching & seeds
@pytest.fixture(scope="module")
def lenet():
    from smoothguard.models import get_model

    torch.manual_seed(0)
    return get_model("lenet", 10, (1, 28, 28), [0.286], [0.353]).eval()


def test_batched_counts_equal_per_image_counts_under_the_same_seeds(lenet):
    g = SmoothedClassifier(lenet, 10, 0.25)
    xs = torch.rand(5, 1, 28, 28)
    batched = g.certify_batch(xs, 100, 700, 0.001, batch_size=400, seeds=[11, 12, 13, 14, 15])
    for i in range(5):
        single = g.certify_batch(xs[i], 100, 700, 0.001, batch_size=100, seeds=[11 + i])
        assert torch.equal(single.counts_selection[0], batched.counts_selection[i])
        assert torch.equal(single.counts_estimation[0], batched.counts_estimation[i])
    again = g.certify_batch(xs, 100, 700, 0.001, batch_size=1000, seeds=[11, 12, 13, 14, 15])
    assert torch.equal(again.counts_estimation, batched.counts_estimation)


def test_batched_path_agrees_in_distribution_with_the_per_image_path():
    # linear classifier: votes for class 1 are Binomial(n, Phi(margin / sigma)) on both paths
    sigma, n, reps = 0.5, 300, 80
    model, x, _ = _linear_case(0.5, sigma)
    p = norm.cdf(0.5)
    g = SmoothedClassifier(model, 2, sigma)
    gen = torch.Generator().manual_seed(2)
    batched = g.sample_counts(x.expand(reps, *x.shape), n, batch_size=1000, generator=gen)[:, 1]
    single = torch.stack([g.sample_counts(x, n, batch_size=64, generator=gen)[0, 1] for _ in range(reps)])
    sd = math.sqrt(n * p * (1 - p))
    for counts in (batched, single):
        assert abs(counts.double().mean().item() - p * n) < 4 * sd / math.sqrt(reps)
        assert 0.6 * sd < counts.double().std().item() < 1.4 * sd
    assert abs(batched.double().mean() - single.double().mean()) < 4 * sd * math.sqrt(2 / reps)


def test_noise_is_gaussian_in_pixel_space_and_unclipped():
    seen = []

    def probe(x):
        seen.append(x.clone())
        return torch.zeros(x.shape[0], dtype=torch.long)

    g = SmoothedClassifier(probe, 2, 0.4)
    g.sample_counts(torch.full((1, 1, 8, 8), 0.9), 500, batch_size=250, seeds=[1])
    noise = torch.cat(seen) - 0.9
    assert noise.shape == (500, 1, 8, 8)
    assert abs(float(noise.std()) - 0.4) < 0.01 and abs(float(noise.mean())) < 0.01
    assert float((torch.cat(seen) > 1).float().mean()) > 0.3  # not clipped to [0, 1]


def test_seeded_runs_are_reproducible_and_seeds_matter(lenet):
    g = SmoothedClassifier(lenet, 10, 0.5)
    x = torch.rand(2, 1, 28, 28)
    a = g.sample_counts(x, 1000, seeds=[1, 2])
    b = g.sample_counts(x, 1000, seeds=[1, 2])
    c = g.sample_counts(x, 1000, seeds=[3, 4])
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen1, gen2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(g.sample_counts(x, 300, generator=gen1), g.sample_counts(x, 300, generator=gen2))


def test_bf16_path_mostly_agrees_with_fp32(lenet, monkeypatch):
    monkeypatch.setattr(core, "cpu_has_native_bf16", lambda: True)  # agreement is tested here, not speed
    x = torch.rand(4, 1, 28, 28)
    fp32 = SmoothedClassifier(lenet, 10, 0.25).sample_counts(x, 1000, seeds=[1, 2, 3, 4])
    bf16 = SmoothedClassifier(lenet, 10, 0.25, precision="bf16").sample_counts(x, 1000, seeds=[1, 2, 3, 4])
    assert torch.equal(fp32.sum(1), bf16.sum(1))
    assert float((fp32 - bf16).abs().sum()) / float(fp32.sum()) < 0.1


def test_bf16_on_a_cpu_without_bf16_instructions_warns_that_fp32_is_faster(lenet, monkeypatch):
    monkeypatch.setattr(core, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="without bf16 instructions.*precision='fp32' is faster"):
        SmoothedClassifier(lenet, 10, 0.25, precision="bf16")
    monkeypatch.setattr(core, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SmoothedClassifier(lenet, 10, 0.25, precision="bf16")
        SmoothedClassifier(lenet, 10, 0.25)  # fp32 never warns


def test_argument_validation_names_the_problem(lenet):
    with pytest.raises(ValueError, match="sigma must be a positive"):
        SmoothedClassifier(lenet, 10, 0.0)
    with pytest.raises(ValueError, match="precision must be one of .fp32., .bf16."):
        SmoothedClassifier(lenet, 10, 0.25, precision="fp16")
    g = SmoothedClassifier(lenet, 10, 0.25)
    with pytest.raises(ValueError, match="alpha must lie in"):
        g.certify(torch.rand(1, 28, 28), 10, 10, 1.5)
    with pytest.raises(ValueError, match="returned 10 logits per input; expected num_classes=3"):
        SmoothedClassifier(lenet, 3, 0.25).predict(torch.rand(1, 28, 28), 10, 0.1)
    bad = SmoothedClassifier(lambda x: torch.full((x.shape[0],), 7), 3, 0.25)
    with pytest.raises(ValueError, match="outside"):
        bad.predict(torch.rand(1, 2, 2), 10, 0.1)


def test_jit_path_gives_the_counts_of_the_eager_model(lenet):
    import copy

    x = torch.rand(3, 1, 28, 28)
    eager = SmoothedClassifier(copy.deepcopy(lenet), 10, 0.25).sample_counts(x, 500, seeds=[1, 2, 3])
    g = SmoothedClassifier(copy.deepcopy(lenet), 10, 0.25, jit="always")
    traced = g.sample_counts(x, 500, seeds=[1, 2, 3])
    assert isinstance(g.sampler.forward, torch.jit.ScriptModule)
    assert torch.equal(eager, traced)


def test_jit_is_the_callers_choice_never_a_timing(lenet):
    import copy

    # default: eager (the frozen graph's logits differ in the last bits; smoothguard.runtime)
    g = SmoothedClassifier(copy.deepcopy(lenet), 10, 0.25)
    g.certify_batch(torch.rand(1, 1, 28, 28), 100, 800, 0.001, batch_size=400, seeds=[1])
    assert g.sampler.forward is g.sampler.module and g.speed.jit is False
    # asked for: the frozen graph whenever it is correct, whatever the timings
    g = SmoothedClassifier(copy.deepcopy(lenet), 10, 0.25, jit=True)
    g.certify_batch(torch.rand(1, 1, 28, 28), 100, 800, 0.001, batch_size=400, seeds=[1])
    assert isinstance(g.sampler.forward, torch.jit.ScriptModule) and g.speed.jit is True
    assert g.speed.rule == "given" and g.speed.settings()["jit"] is True
    with pytest.raises(ValueError, match="jit must be False or True"):
        SmoothedClassifier(lenet, 10, 0.25, jit="sometimes")


def test_jit_falls_back_to_eager_with_a_warning_when_tracing_is_wrong():
    class DataDependent(torch.nn.Module):
        def forward(self, x):  # control flow on values: a trace would bake in one branch
            if float(x.mean()) > 0.5:
                return torch.stack([x.flatten(1).sum(1), torch.zeros(x.shape[0])], 1)
            return torch.stack([torch.zeros(x.shape[0]), x.flatten(1).sum(1)], 1)

    g = SmoothedClassifier(DataDependent(), 2, 0.01, jit=True)
    with pytest.warns(RuntimeWarning):
        counts = g.sample_counts(torch.full((1, 1, 2, 2), 0.2), 200, seeds=[0])
    assert counts[0, 1] == 200


def test_concurrent_workers_give_the_counts_of_one_worker(lenet):
    import copy

    x = torch.rand(3, 1, 28, 28)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # one worker on 2 intra-op threads vs two workers on 1 each (the default split)
    try:
        one = SmoothedClassifier(copy.deepcopy(lenet), 10, 0.25, workers=1)
        assert one.speed.threads == 2
        counts = one.sample_counts(x, 700, batch_size=200, seeds=[4, 5, 6])
        for jit in (False, "always"):
            two = SmoothedClassifier(copy.deepcopy(lenet), 10, 0.25, jit=jit, workers=2)
            assert (two.speed.workers, two.speed.threads) == (2, 1)
            assert torch.equal(two.sample_counts(x, 700, batch_size=200, seeds=[4, 5, 6]), counts)
            assert torch.get_num_threads() == 2  # the split lasts only while the sampler runs
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        SmoothedClassifier(lenet, 10, 0.25, workers=0)
