"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020): score-based
black-box random search with square-shaped updates, l_inf and l_2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from smoothguard.attacks.base import (
    Attack,
    AttackOutput,
    _bcast,
    check_fraction,
    check_int,
    is_adversarial,
    lp_norms,
    project,
)
from smoothguard.attacks.losses import _other_max
from smoothguard.defaults import SQUARE_P_INIT, SQUARE_QUERIES

# fraction of pixels changed, as a function of progress (iterations scaled to 10,000):
# p_init halves at each of these boundaries (Andriushchenko et al. 2020, Appendix).
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(p_init: float, it: int, n_iters: int) -> float:
    """Andriushchenko et al.'s piecewise-constant schedule of the square size."""
    it = int(it / max(n_iters, 1) * 10000)
    halvings = sum(it > b for b in _SCHEDULE)
    return p_init / (2**halvings)


def _bump(h: int, w: int, device) -> torch.Tensor:
    """A pseudo-Gaussian bump on an h x w patch: a pixel at square-ring distance k from the
    centre gets sum_{j >= k} 1 / (j + 1)^2, normalized to unit l_2 norm."""
    ci, cj = h // 2, w // 2
    ii = torch.arange(h, device=device).view(-1, 1)
    jj = torch.arange(w, device=device).view(1, -1)
    ring = torch.maximum((ii - ci).abs(), (jj - cj).abs())
    kmax = max(ci, cj, h - 1 - ci, w - 1 - cj) + 1
    weights = 1.0 / (torch.arange(kmax, device=device, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} weights[j]
    out = tail[ring]
    return out / out.norm()


def _split_bump(s: int, transpose: bool, device) -> torch.Tensor:
    """Positive bump on one half of an s x s square, negative on the other (unit norm)."""
    top = _bump(s // 2, s, device) if s // 2 > 0 else torch.zeros(0, s, device=device)
    bottom = -_bump(s - s // 2, s, device)
    out = torch.cat([top, bottom], dim=0)
    out = out / out.norm()
    return out.t() if transpose else out


class Square(Attack):
    """Square Attack: random search that changes one square window at a time and keeps
    the change when it lowers the loss (margin z_y - max_{j != y} z_j untargeted, CE of
    the target targeted). l_inf: the window is set to +-eps per channel (vertical-stripe
    initialization); l_2: a pseudo-Gaussian bump is added in one window while the mass of
    a second window is moved into it, keeping ||delta||_2 = eps.

    Queries: 1 for the clean check, 1 for the initialization, then 1 per iteration for
    each example not yet fooled; never more than ``max_queries`` per example.

    Defaults: AutoAttack's standard settings (:mod:`smoothguard.defaults`), 5,000 queries
    and p_init = 0.8. The paper (Andriushchenko et al. 2020) uses 10,000 queries and
    p_init = 0.05 (l_inf) / 0.1 (l_2) on ImageNet; pass them to reproduce it. The same
    square position serves all images of a batch in an iteration.
    """

    name = "square"

    def __init__(
        self,
        model,
        norm: str = "linf",
        eps: float | None = None,
        max_queries: int = SQUARE_QUERIES,
        p_init: float | None = None,
        seed: int | None = None,
        force: bool = False,
        sanity_checks: bool = True,
    ) -> None:
        super().__init__(model, norm=norm, eps=eps, seed=seed, force=force, sanity_checks=sanity_checks)
        self.max_queries = check_int("max_queries", max_queries, 2)
        if p_init is None:
            p_init = SQUARE_P_INIT
        self.p_init = check_fraction("p_init", p_init)

    def _loss(self, logits, y, t):
        if t is None:
            return logits.gather(1, y.unsqueeze(1)).squeeze(1) - _other_max(logits, y)
        return F.cross_entropy(logits, t, reduction="none")

    def _randint(self, high: int, gen, device) -> int:
        return int(torch.randint(0, high, (1,), generator=gen, device=device).item())

    def _signs(self, shape, gen, x) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1

    @torch.no_grad()
    def _attack(self, x, y, targets, gen) -> AttackOutput:
        if x.ndim != 4:
            raise ValueError(f"Square needs images (N, C, H, W); got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        eps = self.eps
        queries = torch.ones(n, dtype=torch.long, device=x.device)  # the clean check
        clean_logits = self.model(x)
        done = is_adversarial(clean_logits.argmax(1), y, targets)

        # initialization (1 query for the points not already fooled)
        if self.norm == "linf":
            x_best = project(x + eps * self._signs((n, c, 1, w), gen, x), x, eps, "linf")
        else:
            x_best = project(x + self._l2_init(x, gen), x, eps, "l2")
        x_best = torch.where(_bcast(done, x), x, x_best)
        act = ~done
        logits = self.model(x_best)
        queries += act.long()
        loss = self._loss(logits, y, targets)
        done |= act & is_adversarial(logits.argmax(1), y, targets)

        n_iters = self.max_queries - 2
        # optional progress hook (the CLI's bar): thousands of queries per chunk of images
        on_iteration = getattr(self, "on_iteration", None)
        for i in range(n_iters):
            idx = (~done & (queries < self.max_queries)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if on_iteration is not None and i % 100 == 0:
                on_iteration(i, n_iters)
            p = square_p(self.p_init, i, n_iters)
            xb = x_best[idx]
            if self.norm == "linf":
                s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
                r, q = self._randint(h - s + 1, gen, x.device), self._randint(w - s + 1, gen, x.device)
                # only the window changes: x_best is already in the ball and the box, so the
                # window alone is set to x +- eps and projected (the rest is copied as is)
                xw = x[idx, :, r:r + s, q:q + s]
                x_new = xb  # x_best[idx] is a fresh copy
                x_new[:, :, r:r + s, q:q + s] = project(
                    xw + eps * self._signs((idx.numel(), c, 1, 1), gen, x), xw, eps, "linf")
            else:
                x_new = self._l2_step(x[idx], xb, p, gen)
            logits = self.model(x_new)
            queries[idx] += 1
            new_loss = self._loss(logits, y[idx], None if targets is None else targets[idx])
            better = new_loss < loss[idx]
            x_best[idx[better]] = x_new[better]
            loss[idx[better]] = new_loss[better]
            fooled = is_adversarial(logits.argmax(1), y[idx], None if targets is None else targets[idx])
            done[idx[better & fooled]] = True
        return AttackOutput(x_best, queries=queries)

    # -- l_2 ----------------------------------------------------------------------------

    def _l2_init(self, x, gen) -> torch.Tensor:
        """Tiles of pseudo-Gaussian bumps with random signs, scaled to norm eps."""
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        delta = torch.zeros_like(x)
        oh, ow = (h - s * (h // s)) // 2, (w - s * (w // s)) // 2
        bump = _bump(s, s, x.device).to(x.dtype)
        for i in range(h // s):
            for j in range(w // s):
                r, q = oh + i * s, ow + j * s
                delta[:, :, r:r + s, q:q + s] += bump * self._signs((n, c, 1, 1), gen, x)
        return delta * _bcast(self.eps / lp_norms(delta, "l2").clamp_min(1e-12), delta)

    def _l2_step(self, x, x_best, p, gen) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.eps
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = s + 1 if s % 2 == 0 else s
        s = min(s, h, w)
        r1, q1 = self._randint(h - s + 1, gen, x.device), self._randint(w - s + 1, gen, x.device)
        r2, q2 = self._randint(h - s + 1, gen, x.device), self._randint(w - s + 1, gen, x.device)
        delta = x_best - x
        win1 = (slice(None), slice(None), slice(r1, r1 + s), slice(q1, q1 + s))
        win2 = (slice(None), slice(None), slice(r2, r2 + s), slice(q2, q2 + s))
        both = torch.zeros_like(delta[:, :1])
        both[win1[0], :, win1[2], win1[3]] = 1
        both[win2[0], :, win2[2], win2[3]] = 1
        # the l2 mass (per channel) of the two windows, plus the unused budget, goes into
        # window 1: ||delta||_2 stays at eps (before clipping)
        mass = (delta * both).pow(2).sum(dim=(2, 3)).sqrt()  # (n, c)
        total = lp_norms(delta, "l2")  # (n,)
        spare = (eps**2 - total**2).clamp(min=0) / c
        target = (spare.view(-1, 1) + mass**2).sqrt()  # (n, c)
        old = delta[win1]
        old = old / (old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12)
        transpose = bool(self._randint(2, gen, x.device))
        new = _split_bump(s, transpose, x.device).to(x.dtype) * self._signs((n, c, 1, 1), gen, x) + old
        new = new / (new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * target.view(n, c, 1, 1)
        delta = delta.clone()
        delta[win2] = 0
        delta[win1] = new
        return project(x + delta, x, eps, "l2")
