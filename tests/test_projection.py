"""The geometry of the threat model on its own: the public ``project()`` and
``project_exact()``, norms, random starts and step directions (issue 24: inside the
attack loops ``project_exact`` masked a broken ``project``)."""

import math

import pytest
import torch

from smoothguard.attacks.base import is_adversarial, lp_norms, normalize_grad, project, project_exact, random_start


def _batch(seed=0, n=32, shape=(3, 4, 4), spread=0.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    z = x + spread * (2 * torch.rand((n, *shape), generator=g) - 1)  # often outside ball and box
    return x, z


def _linf_nearest(z, x, eps):
    """The nearest point of {|d|_inf <= eps} n [0, 1]^d: coordinatewise clamp (separable)."""
    return torch.minimum(torch.maximum(z, (x - eps).clamp_min(0.0)), (x + eps).clamp_max(1.0))


@pytest.mark.parametrize("eps", [0.03, 0.1, 0.5])
def test_linf_projection_is_the_nearest_point_of_ball_and_box(eps):
    x, z = _batch()
    p = project(z, x, eps, "linf")
    assert float((p - x).abs().max()) <= eps + 1e-6
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    torch.testing.assert_close(p, _linf_nearest(z, x, eps), rtol=0, atol=1e-6)
    # moves only the coordinates that were outside
    inside = ((z - x).abs() <= eps) & (z >= 0) & (z <= 1)
    assert torch.equal(p[inside], z[inside])
    assert bool(((p - z).abs() > 0)[~inside].all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_idempotent_and_keeps_feasible_points(norm):
    eps = 0.1 if norm == "linf" else 0.8
    x, z = _batch(1)
    p = project(z, x, eps, norm)
    torch.testing.assert_close(project(p, x, eps, norm), p, rtol=0, atol=1e-6)
    assert bool((lp_norms(p - x, norm) <= eps * (1 + 1e-6)).all())
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    # points strictly inside ball and box do not move at all
    g = torch.Generator().manual_seed(2)
    d = 2 * torch.rand(x.shape, generator=g) - 1
    d = d / lp_norms(d, norm).view(-1, 1, 1, 1) * (0.5 * eps)
    xm = 0.25 + 0.5 * x  # away from the box edges
    inner = xm + d
    assert bool(((inner >= 0) & (inner <= 1)).all())
    assert torch.equal(project(inner, xm, eps, norm), inner)


def test_l2_projection_is_the_nearest_point_of_the_ball_when_the_box_is_inactive():
    """Radial scaling onto the sphere: the nearest point of the l2 ball (x in the middle of
    the box and eps small, so the clip to [0, 1] is inactive)."""
    g = torch.Generator().manual_seed(3)
    x = 0.4 + 0.2 * torch.rand(16, 1, 5, 5, generator=g)
    eps = 0.3
    d = torch.randn(x.shape, generator=g)
    d = d / lp_norms(d, "l2").view(-1, 1, 1, 1) * torch.linspace(0.1, 3.0, 16).view(-1, 1, 1, 1) * eps
    z = x + d
    p = project(z, x, eps, "l2")
    n = lp_norms(d, "l2")
    want = x + d * torch.clamp(eps / n, max=1.0).view(-1, 1, 1, 1)
    torch.testing.assert_close(p, want, rtol=0, atol=1e-6)
    outside = n > eps
    torch.testing.assert_close(lp_norms(p - x, "l2")[outside], torch.full((int(outside.sum()),), eps),
                               rtol=1e-5, atol=0)
    # nearest: no random feasible point is closer to z
    c = torch.randn(200, *x.shape[1:], generator=g)
    for i in range(4):
        cand = x[i] + c / lp_norms(c, "l2").view(-1, 1, 1, 1) * eps * torch.rand(200, 1, 1, 1, generator=g)
        assert float(lp_norms(cand - z[i], "l2").min()) >= float(lp_norms((p[i] - z[i])[None], "l2")[0]) - 1e-6


def test_l2_projection_with_the_box_active_stays_feasible_and_in_ball():
    x, z = _batch(4, spread=2.0)
    eps = 1.5
    p = project(z, x, eps, "l2")
    assert bool((lp_norms(p - x, "l2") <= eps * (1 + 1e-6)).all())
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    # the ball step scales the whole perturbation, then the box clips coordinates
    n = lp_norms(z - x, "l2").view(-1, 1, 1, 1)
    want = (x + (z - x) * torch.clamp(eps / n, max=1.0)).clamp(0.0, 1.0)
    torch.testing.assert_close(p, want, rtol=0, atol=1e-6)


def test_projection_without_eps_only_clips_and_zero_perturbation_stays():
    x, z = _batch(5)
    torch.testing.assert_close(project(z, x, None, "linf"), z.clamp(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(project(z, x, None, "l2"), z.clamp(0, 1), rtol=0, atol=0)
    for norm in ("linf", "l2"):
        out = project(x.clone(), x, 0.1, norm)
        assert torch.equal(out, x)  # no NaN from 0 / 0 in the l2 scaling


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_exact_is_within_eps_in_the_tensors_dtype_and_equals_project_otherwise(norm, dtype):
    eps = 8 / 255 if norm == "linf" else 0.5
    x, z = _batch(6, shape=(3, 16, 16))
    x, z = x.to(dtype), z.to(dtype)
    # points near 0 at distance ~eps: where one ulp of the result is far below one of the delta
    x[:, 0, 0, 0] = eps * 1.0000001
    z[:, 0, 0, 0] = -1.0
    out = project_exact(z, x, eps, norm)
    assert bool((lp_norms(out - x, norm).double() <= eps).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(out, project(z, x, eps, norm), rtol=0, atol=4 * eps * torch.finfo(dtype).eps + 1e-7)
    torch.testing.assert_close(project_exact(z, x, None, norm), z.clamp(0, 1), rtol=0, atol=0)
    same = project(z, x, eps, norm)
    ok = lp_norms(same - x, norm).double() <= eps
    assert torch.equal(out[ok], same[ok])  # already exact: untouched


def test_project_exact_repairs_float_rounding_above_eps():
    """A point whose delta rounds to just above eps in float32 is pulled back below it."""
    eps = 0.1
    x = torch.full((1, 1, 1, 1), 0.7)
    z = torch.nextafter(x + eps, torch.tensor(2.0)) + 0.0
    for k in range(6):
        z = torch.nextafter(z, torch.tensor(2.0))
    assert float((z - x).abs().double().max()) > eps
    out = project_exact(z, x, eps, "linf")
    assert float((out - x).abs().double().max()) <= eps
    assert float((out - x).abs().max()) >= eps * (1 - 1e-5)  # by a few ulps, not a big step
    d = 64
    x2 = torch.full((1, 1, 8, 8), 0.5)
    z2 = x2 + (eps / math.sqrt(d)) * (1 + 1e-6)
    out2 = project_exact(z2, x2, eps, "l2")
    assert float(lp_norms(out2 - x2, "l2").double()[0]) <= eps
    assert float(lp_norms(out2 - x2, "l2")[0]) >= eps * (1 - 1e-4)


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_project_exact_l2_repairs_rounding_along_the_same_direction(eps):
    """x + eps * d / ||d|| rounds to a norm above eps for many float32 points (box
    inactive here): project_exact brings each below eps by a relative 1e-4 at most, along
    the same direction, and leaves the points that were already inside untouched."""
    g = torch.Generator().manual_seed(8)
    x = 0.3 + 0.4 * torch.rand(300, 3, 8, 8, generator=g)
    d = torch.randn(x.shape, generator=g)
    d = d / lp_norms(d, "l2").view(-1, 1, 1, 1) * (1.5 * eps)
    plain = project(x + d, x, eps, "l2")
    over = lp_norms(plain - x, "l2").double() > eps
    assert int(over.sum()) >= 10  # the repair is exercised
    out = project_exact(x + d, x, eps, "l2")
    n = lp_norms(out - x, "l2").double()
    assert bool((n <= eps).all()) and bool((n >= eps * (1 - 1e-4)).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out[~over], plain[~over])
    cos = ((out - x).flatten(1).double() * d.flatten(1).double()).sum(1) / (n * (1.5 * eps))
    assert float(cos.min()) > 1 - 1e-6


def test_lp_norms_per_example():
    g = torch.Generator().manual_seed(7)
    d = torch.randn(5, 2, 3, 3, generator=g)
    flat = d.flatten(1).double()
    torch.testing.assert_close(lp_norms(d, "linf").double(), flat.abs().max(1).values, rtol=1e-6, atol=0)
    torch.testing.assert_close(lp_norms(d, "l2").double(), flat.pow(2).sum(1).sqrt(), rtol=1e-6, atol=0)
    assert lp_norms(torch.zeros(3, 0), "linf").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="norm"):
        lp_norms(d, "l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_uniform_in_the_ball(norm):
    """Inside ball and box; uniform: for l_inf each coordinate of delta / eps is U(-1, 1)
    (mean 0, mean |.| 1/2); for l_2 in d dimensions (||delta|| / eps)^d is U(0, 1) and the
    direction is symmetric. 4000 draws; tolerances are > 5 standard errors."""
    eps, d = (0.1, 4) if norm == "linf" else (0.2, 3)
    x = torch.full((4000, 1, 1, d), 0.5)
    start = random_start(x, eps, norm, torch.Generator().manual_seed(0))
    delta = (start - x).flatten(1).double() / eps
    assert bool((lp_norms(start - x, norm) <= eps * (1 + 1e-6)).all())
    if norm == "linf":
        assert float(delta.mean()) == pytest.approx(0.0, abs=0.02)
        assert float(delta.abs().mean()) == pytest.approx(0.5, abs=0.015)
        assert float(delta.abs().max()) > 0.99
    else:
        u = delta.norm(dim=1) ** d
        assert float(u.mean()) == pytest.approx(0.5, abs=0.025)
        assert float((u < 0.25).double().mean()) == pytest.approx(0.25, abs=0.04)
        assert float(delta.mean(0).abs().max()) < 0.05
    # deterministic under the generator's seed
    again = random_start(x, eps, norm, torch.Generator().manual_seed(0))
    assert torch.equal(start, again)
    one = random_start(x[:1], eps, norm, torch.Generator().manual_seed(0))  # a batch of one image
    assert bool((lp_norms(one - x[:1], norm) <= eps * (1 + 1e-6)).all())


def test_step_directions_and_success_rule():
    g = torch.tensor([[3.0, -4.0, 0.0]])
    assert normalize_grad(g, "linf").tolist() == [[1.0, -1.0, 0.0]]
    torch.testing.assert_close(normalize_grad(g, "l2"), torch.tensor([[0.6, -0.8, 0.0]]))
    assert torch.equal(normalize_grad(torch.zeros(1, 3), "l2"), torch.zeros(1, 3))
    small = torch.tensor([[3e-3, -4e-3], [0.0, 1e-9]])  # unit length whatever the scale
    torch.testing.assert_close(normalize_grad(small, "l2"), torch.tensor([[0.6, -0.8], [0.0, 1.0]]))
    pred, y = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])
    assert is_adversarial(pred, y, None).tolist() == [False, True, False]
    assert is_adversarial(pred, y, torch.tensor([0, 1, 1])).tolist() == [True, True, False]
