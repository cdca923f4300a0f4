"""Property tests aimed at mutants that survived scripts/mutation.py's apgd target (issue 24).

APGD's step-size rule (Croce & Hein 2020, Algorithm 1, rho = 0.75): at a checkpoint w_j
the step halves and the search restarts from the best point x_max when
  (1) the loss rose in fewer than rho (w_j - w_{j-1}) of the steps since w_{j-1}, or
  (2) the step was not halved at w_{j-1} and f_max has not improved since then
      (not tested at w_1).
On a peak every checkpoint halves by condition 1, so the two conditions, the exact
boundary of (1) and the rise count are not told apart there. The landscapes below are
built so that they are: one pixel whose loss value and gradient sign are set per
interval (value and gradient decoupled), so that the loss can rise in exactly 3 of 4
steps, stay on a plateau, or climb without passing the start. APGD's queried points
must equal Algorithm 1 written out for one coordinate, and the trace of that oracle
shows which rule decided each checkpoint.
"""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from smoothguard.attacks import APGD
from smoothguard.attacks.apgd import apgd_checkpoints
from smoothguard.attacks.sanity import RobustnessWarning
from smoothguard.contract import ContractError

EPS = 0.3


def _checkpoints(n_iter):
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return [w for w in sorted({math.ceil(round(q * n_iter, 6)) for q in p[1:]}) if w < n_iter]


def _algorithm1(f, df, x0, n_iter, eps=EPS, alpha=0.75, rho=0.75):
    """Algorithm 1 for one coordinate (l_inf ball and [0, 1]); returns the iterates
    x_1..x_N and per checkpoint (w, rises since the last one, window, cond1, cond2)."""
    def proj(v):
        return min(max(v, x0 - eps, 0.0), x0 + eps, 1.0)

    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    eta, x, x_prev = 2 * eps, x0, x0
    fx = f(x)
    x_max, f_max, f_max_before, halved_before = x, fx, fx, True
    rises, last_w, path, trace = 0, 0, [], []
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
        if k + 1 in _checkpoints(n_iter):
            w = k + 1
            c1 = rises < rho * (w - last_w)
            c2 = not halved_before and f_max_before >= f_max
            trace.append((w, rises, w - last_w, c1, c2))
            if c1 or c2:
                eta /= 2
                x = x_prev = x_max
                fx = f_max
            halved_before, f_max_before, rises, last_w = c1 or c2, f_max, 0, w
    return path, trace


class _Cells(nn.Module):
    """One pixel v, label 0, logits (0, h): the CE loss softplus(h) is increasing in h.
    [0, 1] is cut at ``bounds``; on cell i, h = value(v, i) (no gradient) and dh/dv =
    sign[i] (the gradient, by a zero-valued term). Every forward input is recorded."""

    def __init__(self, bounds, value, sign):
        super().__init__()
        self.bounds = torch.tensor(bounds)
        self.value, self.sign = value, torch.tensor(sign, dtype=torch.float32)
        self.seen = []

    def cell(self, v):
        return int(np.searchsorted(np.asarray(self.bounds.tolist()), v, side="left"))

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        self.seen.append(v.detach().clone())
        i = torch.bucketize(v.detach(), self.bounds)  # number of bounds < v
        h = self.value(v.detach(), i) + self.sign[i] * (v - v.detach())
        return torch.stack([torch.zeros_like(h), h], 1)


def _steps_seen(model, x0, n_iter):
    atk = APGD(model, norm="linf", eps=EPS, steps=n_iter, random_start=False, seed=0, sanity_checks=False)
    x = torch.full((1, 1, 1, 1), x0)
    atk.perturb(x, torch.zeros(1, dtype=torch.long), torch.Generator().manual_seed(0))
    seen = torch.stack(model.seen).double()[:, 0]  # loss at x, the start, then x_1..x_N
    assert seen.shape == (n_iter + 2,)
    return seen[2:].tolist()


def _levels(levels):
    lv = torch.tensor(levels, dtype=torch.float32)
    return lambda v, i: lv[i] - 5.0


# (bounds, loss level per cell, gradient sign per cell, start): levels are integers, so
# a rise is a change of cell and a plateau is exact
EXACT_BOUNDARY = ([0.2566, 0.3374, 0.4116, 0.4673, 0.691], [1, 0, 2, 4, 3, 2], [1, 1, 1, -1, -1, 1], 0.35)
COND2_ALONE = ([0.4879, 0.554, 0.5567, 0.6503], [3, 0, 0, 4, 2], [1, 1, 1, 1, -1], 0.5)


@pytest.mark.parametrize("case", [EXACT_BOUNDARY, COND2_ALONE], ids=["exact_boundary", "cond2_alone"])
def test_apgd_halves_by_condition_1_or_2_as_algorithm_1_on_a_stepped_landscape(case):
    bounds, levels, signs, x0 = case
    model = _Cells(bounds, _levels(levels), signs)
    x0 = float(np.float32(x0))
    want, trace = _algorithm1(lambda v: levels[model.cell(v)], lambda v: signs[model.cell(v)], x0, 20)
    got = _steps_seen(model, x0, 20)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # no iterate within 2e-3 of a cell boundary: float32 and the oracle's float64 agree on cells
    assert min(abs(p - b) for p in want + [x0] for b in bounds) > 2e-3
    by_w = {w: (rises, window, c1, c2) for w, rises, window, c1, c2 in trace}
    assert sorted(by_w) == [5, 9, 12, 14, 16, 18, 19]
    if case is EXACT_BOUNDARY:
        # w = 9: the loss rose in 3 of 4 steps = rho * 4 exactly: condition 1 is false (strict <)
        assert by_w[9] == (3, 4, False, False)
        # w = 12: after no halving at 9 and no new maximum, both conditions hold
        assert by_w[12][2:] == (True, True)
    else:
        # w = 5: 4 rises of 5 (>= 3.75) and a new maximum: no halving; w = 9: 3 of 4 rises
        # (condition 1 false) but f_max unchanged after no halving: condition 2 alone halves
        assert by_w[5] == (4, 5, False, False)
        assert by_w[9] == (3, 4, False, True)


def test_apgd_does_not_apply_condition_2_at_the_first_checkpoint():
    """From x0 = 0.35 the loss (-G |v - x0| - 0.01, so f_max stays the start's) rises in
    4 of the first 5 steps: condition 1 is false at w_1 = 5, and condition 2 would halve
    there (no new maximum) if it were tested at w_1; the paper tests it from w_2 on, so
    there is no halving at 5, and at 9 condition 2 halves (no halving at 5, no new
    maximum since)."""
    bounds = [0.307, 0.4659, 0.5941, 0.6228, 0.7388]
    slopes = [0.906, 2.411, 0.566, 1.174, 0.101, 1.523]
    signs = [1, -1, 1, -1, 1, 1]
    x0 = float(np.float32(0.35))
    g = torch.tensor(slopes)
    model = _Cells(bounds, lambda v, i: -g[i] * (v - x0).abs() - 0.01, signs)
    f = lambda v: -slopes[model.cell(v)] * abs(v - x0) - 0.01  # noqa: E731
    want, trace = _algorithm1(f, lambda v: signs[model.cell(v)], x0, 20)
    got = _steps_seen(model, x0, 20)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert trace[0] == (5, 4, 5, False, False) and trace[1][3:] == (True, True)
    assert max(f(p) for p in want[:5]) < f(x0)  # no new maximum before w_1
    # x_6 stays on the face 0.65; a halving at w_1 would restart from x0 and step to 0.05
    assert want[5] == pytest.approx(0.65, abs=1e-6)
    pts = [x0] + want
    # distinct points have losses at least 3e-3 apart: float32 orders them as float64 does
    assert min(abs(f(p) - f(q)) for p in pts for q in pts if abs(p - q) > 1e-6) > 3e-3


# --- the schedule, the first step, the defaults and the arguments --------------------------

def test_apgd_checkpoints_equal_the_papers_schedule_in_exact_arithmetic():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N)
    for the p_j <= 1 (the largest is 0.99), computed with fractions for N = 1..300: short
    runs have a checkpoint at 1 (N <= 4) and at N itself (N < 100)."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    assert max(q for q in p if q <= 1) == Fraction(99, 100)
    for n in range(1, 301):
        want = sorted({math.ceil(q * n) for q in p if 0 < q <= 1})
        assert apgd_checkpoints(n) == want, n
    assert apgd_checkpoints(4)[0] == 1 and apgd_checkpoints(10)[-1] == 10


class _Linear(nn.Module):
    """logits (0, w.x + b): every loss of label 0 increases along w. Records its inputs."""

    def __init__(self, w, b=0.0):
        super().__init__()
        self.w, self.b = w.flatten(), b
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        h = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(h), h], 1)


def _ball(v, x, eps, norm):
    d = v - x
    if norm == "linf":
        return x + d.clamp(-eps, eps)
    n = d.norm()
    return x + d * min(1.0, eps / float(n))


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.3)])
def test_apgd_first_step_is_a_full_steepest_ascent_step_of_2_eps_without_momentum(norm, eps):
    """x_1 = P(x_0 + 2 eps d), d = sign(g) (l_inf) or g / ||g|| (l_2), from the random start
    x_0 (momentum starts at the second step); the points stay inside the box here."""
    w = torch.linspace(-1.0, 2.0, 16).reshape(1, 1, 4, 4)
    model = _Linear(w, b=-9.0)  # h = w.x + b stays near -5: never fooled, the gradient well above 0
    x = torch.full((1, 1, 4, 4), 0.5)
    APGD(model, norm=norm, eps=eps, steps=3, sanity_checks=False).perturb(
        x, torch.zeros(1, dtype=torch.long), torch.Generator().manual_seed(3))
    start, x1 = model.seen[1][0], model.seen[2][0]  # queries: x, the start, x_1, x_2, x_3
    assert float((start - x).abs().max()) > 0  # a random start
    d = w[0].sign() if norm == "linf" else w[0] / w.norm()
    want = _ball(start + 2 * eps * d, x[0], eps, norm)
    torch.testing.assert_close(x1, want, rtol=0, atol=1e-6)


def test_apgd_default_is_the_papers_100_iterations_and_one_iteration_is_allowed():
    model = _Linear(torch.ones(4), b=-50.0)
    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    APGD(model, eps=0.1, seed=0, sanity_checks=False).perturb(x, y, torch.Generator().manual_seed(0))
    assert len(model.seen) == 1 + 1 + 100  # the clean loss, the start, 100 iterates
    model.seen.clear()
    APGD(model, eps=0.1, steps=1, seed=0, sanity_checks=False).perturb(x, y, torch.Generator().manual_seed(0))
    assert len(model.seen) == 3


@pytest.mark.parametrize("kw, name", [
    ({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"), ({"rho": 0.0}, "rho"), ({"rho": 1.5}, "rho"),
    ({"momentum": 0.0}, "momentum"), ({"momentum": 1.5}, "momentum"),
])
def test_apgd_refuses_bad_arguments_by_name(kw, name):
    with pytest.raises(ContractError, match=rf"^{name} must"):
        APGD(_Linear(torch.ones(4)), eps=0.1, **kw)


def test_apgd_eps_above_one_needs_force():
    with pytest.raises(ContractError, match="force=True"):
        APGD(_Linear(torch.ones(4)), eps=1.5)
    atk = APGD(_Linear(torch.ones(4)), eps=1.5, force=True)
    assert atk.eps == 1.5


def test_apgd_cw_loss_is_capped_at_kappa():
    """The C&W margin w.x + b of label 0, capped at kappa = 0.5: one l_inf step of 0.1 on 16
    pixels moves it from -0.1 to 1.5, so the kept loss is the cap (uncapped: 1.5; CE: > 0.69)."""
    model = _Linear(torch.ones(16), b=-0.1 - 16 * 0.5)
    x = torch.full((1, 1, 4, 4), 0.5)
    res = APGD(model, eps=0.1, steps=5, loss="cw", kappa=0.5, random_start=False, seed=0,
               sanity_checks=False).run(x, torch.zeros(1, dtype=torch.long))
    assert bool(res.success[0])
    assert float(res.losses[0, 0]) == pytest.approx(0.5, abs=1e-6)


def test_apgd_eot_averages_that_many_gradient_draws_per_step():
    counts = {}
    for eot in (1, 3):
        model = _Linear(torch.ones(4), b=-50.0)
        APGD(model, eps=0.1, steps=4, eot=eot, seed=0, sanity_checks=False).perturb(
            torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, dtype=torch.long), torch.Generator().manual_seed(0))
        counts[eot] = len(model.seen)
    assert counts[3] == 3 * counts[1]


def test_apgd_sanity_checks_false_silences_the_gradient_warning():
    """A model whose input gradient is zero everywhere (a step function): the default run
    warns (gradient masking), sanity_checks=False does not."""
    class Step(nn.Module):
        def forward(self, x):
            h = (x.flatten(1).sum(1) > 100).float() + 0 * x.flatten(1).sum(1)
            return torch.stack([torch.ones_like(h), h], 1)

    x, y = torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, dtype=torch.long)
    for checks in (True, False):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            APGD(Step(), eps=0.1, steps=2, seed=0, sanity_checks=checks).run(x, y)
        warned = [w for w in got if issubclass(w.category, RobustnessWarning)]
        assert bool(warned) == checks
