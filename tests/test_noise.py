"""Noise distributions (smoothguard.noise): their samples, and their certified radii against
closed forms: a constant classifier reaches R_max exactly, and for a classifier that
thresholds one pixel the radius of the exact p_A is the distance to the threshold."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from smoothguard import ABSTAIN
from smoothguard.contract import ContractError
from smoothguard.noise import NOISES, Gaussian, Laplace, Uniform, get_noise, implied_radius
from smoothguard.smoothing import SmoothedClassifier, lower_confidence_bound

SIGMA = 0.25
SCIPY = {  # the same distributions, from scipy, for the two-sample checks
    "gaussian": stats.norm(scale=SIGMA),
    "uniform": stats.uniform(loc=-math.sqrt(3) * SIGMA, scale=2 * math.sqrt(3) * SIGMA),
    "laplace": stats.laplace(scale=SIGMA / math.sqrt(2)),
}


@pytest.mark.parametrize("name", sorted(NOISES))
def test_samples_follow_the_distribution_with_the_stated_sd(name):
    z = get_noise(name, SIGMA).sample_(torch.empty(40_000, dtype=torch.float64), torch.Generator().manual_seed(1))
    assert torch.isfinite(z).all()
    # Kolmogorov-Smirnov against scipy's distribution; seeded, so this p-value is fixed
    assert stats.kstest(z.numpy(), SCIPY[name].cdf).pvalue > 0.01
    assert float(z.std()) == pytest.approx(SIGMA, rel=0.02)  # matched variance across noises
    # and a wrong distribution is told apart (the check has power)
    other = "laplace" if name != "laplace" else "gaussian"
    assert stats.kstest(z.numpy(), SCIPY[other].cdf).pvalue < 1e-6


def test_gaussian_draws_are_those_of_normal_():
    # the sampler's Gaussian noise is bit-identical to the pre-noise-object code (normal_ with sigma)
    a = Gaussian(0.3).sample_(torch.empty(1000), torch.Generator().manual_seed(5))
    b = torch.empty(1000).normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = Gaussian(0.3).draw((10, 3), torch.zeros(1), torch.Generator().manual_seed(6))
    assert torch.equal(c, 0.3 * torch.randn((10, 3), generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("name,norm", [("gaussian", "l2"), ("uniform", "l1"), ("laplace", "l1")])
def test_threshold_classifier_radius_is_the_distance_to_the_threshold(name, norm):
    """f(x) = 1 if x_0 > t: the exact p_A at x_0 = t + dist is P(z > -dist), and the exact
    robust radius (in every norm) is dist; each noise's radius formula is tight there."""
    noise = get_noise(name, SIGMA)
    assert noise.norm == norm
    for dist in (0.01, 0.1, 0.2, 0.3, 0.4):
        p_exact = float(SCIPY[name].sf(-dist))
        assert noise.radius(p_exact) == pytest.approx(dist, rel=1e-9, abs=1e-12)
        assert noise.p_needed(dist) == pytest.approx(p_exact, rel=1e-12)


@pytest.mark.parametrize("name", sorted(NOISES))
def test_radius_is_zero_at_or_below_one_half_and_increasing(name):
    noise = get_noise(name, SIGMA)
    p = np.linspace(0.0, 0.999, 500)
    r = noise.radius(p)
    assert (r[p <= 0.5] == 0).all()
    assert (np.diff(r[p > 0.5]) > 0).all()


@pytest.mark.parametrize("name", sorted(NOISES))
def test_constant_classifier_certifies_r_max_exactly(name):
    n, alpha = 2000, 0.001
    g = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], dtype=torch.long), 3, SIGMA, noise=name)
    res = g.certify_batch(torch.full((2, 1, 2, 2), 0.5), 50, n, alpha, seeds=[0, 1])
    noise = get_noise(name, SIGMA)
    assert res.prediction.tolist() == [0, 0]
    assert res.norm == noise.norm
    assert res.radius.tolist() == pytest.approx([noise.r_max(n, alpha)] * 2, rel=1e-12)
    assert noise.r_max(n, alpha) == pytest.approx(float(noise.radius(alpha ** (1 / n))))


def _threshold(t):
    return lambda x: (x[:, 0, 0, 0] > t).long()


@pytest.mark.parametrize("name", sorted(NOISES))
def test_certified_radius_exceeds_the_true_one_at_most_alpha_of_the_time(name):
    """Soundness of the whole CERTIFY path per noise: images at distance 0.15 from the
    threshold; a certificate beyond 0.15 (or for the wrong class) is wrong."""
    alpha, reps, dist, t = 0.1, 300, 0.15, 0.3
    g = SmoothedClassifier(_threshold(t), 2, SIGMA, noise=name)
    x = torch.full((reps, 1, 1, 1), t + dist)
    res = g.certify_batch(x, 20, 400, alpha, seeds=list(range(reps)))
    wrong = (res.prediction != ABSTAIN) & ((res.prediction != 1) | (res.radius > dist))
    # binomial(300, 0.1): mean 30, sd 5.2; 3 sd above alpha would flag an unsound formula
    assert float(wrong.float().mean()) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    # and it is not vacuous: most images are certified at a positive radius
    assert float((res.radius > 0).float().mean()) > 0.5


def test_a_uniform_radius_with_the_box_width_for_lambda_is_caught():
    """Positive control for the soundness test: taking lambda for the box's full width (a
    radius of 4 lam (p - 1/2), twice the true one) is flagged by the same check."""
    alpha, reps, dist, t = 0.1, 300, 0.15, 0.3
    g = SmoothedClassifier(_threshold(t), 2, SIGMA, noise="uniform")
    res = g.certify_batch(torch.full((reps, 1, 1, 1), t + dist), 20, 400, alpha, seeds=list(range(reps)))
    p_lower = lower_confidence_bound(res.counts_estimation[:, 1].numpy(), 400, alpha)
    broken = 2 * Uniform(SIGMA).radius(p_lower)
    assert float(np.mean(broken > dist)) > alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def test_implied_radii_between_norms():
    d = 784
    assert implied_radius(0.5, "l2", "l1", d) == 0.5
    assert implied_radius(0.5, "l2", "linf", d) == pytest.approx(0.5 / 28)
    assert implied_radius(0.5, "l1", "l2", d) == pytest.approx(0.5 / 28)
    assert implied_radius(0.5, "l1", "linf", d) == pytest.approx(0.5 / 784)
    # the implied l_inf box fits in the certified l2 ball: its corner has l2 norm r
    r = implied_radius(0.5, "l2", "linf", d)
    assert math.sqrt(d) * r == pytest.approx(0.5)


def test_noise_arguments_are_checked():
    with pytest.raises(ContractError, match="noise must be one of 'gaussian', 'uniform', 'laplace'"):
        get_noise("cauchy", 0.25)
    with pytest.raises(ContractError, match="sigma must be a positive"):
        Uniform(0.0)
    with pytest.raises(ContractError, match="needs sigma"):
        get_noise("laplace")
    assert get_noise(Laplace(0.5)) == Laplace(0.5)
    with pytest.raises(ContractError, match="differs"):
        get_noise(Laplace(0.5), 0.25)


# ---------------------------------------------------------------------------------------
# the command line: certify --noise, train --noise, analyze and report per norm

def test_certify_with_l1_noise_records_the_norm_and_its_r_max(tmp_path, capsys):
    import json

    from smoothguard.cli import main

    out = tmp_path / "lap.tsv"
    assert main(["certify", "--noise", "laplace", "--max", "2", "--n0", "20", "--n", "300", "--out", str(out)]) == 0
    assert "--noise laplace differs from the gaussian noise" in capsys.readouterr().err
    side = json.loads((tmp_path / "lap.tsv.json").read_text())["settings"]
    assert (side["noise"], side["norm"]) == ("laplace", "l1")
    assert side["r_max"] == pytest.approx(Laplace(side["sigma"]).r_max(300, side["alpha"]))
    # another noise on the same --out is a different run: resuming it is refused
    assert main(["certify", "--noise", "uniform", "--max", "2", "--n0", "20", "--n", "300", "--out", str(out)]) == 2
    assert "noise: file 'laplace', now 'uniform'" in capsys.readouterr().err
    # adaptive certification takes the noise's own thresholds: l1 grid radii for uniform noise
    assert main(["certify", "--noise", "uniform", "--radii", "0.25", "--max", "1", "--n-max", "500",
                 "--out", str(tmp_path / "a.tsv")]) == 0
    side = json.loads((tmp_path / "a.tsv.json").read_text())["settings"]
    assert (side["noise"], side["norm"], side["mode"]) == ("uniform", "l1", "adaptive")
    # a radius beyond the uniform noise's reach (l1 radii stay below lambda = sqrt(3) sigma) is refused
    assert main(["certify", "--noise", "uniform", "--radii", "0.5", "--max", "1", "--n-max", "500",
                 "--out", str(tmp_path / "b.tsv")]) == 2
    assert "beyond what uniform noise of sigma 0.25 can certify" in capsys.readouterr().err
    assert not (tmp_path / "b.tsv").exists()


def test_a_result_file_from_before_the_noise_setting_still_resumes(tmp_path):
    import json

    from smoothguard.cli import main

    out = tmp_path / "c.tsv"
    argv = ["certify", "--max", "3", "--n0", "20", "--n", "300", "--out", str(out)]
    assert main(argv[:2] + ["2"] + argv[3:]) == 0  # 2 images
    side_path = tmp_path / "c.tsv.json"
    side = json.loads(side_path.read_text())
    del side["settings"]["noise"], side["settings"]["norm"]  # as written before the noise object
    side_path.write_text(json.dumps(side))
    assert main(argv) == 0
    assert len(out.read_text().splitlines()) == 4  # header + 2 kept + 1 new


def test_train_with_uniform_noise_and_certify_defaults_to_it(tiny_idx_root, tmp_path, capsys):
    import json

    from smoothguard.cli import main
    from smoothguard.models.checkpoint import read_checkpoint

    run = tmp_path / "m"
    assert main(["train", "--root", str(tiny_idx_root), "--objective", "gaussian", "--noise", "uniform",
                 "--noise-sd", "0.5", "--epochs", "1", "--batch", "32", "--out", str(run)]) == 0
    meta = read_checkpoint(run / "model.pt")["meta"]
    assert meta["noise"] == "uniform" and meta["noise_sd"] == 0.5
    out = tmp_path / "c.tsv"
    assert main(["certify", "--model", str(run / "model.pt"), "--data", "fashion-mnist", "--root", str(tiny_idx_root),
                 "--max", "2", "--n0", "20", "--n", "200", "--out", str(out)]) == 0
    side = json.loads((tmp_path / "c.tsv.json").read_text())["settings"]
    assert (side["noise"], side["norm"], side["sigma"]) == ("uniform", "l1", 0.5)
    # the radii are uniform-noise l1 radii: at most 2 lambda (1/2) = sqrt(3) sigma
    radii = [float(r.split("\t")[3]) for r in out.read_text().splitlines()[1:]]
    assert all(0 <= r <= math.sqrt(3) * 0.5 + 1e-12 for r in radii)
    # --noise is a gaussian-objective option only
    assert main(["train", "--root", str(tiny_idx_root), "--objective", "pgd_at", "--noise", "uniform",
                 "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--noise does not apply to --objective pgd_at" in capsys.readouterr().err


def test_analyze_and_report_keep_norms_apart(tmp_path, capsys):
    from smoothguard.cli import main
    from smoothguard.evaluation.analysis import read_results
    from smoothguard.evaluation.plots import plot_certified_accuracy

    run = tmp_path / "run"
    run.mkdir()
    base = ["--max", "2", "--n0", "20", "--n", "300"]
    assert main(["certify", *base, "--out", str(run / "gauss.tsv")]) == 0
    assert main(["certify", "--noise", "uniform", *base, "--out", str(run / "unif.tsv")]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run / "gauss.tsv"), str(run / "unif.tsv")]) == 0
    table = capsys.readouterr().out
    assert "uniform sigma=0.25 n=300 (l1 radii)" in table
    with pytest.raises(ValueError, match="different norms"):
        plot_certified_accuracy([read_results(run / "gauss.tsv"), read_results(run / "unif.tsv")], None,
                                tmp_path / "mixed")
    assert main(["report", str(run), "-o", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "vs l2 radius" in html and "vs l1 radius" in html


def test_an_adaptive_file_from_before_the_sequential_setting_reads_as_bonferroni(tmp_path, capsys):
    import json

    from smoothguard.cli import main

    out = tmp_path / "a.tsv"
    argv = ["certify", "--radii", "0.25", "--n-max", "2000", "--sequential", "bonferroni", "--max", "2",
            "--out", str(out)]
    assert main(argv) == 0
    side_path = tmp_path / "a.tsv.json"
    side = json.loads(side_path.read_text())
    for key in ("sequential", "noise", "norm"):
        side["settings"].pop(key, None)  # as issue 7's adaptive runs wrote it
    side_path.write_text(json.dumps(side))
    assert main(argv) == 0  # resumes: the method it ran was Bonferroni's
    cs = [("cs" if a == "bonferroni" else a) for a in argv]
    assert main(cs) == 2
    assert "sequential: file 'bonferroni', now 'cs'" in capsys.readouterr().err
