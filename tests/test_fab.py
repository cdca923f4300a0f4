"""FAB (Croce & Hein 2020): the box-constrained hyperplane projection against a linear
program / closed form, minimal norms on linear classifiers (exact distances known), the
targeted variant, and the eps-bounded mode used by ``evaluate``'s cascade."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from smoothguard.attacks import FAB, RobustnessWarning, lp_norms
from smoothguard.attacks.fab import boundary_step

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------
# the projection: min ||delta|| s.t. <w, delta> = r, 0 <= p + delta <= 1


def _lp_linf(p, w, r):
    """min t s.t. |delta_i| <= t, <w, delta> = r, -p <= delta <= 1 - p (variables delta, t)."""
    d = len(p)
    c = np.r_[np.zeros(d), 1.0]
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[r],
                  bounds=[(-pi, 1 - pi) for pi in p] + [(0, None)], method="highs")
    return res


def _qp_l2(p, w, r):
    res = minimize(lambda z: 0.5 * z @ z, np.zeros(len(p)), jac=lambda z: z, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda z: w @ z - r, "jac": lambda z: w}],
                   bounds=[(-pi, 1 - pi) for pi in p], options={"ftol": 1e-14, "maxiter": 500})
    return res


@pytest.mark.parametrize("rounds", [0, 1, 8])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_boundary_step_is_the_optimum_of_the_convex_program(norm, rounds):
    # rounds 0: every row by the sorted breakpoints; 1: most rows unsettled, sorted; 8: the
    # fixed point (the default)
    g = torch.Generator().manual_seed(0)
    n, d = 12, 10
    p = torch.rand(n, d, generator=g, dtype=torch.float64)
    p[:4, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # coordinates already on the box
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[5, 2:] = 0.0  # coordinates the hyperplane does not depend on must not move
    # r anywhere up to 95 % of what the box allows in its direction (feasible by construction)
    u = 1.9 * torch.rand(n, generator=g, dtype=torch.float64) - 0.95
    reach = torch.where(u[:, None] * w > 0, 1 - p, p) * w.abs()
    r = u * reach.sum(1)
    delta = boundary_step(p, w, r, norm, fixed_point_iterations=rounds)
    assert float(((p + delta).min())) >= -1e-12 and float((p + delta).max()) <= 1 + 1e-12
    assert torch.all(delta[5, 2:] == 0)
    for i in range(n):
        pi, wi, ri = p[i].numpy(), w[i].numpy(), float(r[i])
        ref = _lp_linf(pi, wi, ri) if norm == "linf" else _qp_l2(pi, wi, ri)
        assert ref.success, ref.message
        got = float(lp_norms(delta[i:i + 1], norm))
        opt = float(ref.fun) if norm == "linf" else float(np.linalg.norm(ref.x))
        assert abs(float(w[i] @ delta[i]) - ri) < 1e-9
        assert got == pytest.approx(opt, rel=1e-6, abs=1e-9), f"row {i}: {got} vs optimum {opt}"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_boundary_step_rows_the_fixed_point_has_not_settled_are_solved_exactly(norm):
    # halving weights on evenly spread rooms and a root just below the box's reach: each
    # round of the fixed point saturates about one more coordinate, so 8 rounds cannot
    # settle the row (checked for l_inf); the answer must not depend on how many rounds
    # ran before the sorted breakpoints took over
    from smoothguard.attacks import fab as fab_module

    d = 40
    w = (0.5 ** torch.arange(d, dtype=torch.float64)).unsqueeze(0)
    room = torch.linspace(0.01, 0.99, d, dtype=torch.float64).unsqueeze(0)
    p = 1 - room  # w > 0: every coordinate moves up, by at most its room
    r = torch.tensor([0.999999 * float((w * room).sum())], dtype=torch.float64)
    if norm == "linf":
        lam = fab_module._lam_fixed_point(room, w, w * room, r, 8)
        assert bool(torch.isnan(lam).all()), "the case must need more than 8 rounds"
    ref = boundary_step(p, w, r, norm, fixed_point_iterations=0)
    for rounds in (3, 8, 10_000):
        got = boundary_step(p, w, r, norm, fixed_point_iterations=rounds)
        assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    assert float((w * ref).sum()) == pytest.approx(float(r), rel=1e-12)
    assert float(ref.min()) >= 0 and bool(torch.all(ref <= room + 1e-15))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_boundary_step_unreachable_hyperplane_goes_to_the_box_corner(norm):
    p = torch.full((1, 4), 0.5, dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.0, 3.0]], dtype=torch.float64)
    r = torch.tensor([100.0], dtype=torch.float64)  # <w, delta> can reach 3 at most
    delta = boundary_step(p, w, r, norm)
    assert torch.allclose(delta, torch.tensor([[0.5, -0.5, 0.0, 0.5]], dtype=torch.float64))
    assert torch.all(boundary_step(p, w, torch.zeros(1, dtype=torch.float64), norm) == 0)


# ---------------------------------------------------------------------------------------
# linear classifiers: the minimal distances are known


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(weight)
            self.lin.bias.copy_(bias)

    def forward(self, x):
        return self.lin(x.flatten(1))


def _binary(n=16, d=64, seed=1):
    """Two classes, logits [0, w.x + b]; points inside [0.15, 0.85] with l_inf distances to
    the boundary in [0.02, 0.06], so the box never binds at the minimal perturbation."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(d, generator=g), 0.3
    center = 0.45 + 0.1 * torch.rand(n, d, generator=g)
    d_inf = 0.02 + 0.03 * torch.rand(n, generator=g)
    side = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    x = center + ((side * d_inf * w.abs().sum() - (center @ w + b)) / (w @ w)).unsqueeze(1) * w
    model = Linear(torch.stack([torch.zeros(d), w]), torch.tensor([0.0, b]))
    logit = x @ w + b
    dist = {"linf": logit.abs() / w.abs().sum(), "l2": logit.abs() / w.norm()}
    return model, x.view(n, 1, 8, 8), (logit > 0).long(), dist


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_minimal_norm_on_a_linear_classifier(norm, targeted):
    model, x, y, dist = _binary()
    res = FAB(model, norm=norm, steps=30).run(x, y, targets=(1 - y) if targeted else None)
    assert bool((res.adv_pred != y).all())
    ratio = res.norms / dist[norm]
    assert float(ratio.min()) >= 1 - 1e-4, "an adversarial point below the minimal distance is impossible"
    assert float(ratio.max()) <= 1.01, f"FAB {norm} norms / minimal distance: {ratio.tolist()}"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_bounded_succeeds_above_and_never_below_the_distance(norm):
    model, x, y, dist = _binary()
    for i in range(0, 16, 3):
        xi, yi, di = x[i:i + 1], y[i:i + 1], float(dist[norm][i])
        assert bool(FAB(model, norm=norm, eps=1.02 * di, steps=20).run(xi, yi).success)
        below = FAB(model, norm=norm, eps=0.98 * di, steps=20, restarts=3, seed=0).run(xi, yi)
        assert not bool(below.success)
        assert float(below.norms) <= 0.98 * di * (1 + 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_untargeted_finds_the_closest_of_several_boundaries(norm):
    """Three classes, linear: the minimal perturbation leaves y towards the class s whose
    boundary is closest, at distance |f_s - f_y| / ||w_s - w_y||_dual."""
    g = torch.Generator().manual_seed(3)
    d, n = 32, 10
    weight = torch.randn(3, d, generator=g)
    x = 0.4 + 0.2 * torch.rand(n, d, generator=g)
    model = Linear(weight, torch.zeros(3))
    logits = x @ weight.t()
    y = logits.argmax(1)
    q = 1 if norm == "linf" else 2
    dists = torch.stack([(logits[:, s] - logits.gather(1, y[:, None])[:, 0]).abs()
                         / (weight[s] - weight[y]).norm(p=q, dim=1) for s in range(3)], 1)
    dists[torch.arange(n), y] = float("inf")
    # keep the points whose minimal perturbation (along the closest facet's normal) stays
    # inside the box: its largest coordinate is dist (l_inf) or dist * max|n_i| / ||n|| (l_2)
    s_star = dists.argmin(1)
    normal = weight[s_star] - weight[y]
    reach = dists.min(1).values * (1 if norm == "linf" else normal.abs().amax(1) / normal.norm(dim=1))
    ok = reach < 0.35
    x, y, dists = x[ok], y[ok], dists[ok]
    assert len(y) >= 4
    res = FAB(model, norm=norm, steps=40).run(x.view(-1, 1, 4, 8), y)
    assert bool(res.success.all())
    assert torch.equal(res.adv_pred, dists.argmin(1))
    ratio = res.norms / dists.min(1).values
    assert float(ratio.min()) >= 1 - 1e-4 and float(ratio.max()) <= 1.01, ratio.tolist()


# ---------------------------------------------------------------------------------------
# a trained model


@pytest.fixture(scope="module")
def mlp(trained):
    """The small MLP of conftest's ``trained`` fixture and 16 test images it classifies right."""
    return trained["model"], trained["x"][:16], trained["y"][:16]


def test_targeted_follows_the_target_boundary_and_stays_minimal(mlp):
    """FAB-T towards each point's runner-up class: every result is misclassified, and its
    norm is no larger than the eps at which FAB-T with that eps succeeds (consistency of
    the minimal and the eps-bounded modes)."""
    model, x, y = mlp
    with torch.no_grad():
        runner_up = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        res = FAB(model, norm="l2", steps=50).run(x, y, targets=runner_up)
        assert bool((res.adv_pred != y).all())
        assert torch.equal(res.success, res.adv_pred == runner_up)
        assert float((res.adv_pred == runner_up).float().mean()) >= 0.75
        # at eps just above each minimal norm found, the eps-bounded run also succeeds
        for i in range(4):
            bounded = FAB(model, norm="l2", eps=float(res.norms[i]) * 1.001, steps=50).run(
                x[i:i + 1], y[i:i + 1], targets=runner_up[i:i + 1])
            assert bool(bounded.adv_pred != y[i])


def test_more_steps_never_give_a_larger_minimal_norm(mlp):
    """Best-so-far bookkeeping: the minimal norm after 40 steps is <= the one after 10 (the
    runs share their first 10 iterates: no randomness in the first run)."""
    model, x, y = mlp
    short = FAB(model, norm="linf", steps=10).run(x, y)
    long = FAB(model, norm="linf", steps=40).run(x, y)
    found = short.success
    assert bool(long.success[found].all())
    assert bool((long.norms[found] <= short.norms[found] + 1e-7).all())


def test_validation_errors_name_the_parameter(mlp):
    model = mlp[0]
    for kw, match in (({"steps": 0}, "steps"), ({"alpha_max": 1.5}, "alpha_max"), ({"eta": 0.5}, "eta"),
                      ({"beta": 1.0}, "beta"), ({"norm": "l1"}, "norm"), ({"restarts": 0}, "restarts")):
        with pytest.raises(ValueError, match=match):
            FAB(model, **kw)
