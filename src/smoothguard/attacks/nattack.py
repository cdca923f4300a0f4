"""NAttack (Li, Li, Wang, Zhang, Gong, ICML 2019): a score-based black-box attack that
learns a Gaussian search distribution over adversarial perturbations."""

from __future__ import annotations

import torch

from smoothguard.attacks.base import (
    Attack,
    AttackOutput,
    check_int,
    check_positive,
    is_adversarial,
    project,
)
from smoothguard.attacks.losses import _other_max


class NAttack(Attack):
    """NAttack: natural evolution strategies over N(mu, sigma^2 I) in arctanh space.

    A candidate is x'(g) = proj_eps((tanh(arctanh(2x - 1) + g) + 1) / 2), g ~ N(mu, sigma^2 I);
    the loss is the probability margin f = max(0, log p_y - max_{j != y} log p_j)
    (targeted: max(0, max_{j != t} log p_j - log p_t)); each iteration draws
    ``population`` candidates, z-scores their losses, and updates
    mu <- mu - lr / (population * sigma) * sum_i z_i eps_i.
    Only the model's output *probabilities* are used (a softmax of the logits: the model
    must return logits). A candidate that fools the model is kept at once.

    Queries: the clean check costs 1 per example and each iteration ``population``; the
    attack never spends more than ``max_queries`` per example (it stops before an
    iteration it could not pay for in full). Counts are in ``AttackResult.queries``.

    Paper settings (Li et al. 2019): population 300, sigma 0.1, learning rate 0.02,
    l_inf eps = 0.031 (CIFAR-10) / 0.2 (MNIST), up to 500 iterations (150,000 queries).

    Args:
        batch_size: largest number of images per forward pass.
    """

    name = "nattack"

    def __init__(
        self,
        model,
        norm: str = "linf",
        eps: float | None = None,
        max_queries: int = 10_000,
        population: int = 300,
        sigma: float = 0.1,
        learning_rate: float = 0.02,
        batch_size: int = 3000,
        seed: int | None = None,
        force: bool = False,
        sanity_checks: bool = True,
    ) -> None:
        super().__init__(model, norm=norm, eps=eps, seed=seed, force=force, sanity_checks=sanity_checks)
        self.population = check_int("population", population, 2)
        self.max_queries = check_int("max_queries", max_queries, 1)
        self.sigma = check_positive("sigma", sigma)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.batch_size = check_int("batch_size", batch_size, 1)

    def _probs(self, xs: torch.Tensor) -> torch.Tensor:
        outs = [torch.softmax(self.model(c).float(), dim=1) for c in xs.split(self.batch_size)]
        return torch.cat(outs)

    def _loss(self, logp, y, t):
        if t is None:
            m = logp.gather(1, y.unsqueeze(1)).squeeze(1) - _other_max(logp, y)
        else:
            m = _other_max(logp, t) - logp.gather(1, t.unsqueeze(1)).squeeze(1)
        return m.clamp(min=0)

    @torch.no_grad()
    def _attack(self, x, y, targets, gen) -> AttackOutput:
        n = x.shape[0]
        x_adv = x.clone()
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        chunk = max(1, self.batch_size // self.population)
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            t = None if targets is None else targets[sl]
            x_adv[sl], queries[sl] = self._attack_chunk(x[sl], y[sl], t, gen)
        return AttackOutput(x_adv, queries=queries)

    def _attack_chunk(self, x, y, t, gen):
        n, pop = x.shape[0], self.population
        shape = x.shape[1:]
        queries = torch.ones(n, dtype=torch.long, device=x.device)  # the clean check
        done = is_adversarial(self._probs(x).argmax(1), y, t)
        x_adv = x.clone()
        x_atanh = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        mu = 0.001 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        while True:
            act = (~done & (queries + pop <= self.max_queries)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            a = act.numel()
            noise = torch.randn((a, pop, *shape), generator=gen, device=x.device, dtype=x.dtype)
            g = mu[act].unsqueeze(1) + self.sigma * noise
            xa = x[act].unsqueeze(1)
            cand = (torch.tanh(x_atanh[act].unsqueeze(1) + g) + 1) / 2
            cand = project(cand.reshape(a * pop, *shape), xa.expand(a, pop, *shape).reshape(a * pop, *shape),
                           self.eps, self.norm)
            probs = self._probs(cand)
            queries[act] += pop
            logp = torch.log(probs.clamp_min(1e-30))
            yy = y[act].repeat_interleave(pop)
            tt = None if t is None else t[act].repeat_interleave(pop)
            fooled = is_adversarial(logp.argmax(1), yy, tt).view(a, pop)
            hit = fooled.any(dim=1)
            if bool(hit.any()):
                first = fooled.float().argmax(dim=1)  # first fooling candidate per example
                cand = cand.view(a, pop, *shape)
                rows = hit.nonzero().squeeze(1)
                x_adv[act[rows]] = cand[rows, first[rows]]
                done[act[rows]] = True
            f = self._loss(logp, yy, tt).view(a, pop)
            z = (f - f.mean(dim=1, keepdim=True)) / (f.std(dim=1, keepdim=True) + 1e-7)
            step = torch.einsum("ap,ap...->a...", z, noise)
            mu[act] = mu[act] - self.learning_rate / (pop * self.sigma) * step
        return x_adv, queries
