"""Adaptive certification on a radius grid: validity by simulation, never looser than fixed n."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothguard.smoothing import ABSTAIN, SmoothedClassifier, lower_confidence_bound
from smoothguard.smoothing.adaptive import (
    certify_adaptive,
    default_schedule,
    grid_level,
    grid_schedule,
    predict_adaptive,
    upper_confidence_bound,
)

from id_images import id_images, noise_on_probe, read_ids  # noqa: E402

SIGMA = 0.25
GRID = [0.25, 0.5, 0.75]


class KnownPA:
    """Synthetic base classifier: class 0 with probability p_A (per group of images, the
    group read from the image), else class 1."""

    def __init__(self, p_a, seed=0):
        self.p_a = torch.as_tensor(p_a, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        # the group id is written in the image in bits robust to the noise (tests/id_images.py)
        ids = read_ids(x).clamp(0, len(self.p_a) - 1)
        u = torch.rand(x.shape[0], generator=self.gen, dtype=torch.float64)
        return (u >= self.p_a[ids]).long()


def _run(p_values, reps, alpha, n_max, seed):
    p_a = np.repeat(p_values, reps)
    model = KnownPA(p_values, seed)
    x = id_images(np.repeat(np.arange(len(p_values)), reps))
    g = SmoothedClassifier(model, 2, SIGMA)
    res = certify_adaptive(g, x, GRID, n0=100, n_max=n_max, alpha=alpha, batch_size=100_000,
                           seeds=list(range(seed * 10**6, seed * 10**6 + len(p_a))))
    return p_a, res


def test_wrong_certificates_happen_at_most_alpha_of_the_time_even_at_the_thresholds():
    alpha, reps = 0.05, 400
    # p_A just below each grid threshold: certifying that grid radius would be wrong
    p_values = [norm.cdf(r / SIGMA) - 1e-3 for r in GRID] + [0.5 - 1e-3, 0.7, 0.999]
    p_a, res = _run(p_values, reps, alpha, n_max=5000, seed=1)
    true_class = np.where(p_a > 0.5, 0, 1)
    true_radius = SIGMA * norm.ppf(np.maximum(p_a, 1 - p_a))
    pred, radius = res.prediction.numpy(), res.radius.numpy()
    # a wrong certificate: a non-abstaining answer that is not g(x), or a grid radius above the true one
    wrong = (pred != ABSTAIN) & ((pred != true_class) | (radius > true_radius))
    for k, p in enumerate(p_values):
        rate = wrong[k * reps:(k + 1) * reps].mean()
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps), (p, rate)
    assert (res.prediction[-reps:] == 0).all()  # p_A = 0.999 is certified ...
    assert (res.radius[-reps:] >= 0.5).double().mean() > 0.95  # ... at 0.5 (0.75 needs more than n_max = 5000 here)


def test_decisions_are_never_looser_than_the_fixed_n_test_on_the_same_counts():
    alpha = 0.01
    thresholds = norm.cdf(np.array([0.0, *GRID]) / SIGMA)
    thresholds[0] = 0.5
    n = np.arange(1, 3000, 7)
    for frac in (0.5, 0.8, 0.97, 0.999, 1.0):
        n_a = np.floor(frac * n)
        for looks in (5, 17):
            adaptive = grid_level(lower_confidence_bound(n_a, n, alpha / looks), thresholds)
            fixed = grid_level(lower_confidence_bound(n_a, n, alpha), thresholds)
            assert (adaptive <= fixed).all()
    assert (upper_confidence_bound(n_a, n, 0.01) >= n_a / n).all()


def test_stops_early_when_the_answer_is_clear_and_records_samples():
    p_a, res = _run([0.99999, 0.3, 0.9], reps=20, alpha=0.001, n_max=100_000, seed=2)
    used = res.n_used.numpy()
    assert (used[:20] < 15_000).all()  # far above the top threshold: certified at 0.75 quickly
    assert (res.radius[:20] == 0.75).all()
    # p_A = 0.3 for class 0: g(x) = class 1 with probability 0.7 < Phi(1): radius level 0, decided fast
    assert (used[20:40] <= 1500).all() and (res.prediction[20:40] == 1).all() and (res.radius[20:40] == 0).all()
    assert (res.radius[40:] == 0.25).all()  # p_A = 0.9 lies between Phi(1) and Phi(2)
    assert (used[40:] < 100_000).all()


def test_grid_schedule_puts_a_look_where_unanimous_counts_first_certify_each_radius():
    alpha = 0.001
    thresholds = norm.cdf(np.array([0.0, *GRID]) / SIGMA)
    thresholds[0] = 0.5
    base, looks = default_schedule(100_000), grid_schedule(100_000, thresholds, alpha)
    assert len(looks) == len(base) and looks[-1] == 100_000 and all(b > a for a, b in zip(looks, looks[1:]))
    level = alpha / len(looks)
    for t in thresholds[2:]:  # r = 0.5 and 0.75 (r = 0.25 is certifiable before the first look)
        n_t = next(n for n in looks if lower_confidence_bound(n, n, level) >= t)
        # the look is the first multiple of 100 at which n of n certifies: 100 fewer do not
        assert lower_confidence_bound(n_t - 100, n_t - 100, level) < t
        assert n_t not in base  # moved down from the geometric schedule's next look
    # a unanimous image stops at the r = 0.75 look with radius 0.75
    g = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], dtype=torch.long), 2, SIGMA)
    res = certify_adaptive(g, torch.zeros(1, 1, 1, 1), GRID, alpha=alpha, batch_size=10_000, seeds=[0])
    assert float(res.radius[0]) == 0.75
    assert int(res.n_used[0]) == next(n for n in looks if lower_confidence_bound(n, n, level) >= thresholds[-1])


def test_schedule_and_validation():
    s = default_schedule(100_000)
    assert s[-1] == 100_000 and all(b > a for a, b in zip(s, s[1:])) and all(v % 100 == 0 for v in s)
    g = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], dtype=torch.long), 2, 0.25)
    with pytest.raises(ValueError, match="radii must be finite and >= 0"):
        certify_adaptive(g, torch.zeros(1, 1, 1), [-0.1])
    with pytest.raises(ValueError, match="must end at n_max"):
        certify_adaptive(g, torch.zeros(1, 1, 1), [0.25], n_max=1000, schedule=[100, 500])


def test_futility_alpha_only_moves_the_stopping_time():
    """With noise-driven counts (identical per image across runs), a more cautious futility
    level never stops earlier, and the default stops borderline images sooner."""
    p_values = np.repeat([norm.cdf(2.0) + 0.002, norm.cdf(3.0) + 0.0004, 0.9, 0.99999], 10)
    cut = torch.as_tensor(SIGMA * norm.ppf(p_values), dtype=torch.float32)

    def noise_driven(x):  # class 0 iff the noise on the image's pixel is below its cut: P = p_A
        ids = read_ids(x).clamp(0, len(cut) - 1)
        return (noise_on_probe(x) >= cut[ids]).long()

    x = id_images(np.arange(len(p_values)))
    g = SmoothedClassifier(noise_driven, 2, SIGMA)
    seeds = list(range(len(p_values)))
    runs = {fa: certify_adaptive(g, x, GRID, alpha=0.001, batch_size=100_000, seeds=seeds, futility_alpha=fa)
            for fa in (0.05, 1e-6)}
    fast, cautious = runs[0.05].n_used.numpy(), runs[1e-6].n_used.numpy()
    assert (cautious >= fast).all()
    assert fast.sum() < cautious.sum()
    with pytest.raises(ValueError, match="futility_alpha must lie in"):
        certify_adaptive(g, x[:1], GRID, futility_alpha=0.0)


# -- adaptive PREDICT ----------------------------------------------------------------------

def _predict(p_values, reps, alpha, n_max, seed, **kw):
    p_a = np.repeat(p_values, reps)
    x = id_images(np.repeat(np.arange(len(p_values)), reps))
    g = SmoothedClassifier(KnownPA(p_values, seed), 2, SIGMA)
    res = predict_adaptive(g, x, n_max=n_max, alpha=alpha, batch_size=100_000,
                           seeds=list(range(seed * 10**6, seed * 10**6 + len(p_a))), **kw)
    return p_a, res


def test_vectorized_binomial_pvalues_equal_scipys_exact_test():
    from scipy.stats import binomtest

    from smoothguard.smoothing.stats import binom_pvalues

    a, b = np.meshgrid(np.arange(0, 80, 3), np.arange(0, 80, 5))
    ours = binom_pvalues(a.ravel(), b.ravel())
    ref = [binomtest(int(i), int(i + j), 0.5).pvalue if i + j else 1.0 for i, j in zip(a.ravel(), b.ravel())]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)
    assert binom_pvalues(5000, 4000) < 1e-20  # large counts stay exact, no normal approximation


def test_adaptive_predict_answers_at_a_tie_at_most_alpha_of_the_time():
    # p_A = p_B = 1/2: g(x) is undefined, every non-abstaining answer is an error (Hung and
    # Fithian 2019); just off the tie, answering class 1 is the error
    alpha, reps = 0.05, 600
    p_a, res = _predict([0.5, 0.503], reps, alpha, n_max=20_000, seed=3)
    pred = res.prediction.numpy()
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert (pred[:reps] != ABSTAIN).mean() <= bound
    assert (pred[reps:] == 1).mean() <= bound


def test_adaptive_predict_stops_early_and_matches_the_fixed_test_where_clear():
    alpha, reps = 0.001, 30
    p_a, res = _predict([0.99, 0.2, 0.6, 0.5], reps, alpha, n_max=100_000, seed=4)
    pred, used = res.prediction.numpy(), res.n_used.numpy()
    first = default_schedule(100_000)[0]
    assert (pred[:reps] == 0).all() and (used[:reps] == first).all()  # decided at the first look
    assert (pred[reps:2 * reps] == 1).all() and (used[reps:2 * reps] == first).all()
    assert (pred[2 * reps:3 * reps] == 0).all() and (used[2 * reps:3 * reps] < 10_000).all()
    # the tie cannot be decided: abstains, and futility stops most before n_max
    assert (pred[3 * reps:] == ABSTAIN).all() and (used[3 * reps:] < 100_000).mean() >= 0.8
    assert (res.counts.sum(1) == res.n_used).all()
    # each answer is significant at alpha / L on its own counts, hence at alpha (never looser)
    assert (res.p_value.numpy()[pred != ABSTAIN] <= alpha / len(default_schedule(100_000))).all()


def test_adaptive_predict_validation():
    g = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], dtype=torch.long), 2, 0.25)
    with pytest.raises(ValueError, match="futility_alpha must lie in"):
        predict_adaptive(g, torch.zeros(1, 1, 1), futility_alpha=1.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        predict_adaptive(g, torch.zeros(1, 1, 1), alpha=0.0)
    with pytest.raises(ValueError, match="must end at n_max"):
        predict_adaptive(g, torch.zeros(1, 1, 1), n_max=1000, schedule=[100, 500])


def _lenet_checkpoint(tmp_path):
    from smoothguard.models import get_model, save_checkpoint

    torch.manual_seed(0)
    model = get_model("lenet", 10, (1, 28, 28), [0.286], [0.353])
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, model, {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28],
                                  "mean": [0.286], "std": [0.353], "dataset": "fashion-mnist"})
    return path


def test_cli_sequential_cs_and_budget_rows_match_the_library_and_the_method_is_a_resume_key(tmp_path, capsys):
    from smoothguard.cli import main
    from smoothguard.data import load_dataset
    from smoothguard.models import load_checkpoint
    from smoothguard.smoothing import image_seed
    from smoothguard.smoothing.adaptive import certify_anytime, certify_sequential, predict_sequential

    ckpt = _lenet_checkpoint(tmp_path)
    c, p, b = tmp_path / "c.tsv", tmp_path / "p.tsv", tmp_path / "b.tsv"
    common = ["--model", str(ckpt), "--max", "3", "--skip", "5", "--threads", "1", "--seed", "7", "--batch", "400"]
    assert main(["certify", *common, "--radii", "0.25,0.5", "--n-max", "2000", "--sequential", "cs", "--out", str(c)]) == 0
    assert main(["predict", *common, "--adaptive", "--n-max", "2000", "--sequential", "cs", "--out", str(p)]) == 0
    assert main(["certify", *common, "--budget", "2000", "--tolerance", "0.05", "--out", str(b)]) == 0
    data = load_dataset("demo").subset(skip=5, max_count=3)
    seeds = [image_seed(7, int(i)) for i in data.indices]
    g = SmoothedClassifier(load_checkpoint(ckpt)[0], 10, 0.25)
    cert = certify_sequential(g, data.images, [0.25, 0.5], n0=100, n_max=2000, alpha=0.001, seeds=seeds)
    pred = predict_sequential(g, data.images, n_max=2000, alpha=0.001, seeds=seeds)
    anyt = certify_anytime(g, data.images, n0=100, budget=2000, alpha=0.001, tolerance=0.05, seeds=seeds)

    def rows(path):
        lines = path.read_text().splitlines()  # rows are written as images finish: compare in index order
        return lines[0].split("\t"), sorted((line.split("\t") for line in lines[1:]), key=lambda r: int(r[0]))

    head, rc = rows(c)
    assert head == ["idx", "label", "predict", "radius", "correct", "n_used", "time"]
    assert [int(r[2]) for r in rc] == cert.prediction.tolist()
    assert [float(r[3]) for r in rc] == cert.radius.tolist()
    assert [int(r[5]) for r in rc] == cert.n_used.tolist()
    _, rp = rows(p)
    assert [int(r[2]) for r in rp] == pred.prediction.tolist() and [int(r[4]) for r in rp] == pred.n_used.tolist()
    _, rb = rows(b)
    assert [float(r[3]) for r in rb] == anyt.radius.tolist() and [int(r[5]) for r in rb] == anyt.n_used.tolist()
    # resuming the cs file with the other method is refused (the method is a resume key)
    code = main(["certify", *common, "--radii", "0.25,0.5", "--n-max", "2000", "--sequential", "bonferroni",
                 "--out", str(c)])
    assert code == 2 and "sequential" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["certify", "--budget", "1000", "--n", "1000"], "--budget (anytime certification) replaces --n"),
    (["certify", "--budget", "1000", "--radii", "0.25"], "drop --radii"),
    (["certify", "--budget", "0"], "--budget must be an integer >= 1"),
    (["certify", "--budget", "100", "--tolerance", "-1"], "--tolerance must be a finite radius >= 0"),
    (["certify", "--radii", "0.25", "--sequential", "sprt"], "invalid choice"),
])
def test_cli_sequential_bad_input_exits_2_with_a_clear_message(argv, message, tmp_path, capsys):
    from smoothguard.cli import main

    try:
        code = main([*argv, "--max", "1", "--out", str(tmp_path / "never.tsv")])
    except SystemExit as exc:  # argparse refuses an unknown choice itself, with exit code 2
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "never.tsv").exists()
