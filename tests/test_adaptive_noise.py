"""Adaptive and anytime certification under uniform and Laplace noise (l_1 radii), against
closed forms: the grid thresholds are the noise's p_needed, and on a classifier that
thresholds one pixel the exact p_A and the exact l_1 radius are known."""

import math

import numpy as np
import pytest
import torch

from smoothguard.noise import get_noise
from smoothguard.smoothing import ABSTAIN, SmoothedClassifier
from smoothguard.smoothing.adaptive import certify_adaptive, certify_anytime, certify_sequential, grid_thresholds

SIGMA = 0.25
CUT, PIXEL = 0.2, 0.5  # f(z) = 1 iff z > CUT; the image's one pixel is 0.5: distance 0.3 to the cut
DISTANCE = PIXEL - CUT
GRID = [0.1, 0.2, 0.35]  # 0.2 is below the exact radius 0.3, 0.35 above it


def threshold_one_pixel(z: torch.Tensor) -> torch.Tensor:
    return (z.flatten(1)[:, 0] > CUT).long()


def exact_p_a(noise: str) -> float:
    """P(PIXEL + d > CUT) = P(d > -DISTANCE) for the noise's d, in closed form."""
    if noise == "uniform":
        lam = math.sqrt(3.0) * SIGMA
        return (lam + DISTANCE) / (2 * lam)
    b = SIGMA / math.sqrt(2.0)
    return 1.0 - 0.5 * math.exp(-DISTANCE / b)


@pytest.mark.parametrize("noise", ["uniform", "laplace"])
def test_grid_thresholds_are_the_closed_form_p_needed_of_the_noise(noise):
    g = SmoothedClassifier(threshold_one_pixel, 2, SIGMA, noise=noise)
    t = grid_thresholds(g, [0.0, *GRID])
    if noise == "uniform":  # p = 1/2 + r / (2 lam)
        expected = [0.5 + r / (2 * math.sqrt(3.0) * SIGMA) for r in GRID]
    else:  # p = 1 - exp(-r / b) / 2
        expected = [1.0 - 0.5 * math.exp(-r / (SIGMA / math.sqrt(2.0))) for r in GRID]
    assert t[0] == 0.5 and np.allclose(t[1:], expected, rtol=1e-12)
    # the exact radius of the smoothed one-pixel classifier is the distance to the cut
    assert float(get_noise(noise, SIGMA).radius(exact_p_a(noise))) == pytest.approx(DISTANCE, rel=1e-12)


@pytest.mark.parametrize("noise", ["uniform", "laplace"])
@pytest.mark.parametrize("method", [certify_sequential, certify_adaptive])
def test_grid_certification_gives_the_largest_grid_radius_below_the_exact_one(noise, method):
    g = SmoothedClassifier(threshold_one_pixel, 2, SIGMA, noise=noise)
    x = torch.full((6, 1, 1, 1), PIXEL)
    res = method(g, x, GRID, n0=100, n_max=5000, alpha=0.001, seeds=list(range(6)))
    # p_A is 0.85 (uniform) / 0.91 (Laplace): 0.2 needs 0.73 / 0.84, 0.35 needs 0.90 / 0.93
    assert res.prediction.tolist() == [1] * 6
    assert res.radius.tolist() == [0.2] * 6
    assert (res.n_used < 5000).all()  # decided early: 0.35 is out of reach


@pytest.mark.parametrize("noise", ["uniform", "laplace"])
def test_anytime_radius_is_the_noise_radius_of_its_bound_and_stays_below_the_exact_one(noise):
    g = SmoothedClassifier(threshold_one_pixel, 2, SIGMA, noise=noise)
    res = certify_anytime(g, torch.full((6, 1, 1, 1), PIXEL), n0=100, budget=4000, alpha=0.001, tolerance=0.01,
                          seeds=list(range(6)))
    assert res.prediction.tolist() == [1] * 6
    r = res.radius.numpy()
    assert np.array_equal(r, g.noise.radius(res.p_lower.numpy()))
    assert (r < DISTANCE).all() and (r > 0.6 * DISTANCE).all()


def test_a_radius_the_noise_cannot_certify_is_refused_and_an_abstention_stays_one():
    g = SmoothedClassifier(threshold_one_pixel, 2, SIGMA, noise="uniform")
    with pytest.raises(ValueError, match=r"beyond what uniform noise of sigma 0.25 can certify \(l1 radii below 0.433"):
        certify_sequential(g, torch.full((1, 1, 1, 1), PIXEL), [0.2, 0.5])
    # at the cut itself p_A = 1/2: nothing is certified
    res = certify_sequential(g, torch.full((2, 1, 1, 1), CUT), GRID, n_max=2000, seeds=[0, 1])
    assert res.prediction.tolist() == [ABSTAIN] * 2 and res.radius.tolist() == [0.0, 0.0]
