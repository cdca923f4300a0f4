"""Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"): a minimal-norm white-box attack, l_inf
and l_2, untargeted or targeted (FAB-T, the third attack of AutoAttack's standard suite).

Each iteration linearizes the decision boundary between the true class y and one other
class s at the current iterate x_i,

    pi_i = {z : (f_s - f_y)(x_i) + <grad (f_s - f_y)(x_i), z - x_i> = 0},

and computes the smallest-norm steps that reach pi_i inside the image box, from the
iterate (delta_i) and from the original point (delta_0). The next iterate is a convex
combination biased towards the original point,

    x_{i+1} = clip((1 - a) (x_i + eta delta_i) + a (x_0 + eta delta_0)),
    a = min(||delta_i|| / (||delta_i|| + ||delta_0||), alpha_max),

with overshoot eta. When x_{i+1} is adversarial it is recorded if it is the smallest found
so far, and the search steps back towards the original point, x_{i+1} <- x_0 + beta
(x_{i+1} - x_0). Untargeted, s is the class whose linearized boundary is closest; with
targets, s is the target (FAB-T: the target only picks the boundary to follow, and any
misclassification found on the way counts, as in the paper's and AutoAttack's FAB-T).

Paper defaults: 100 iterations, alpha_max = 0.1, eta = 1.05, beta = 0.9; restarts after
the first start at a random point of radius min(best norm, eps) / 2.

Box-constrained projection onto a hyperplane: the minimal-norm delta with <w, delta> = r and
0 <= p + delta <= 1 moves each coordinate by m_i = min(lam a_i, b_i) in the direction
sign(r w_i), where b_i is the room left in the box in that direction and a_i = 1 (l_inf)
or |w_i| (l_2). <w, delta> is then piecewise linear and nondecreasing in lam, so lam is
found exactly, by a saturation fixed point and, for rows it has not settled in a few rounds,
by sorting the breakpoints b_i / a_i (:func:`boundary_step`). When the box
cannot reach the hyperplane, every coordinate moves to its bound (the closest point).
"""

from __future__ import annotations

import math

import torch

from smoothguard.attacks.base import (
    Attack,
    ContractError,
    AttackOutput,
    _bcast,
    check_fraction,
    check_int,
    check_positive,
    lp_norms,
)


def boundary_step(p: torch.Tensor, w: torch.Tensor, r: torch.Tensor, norm: str,
                  fixed_point_iterations: int = 8) -> torch.Tensor:
    """The smallest ``norm`` step delta with <w, delta> = r and p + delta in [0, 1]^d.

    Args:
        p: (N, d) points in [0, 1]; w: (N, d) hyperplane normals; r: (N,) required change
            of <w, .>. Where the box cannot reach the hyperplane, the step goes as far as
            the box allows in the right direction.
        fixed_point_iterations: rounds of the saturation fixed point (below) before the rows
            that have not settled are solved by sorting their breakpoints; both are exact.

    lam solves f(lam) = |r| with f(lam) = sum_i |v_i| min(lam a_i, room_i) nondecreasing and
    piecewise linear. The fixed point starts at lam_0 = |r| / sum_i |v_i| a_i (nothing
    saturated, a lower bound on the root since f(lam) <= lam sum_i |v_i| a_i), then
    saturates every coordinate whose breakpoint room_i / a_i is <= lam_k (saturated at the
    root too, as lam_k <= root) and solves the remaining linear equation for lam_{k+1}.
    lam_k increases and stays <= the root; when no coordinate is added, f(lam_k) = |r|
    exactly. On FAB's iterates it settles in about 3 rounds, half the time of a sort of
    every row; a row with many nearly equal breakpoints could need up to d rounds, hence
    the bounded rounds and the sort for the rest.
    """
    v = w * torch.sign(r).unsqueeze(1)  # now <v, delta> = |r| >= 0 is wanted (v = 0 where r = 0)
    need = r.abs()
    av = v.abs()
    room = torch.where(v > 0, 1.0 - p, p)  # how far each coordinate can move in its direction
    # coordinate i moves by m_i = min(lam a_i, room_i); it saturates at lam_i = room_i / a_i
    moving = av > 0
    if norm == "linf":
        bp, slope_i = room, av  # a coordinate with v_i = 0 adds 0 wherever its breakpoint is
    else:
        bp = torch.where(moving, room / torch.where(moving, av, torch.ones_like(av)), torch.full_like(av, math.inf))
        slope_i = av * av
    contrib = av * room  # <v, delta> of a saturated coordinate
    lam = _lam_fixed_point(bp, slope_i, contrib, need, fixed_point_iterations)
    todo = torch.isnan(lam)
    if bool(todo.any()):
        lam = lam.clone()
        lam[todo] = _lam_sorted(bp[todo], slope_i[todo], contrib[todo], need[todo])
    if norm == "linf":
        m = torch.minimum(lam.unsqueeze(1), room)
    else:  # inf * 0 would be nan where a coordinate does not move
        m = torch.minimum(lam.unsqueeze(1) * av, room)
    m = torch.where(moving, m, torch.zeros_like(m))
    # sign(v_i) m_i: <w, delta> = sign(r) <v, delta> = r; 0 where v_i = 0 (all of it when r = 0)
    return m * torch.sign(v)


def _lam_fixed_point(bp, slope_i, contrib, need, rounds: int) -> torch.Tensor:
    """lam per row by the saturation fixed point (see :func:`boundary_step`); inf where the
    box cannot reach the hyperplane, nan for the rows not settled within ``rounds``."""
    need = need.unsqueeze(1)
    zero = torch.zeros((), dtype=bp.dtype, device=bp.device)
    lam = need / slope_i.sum(1, keepdim=True).clamp_min(1e-30)
    lam = torch.where(slope_i.sum(1, keepdim=True) > 0, lam, torch.full_like(lam, math.inf))
    sat = bp <= lam
    settled = torch.zeros(lam.shape[0], dtype=torch.bool, device=lam.device)
    for _ in range(rounds):
        c = torch.where(sat, contrib, zero).sum(1, keepdim=True)
        e = torch.where(sat, zero, slope_i).sum(1, keepdim=True)
        lam = torch.where(e > 0, (need - c) / e.clamp_min(1e-30), torch.full_like(lam, math.inf))
        new_sat = bp <= lam
        settled = (new_sat == sat).all(1)
        sat = new_sat
        if bool(settled.all()):
            return lam.squeeze(1)
    return torch.where(settled, lam.squeeze(1), torch.full_like(need.squeeze(1), math.nan))


def _lam_sorted(bp, slope_i, contrib, need) -> torch.Tensor:
    """lam per row by sorting the breakpoints: f at breakpoint k is a cumulative sum."""
    lam_sorted, order = bp.sort(dim=1)
    e = slope_i.gather(1, order)  # slope of an unsaturated coordinate
    c = contrib.gather(1, order)  # <v, delta> of a saturated one
    c_before = c.cumsum(1) - c  # saturated below breakpoint k (exclusive)
    # unsaturated at breakpoint k (inclusive): a suffix sum, summed from the end (the total
    # minus a prefix sum would cancel the small slopes of the last coordinates away)
    e_from = e.flip(1).cumsum(1).flip(1)
    # f at lam = breakpoint k, nondecreasing in k (an infinite breakpoint has e = c = 0 here)
    f_k = c_before + torch.where(e_from > 0, lam_sorted * e_from, torch.zeros_like(e_from))
    k = (f_k < need.unsqueeze(1)).sum(1, keepdim=True)  # first breakpoint where it reaches |r|
    reachable = k.squeeze(1) < f_k.shape[1]
    kk = k.clamp(max=f_k.shape[1] - 1)
    slope = e_from.gather(1, kk).squeeze(1)
    lam = (need - c_before.gather(1, kk).squeeze(1)) / slope.clamp_min(1e-30)
    return torch.where(reachable & (slope > 0), lam, torch.full_like(lam, math.inf))


class FAB(Attack):
    """FAB (Croce & Hein 2020), l_inf or l_2, untargeted or targeted (FAB-T).

    A minimal-norm attack: without ``eps`` it returns, per example, the smallest
    adversarial point found (x itself where none was found). With ``eps`` it is the
    eps-bounded evaluation of the paper: a point stops as soon as an adversarial point of
    norm <= eps is found (nothing more is learned from it), and the result is projected
    onto the eps-ball as for every attack.

    Args (besides :class:`~smoothguard.attacks.base.Attack`'s):
        steps: iterations per run (paper: 100).
        restarts: runs; the first starts at x, later ones at a random point of radius
            min(best norm, eps) / 2 (``restart_radius`` when neither is known).
        alpha_max: the largest weight of the step from the original point (paper: 0.1).
        eta: overshoot of the projection steps (paper: 1.05).
        beta: backward step towards x after a success (paper: 0.9).
    """

    name = "fab"
    minimal = True

    def __init__(
        self,
        model,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        restart_radius: float | None = None,
        seed: int | None = None,
        force: bool = False,
        sanity_checks: bool = True,
    ) -> None:
        super().__init__(model, norm=norm, eps=eps, seed=seed, force=force, sanity_checks=sanity_checks)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.alpha_max = check_fraction("alpha_max", alpha_max, low_open=False)
        self.eta = check_positive("eta", eta)
        if self.eta < 1:
            raise ContractError(f"eta (overshoot) must be >= 1; got {eta}")
        self.beta = check_fraction("beta", beta, low_open=True, high_open=True)
        self.restart_radius = (check_positive("restart_radius", restart_radius) if restart_radius is not None
                               else {"linf": 0.3, "l2": 1.0}[norm])

    # -- the linearized boundary ---------------------------------------------------------

    def _boundary(self, xs: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None):
        """(g, grad g) at xs, where g = f_s - f_y for the class s to move towards:
        the target, or (untargeted) the class with the closest linearized boundary."""
        if t is not None:
            xg = xs.detach().requires_grad_(True)
            logits = self.model(xg)
            g = logits.gather(1, t.unsqueeze(1)).squeeze(1) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
            (grad,) = torch.autograd.grad(g.sum(), xg)
            return g.detach(), grad.flatten(1)
        # untargeted: the gradients of all f_k - f_y from one batched backward pass
        n = xs.shape[0]
        with torch.no_grad():
            k = self.model(xs[:1]).shape[1]
        rep = xs.detach().repeat(k, *([1] * (xs.ndim - 1))).requires_grad_(True)
        lr = self.model(rep).view(k, n, k)
        cls = torch.arange(k, device=xs.device)
        sel = lr[cls, :, cls] - lr.gather(2, y.view(1, n, 1).expand(k, n, 1)).squeeze(2)  # (k, n)
        (gr,) = torch.autograd.grad(sel.sum(), rep)
        gr = gr.view(k, n, -1)
        diff = sel.detach().t()  # (n, k)
        dual = gr.abs().sum(2) if self.norm == "linf" else gr.norm(dim=2)  # (k, n)
        dist = diff.abs() / (dual.t() + 1e-12)
        dist.scatter_(1, y.unsqueeze(1), math.inf)
        s = dist.argmin(1)
        rows = torch.arange(n, device=xs.device)
        return diff[rows, s], gr[s, rows]

    # -- the attack ------------------------------------------------------------------------

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        n = x.shape[0]
        shape = x.shape[1:]
        x0 = x.flatten(1)
        best = x0.clone()
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            clean_wrong = self.model(x).argmax(1) != y
        best_norm[clean_wrong] = 0.0
        for r in range(self.restarts):
            todo = ~clean_wrong
            if self.eps is not None:
                todo &= ~(best_norm <= self.eps)
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            start = x0[idx]
            if r > 0:
                start = self._random_start(start, best_norm[idx], gen)
            self._run_once(x0, y, targets, idx, start, best, best_norm, shape)
        return AttackOutput(best.view_as(x))

    def _random_start(self, x0: torch.Tensor, best_norm: torch.Tensor, gen) -> torch.Tensor:
        cap = self.eps if self.eps is not None else self.restart_radius
        radius = torch.clamp(best_norm, max=cap)
        if self.norm == "linf":
            t = 2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1
        else:
            t = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        t = t / _bcast(lp_norms(t, self.norm).clamp_min(1e-12), t)
        return (x0 + t * _bcast(radius / 2, t)).clamp(0.0, 1.0)

    def _run_once(self, x0_all, y_all, t_all, idx, start, best, best_norm, shape) -> None:
        """One FAB run on the points ``idx`` from ``start``; updates best / best_norm in place.

        Per iteration: the linearization at the iterate (one forward and backward pass),
        the step, and one forward pass for the decision at the new iterate (the paper's
        order). Points already found within eps leave the run (eps-bounded mode)."""
        x1 = start.clone()
        act = idx  # indices (into the batch) of the points still searched
        self._record(x1, x0_all[act], y_all[act], act, best, best_norm, shape)  # a random start may be adversarial
        for _ in range(self.steps):
            if self.eps is not None:  # eps-bounded: a point found within eps is done
                keep = ~(best_norm[act] <= self.eps)
                if not bool(keep.all()):
                    act, x1 = act[keep], x1[keep]
                    if act.numel() == 0:
                        break
            x0, y = x0_all[act], y_all[act]
            t = None if t_all is None else t_all[act]
            g, w = self._boundary(x1.view(-1, *shape), y, t)
            # the smallest steps to the linearized boundary, from the iterate and from x0
            r1 = -g
            r0 = -g - (w * (x0 - x1)).sum(1)
            d = boundary_step(torch.cat([x1, x0]), torch.cat([w, w]), torch.cat([r1, r0]), self.norm)
            d1, d0 = d[: len(x1)], d[len(x1):]
            a1 = lp_norms(d1, self.norm).clamp_min(1e-8)
            a0 = lp_norms(d0, self.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0.0, self.alpha_max).unsqueeze(1)
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d0) * alpha).clamp(0.0, 1.0)
            x1 = self._record(x1, x0, y, act, best, best_norm, shape)

    @torch.no_grad()
    def _record(self, x1, x0, y, act, best, best_norm, shape) -> torch.Tensor:
        """Keep the adversarial iterates that are the smallest found so far, and step those
        iterates back towards x0 (x0 + beta (x1 - x0)); returns the iterates."""
        adv = self.model(x1.view(-1, *shape)).argmax(1) != y
        if not bool(adv.any()):
            return x1
        nrm = lp_norms(x1[adv] - x0[adv], self.norm)
        a_idx = act[adv]
        better = nrm < best_norm[a_idx]
        best[a_idx[better]] = x1[adv][better]
        best_norm[a_idx[better]] = nrm[better]
        x1 = x1.clone()
        x1[adv] = x0[adv] + self.beta * (x1[adv] - x0[adv])
        return x1
