"""Property tests aimed at mutants that survived scripts/mutation.py's projection target (issue 24)."""

import math

import pytest
import torch

from smoothguard.attacks.base import lp_norms, project, project_exact, random_start


def _not_float32(v: torch.Tensor) -> torch.Tensor:
    """True where a float64 value is not a float32 number."""
    return v != v.float().double()


def test_float64_random_starts_are_drawn_at_float64_resolution():
    """A float64 batch gets a float64 random start, not float32 draws widened: on x = 0.5
    (no clipping; ``out - x`` is exact) the l_inf offsets and the l_2 radii are almost
    never float32 numbers (a float64 draw is one with probability ~2^-29)."""
    x = torch.full((64, 1, 4, 4), 0.5, dtype=torch.float64)
    out = random_start(x, 0.2, "linf", torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64
    assert float(_not_float32(out - x).double().mean()) > 0.99
    out = random_start(x, 0.2, "l2", torch.Generator().manual_seed(1))
    assert out.dtype == torch.float64
    radii = lp_norms(out - x, "l2")
    assert bool((radii <= 0.2 + 1e-12).all()) and float(out.min()) > 0.0
    # a float32 radius r * eps times a float64 unit direction keeps |delta| a float32 number
    # up to the direction's ~1e-16 rounding; a float64 radius is ~1e-9 away from one
    assert float(((radii - radii.float().double()).abs() > 1e-13).double().mean()) > 0.9


@pytest.mark.parametrize("shape", [(3, 8, 8), (192,)], ids=["images", "flat"])
@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_project_exact_l2_repair_lands_one_documented_slack_below_eps(eps, shape):
    """Rounding x + delta can add up to ~sqrt(d) float32 ulps to the l_2 norm, so the repair
    rescales the points whose norm rounds above eps to eps - sqrt(d) ulp in one pass: every
    repaired point ends below eps by 0.8 to 1.2 of that slack (d = 192 for images and for
    flat (N, 192) batches alike), not by the much smaller gap of a one-ulp aim (which
    needs more passes and lands closer) nor by a larger one."""
    g = torch.Generator().manual_seed(8)
    x = 0.3 + 0.4 * torch.rand(300, *shape, generator=g)
    d = torch.randn(x.shape, generator=g)
    d = d / lp_norms(d, "l2").view(-1, *[1] * len(shape)) * (1.5 * eps)
    over = lp_norms(project(x + d, x, eps, "l2") - x, "l2").double() > eps
    assert int(over.sum()) >= 20
    out = project_exact(x + d, x, eps, "l2")
    slack = math.sqrt(192) * torch.finfo(torch.float32).eps
    gap = (eps - lp_norms(out - x, "l2").double())[over] / slack
    assert float(gap.min()) >= 0.8 and float(gap.max()) <= 1.2


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("side", [1.0, -1.0], ids=["above", "below"])
def test_project_exact_linf_snaps_rounded_coordinates_to_eps_minus_four_ulps(eps, side):
    """A coordinate whose float32 x + eps rounds to just beyond eps is snapped, in float64,
    to x +- eps (1 - 4 ulp) and rounded to float32 once: in exact arithmetic it then lies
    eps * 4 ulp inside, give or take half an ulp of the result. Both sides (above x, and
    below x towards 0, where the result's ulps are tiny) are checked; stepping the point
    ulp by ulp instead, or another margin, lands elsewhere."""
    ulp = torch.finfo(torch.float32).eps
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(4000, 1, 1, 1, generator=g) + (0.0 if side > 0 else eps)
    z = x + side * 2 * eps
    plain = project(z, x, eps, "linf")
    bad = (plain - x).abs().double() > eps
    assert int(bad.sum()) >= 100  # the repair is exercised
    out = project_exact(z, x, eps, "linf")
    assert bool(((out - x).abs().double() <= eps).all())
    assert torch.equal(out[~bad], plain[~bad])
    inside = (eps - (out.double() - x.double()).abs())[bad] / (eps * ulp)  # exact in float64
    half_ulp = 0.5 * (torch.nextafter(out, torch.tensor(2.0)) - out).double()[bad] / (eps * ulp)
    assert bool(((inside - 4).abs() <= half_ulp + 1e-9).all())


@pytest.mark.parametrize("side", [1.0, -1.0], ids=["above", "below"])
def test_project_exact_linf_steps_back_to_the_farthest_float_within_a_small_eps(side):
    """eps = 0.003 next to x in [0.5, 1): one float32 ulp of the result (6e-8) is larger
    than the snap's margin eps * 4 ulp (1.4e-9), so the snapped point can round back
    beyond eps and the repair steps it towards x one float at a time: each repaired
    coordinate ends at the float32 farthest from x whose distance (computed in float32)
    is <= eps; one float further out is beyond eps."""
    eps, ulp = 0.003, torch.finfo(torch.float32).eps
    g = torch.Generator().manual_seed(1)
    x = 0.5 + 0.49 * torch.rand(2000, 1, 1, 1, generator=g) - (0.0 if side > 0 else -eps)
    z = x + side * 2 * eps
    plain = project(z, x, eps, "linf")
    bad = (plain - x).abs().double() > eps
    assert int(bad.sum()) >= 200
    out = project_exact(z, x, eps, "linf")
    half_ulp = 0.5 * (torch.nextafter(out, torch.tensor(2.0)) - out).double()
    assert bool((half_ulp[bad] > 4 * ulp * eps).all())  # the premise: the snap's margin is sub-ulp
    dist = (out - x).abs().double()
    further = (torch.nextafter(out, x + side) - x).abs().double()  # one float away from x
    assert bool((dist <= eps).all())
    assert bool((further[bad] > eps).all())


def test_project_exact_l2_holds_for_an_eps_below_the_rounding_slack():
    """eps = 1e-6 on 3x32x32 images is below the float32 rounding of x + delta (sqrt(d)
    ulps, ~7e-6): the repair cannot aim inside eps by the slack and must not overshoot
    through x to the other side; every result is still within eps of x."""
    g = torch.Generator().manual_seed(9)
    x = 0.2 + 0.6 * torch.rand(16, 3, 32, 32, generator=g)
    eps = 1e-6
    d = torch.randn(x.shape, generator=g)
    z = x + d / lp_norms(d, "l2").view(-1, 1, 1, 1) * (1.5 * eps)
    out = project_exact(z, x, eps, "l2")
    assert bool((lp_norms(out - x, "l2").double() <= eps).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
