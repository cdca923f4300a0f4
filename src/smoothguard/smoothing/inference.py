"""Smoothed inference as an empirical defense (Nemcovsky, Zheltonozhskii, Baskin et al.,
"Smoothed Inference for Adversarially-Trained Models").

Classify x by m noisy forward passes f(x + d_i), d_i ~ N(0, sigma^2 I) in pixel space (not
clipped), and combine them with one of the vote methods of :data:`VOTE_METHODS`:

* ``hard`` (prediction smoothing): the majority of the m argmaxes; scores are the vote
  frequencies;
* ``soft``: the argmax of the mean class probabilities (1/m) sum_i softmax(f(x + d_i))
  (the soft smoothed classifier of Salman et al. 2019);
* ``soft_logits``: the argmax of the mean *logits* (1/m) sum_i f(x + d_i), which is what
  the paper's reference code computes; named separately because it is not the mean of
  probabilities (one draw with a very negative logit can outvote the others);
* ``weighted``: each draw gives the class at rank r (r = 0 for its top class) the weight
  2^-r; scores are the mean weights, divided by sum_r 2^-r = 2 - 2^(1-K) so that they sum
  to 1 like the frequencies.

Ties between classes go to the lowest class index (``argmax``), as in CERTIFY's selection.
With m = 1 or sigma = 0 every method returns the base classifier's argmax.

Two ways in:

* :func:`smoothed_scores` / :meth:`SmoothedClassifier.vote`: inference with the
  sampler's per-image noise streams (a generator per image, drawn in blocks of
  ``NOISE_BLOCK`` exactly as :meth:`SmoothedClassifier.sample_counts` draws them), so a
  vote depends only on the image's seed, and ``hard`` votes are the sampler's counts;
* :class:`SmoothedModel`: an ``nn.Module`` whose forward returns the log of the smoothed
  class scores with fresh noise per call, so the smoothed classifier can be attacked,
  evaluated and used wherever a model is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from smoothguard.contract import (check_images, check_int, check_logits, check_nonnegative, forward_errors,
                                  model_in_shape)
from smoothguard.noise import Gaussian
from smoothguard.utils import make_generator

if TYPE_CHECKING:  # annotations only: core.py imports this module for SmoothedClassifier.vote
    from smoothguard.smoothing.core import SmoothedClassifier

VOTE_METHODS = ("hard", "soft", "soft_logits", "weighted")
LOG_FLOOR = 1e-20  # scores are clamped here before the log (as in SmoothAdv's loss)


def check_method(method: str) -> str:
    if method not in VOTE_METHODS:
        raise ValueError(f"vote method must be one of {', '.join(VOTE_METHODS)}; got {method!r}")
    return method


def draw_weights(outputs: torch.Tensor, method: str, num_classes: int) -> torch.Tensor:
    """What each noisy forward pass contributes to the vote: float (n, K).

    ``outputs`` are logits (n, K), or labels (n,) of a query-only classifier (then only
    ``hard`` is possible). ``hard``: one-hot of the argmax; ``soft``: softmax;
    ``soft_logits``: the logits; ``weighted``: 2^-rank, normalized to sum 1 per draw.
    The mean of these over the m draws is the smoothed score of :data:`VOTE_METHODS`.
    """
    check_method(method)
    k = int(num_classes)
    if outputs.dim() == 1:
        if method != "hard":
            raise ValueError(f"vote method {method!r} needs logits, but the base classifier returns labels "
                             "(a query-only classifier): use method 'hard'")
        labels = outputs.long()
        if bool(((labels < 0) | (labels >= k)).any()):
            raise ValueError(f"base classifier returned labels outside [0, {k})")
        return nn.functional.one_hot(labels, k).float()
    if outputs.dim() != 2 or outputs.shape[1] != k:
        raise ValueError(f"base classifier must return logits (n, {k}) or labels (n,); got shape "
                         f"{tuple(outputs.shape)}")
    out = outputs.float()
    if method == "hard":
        return nn.functional.one_hot(out.argmax(1), k).float()
    if method == "soft":
        return torch.softmax(out, dim=1)
    if method == "soft_logits":
        return out
    # weighted: rank 0 = the draw's top class; stable sort so equal logits rank by class index
    ranks = torch.argsort(torch.argsort(-out, dim=1, stable=True), dim=1, stable=True)
    return torch.pow(0.5, ranks.float()) / (2.0 - 2.0 ** (1 - k))


def vote_scores(outputs: torch.Tensor, method: str, num_classes: int | None = None) -> torch.Tensor:
    """Smoothed class scores from the outputs of m noisy passes: (m, N, K) logits (or (m, N)
    labels) -> float (N, K), the mean of :func:`draw_weights` over the m draws."""
    if outputs.dim() not in (2, 3):
        raise ValueError(f"outputs must be (m, N, K) logits or (m, N) labels; got shape {tuple(outputs.shape)}")
    if num_classes is None:
        if outputs.dim() == 2:
            raise ValueError("num_classes is needed when the outputs are labels")
        num_classes = outputs.shape[2]
    m, n = outputs.shape[:2]
    flat = outputs.reshape(m * n, *outputs.shape[2:])
    return draw_weights(flat, method, num_classes).view(m, n, -1).mean(0)


# --------------------------------------------------------------------------- the sampler's noise


def _outputs(smoothed: SmoothedClassifier, batch: torch.Tensor) -> torch.Tensor:
    """Raw outputs (logits or labels) of the base classifier: the forward pass of the
    sampler without the reduction to labels."""
    out = smoothed._raw(batch)
    if out.shape[0] != batch.shape[0]:
        raise ValueError(f"base classifier returned {out.shape[0]} outputs for {batch.shape[0]} inputs")
    return out


def smoothed_scores(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    m: int,
    method: str = "hard",
    batch_size: int = 400,
    *,
    generators: Sequence[torch.Generator] | None = None,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Smoothed class scores of each image from ``m`` noisy forward passes: float (B, K).

    The noise of image i comes from its own generator (``generators``, else ``seeds``, else
    drawn from ``generator``; as in :meth:`SmoothedClassifier.sample_counts`), in blocks of
    ``min(NOISE_BLOCK, batch_size)`` draws with the sampler's memory layout, so image i's
    noisy copies are exactly those that ``sample_counts`` draws with the same seed (and
    ``m * scores`` of ``hard`` equals its counts). Forward batches pack up to
    ``batch_size`` noisy copies, possibly of several images.

    It runs the sampler's one loop (:meth:`SmoothedClassifier._noise_sum`, workers
    included) with the vote weights of each noisy pass in place of its argmax.
    """
    check_method(method)
    m, k = check_int("the number of noise samples m", m, minimum=1), smoothed.num_classes
    x, gens = smoothed._prepare(x, m, batch_size, generators, seeds, generator)
    scores = smoothed._noise_sum(x, gens, m, batch_size,
                                 score=lambda batch: draw_weights(_outputs(smoothed, batch), method, k))
    return (scores / m).float().cpu()


# --------------------------------------------------------------------------- the module


class SmoothedModel(nn.Module):
    """The smoothed classifier as an ``nn.Module``: ``forward(x)`` returns the log of the
    smoothed class scores (N, K) from ``m`` fresh noise draws per call.

    * ``soft``: log((1/m) sum_i softmax(f(x + d_i))), differentiable (SmoothAdv's
      objective; clamped at 1e-20 before the log);
    * ``soft_logits``: log_softmax of the mean logits, differentiable;
    * ``hard`` / ``weighted``: the value is the log of the vote frequencies (log of the
      normalized rank weights), clamped at 1e-20. Votes have zero gradient almost
      everywhere, so the gradient is that of ``soft`` for the same noise (a
      straight-through estimator: out = log_soft + (log_votes - log_soft).detach()).

    The outputs are log-probabilities (rows of exp(out) sum to 1, up to the clamp), so
    ``argmax`` is the smoothed decision, cross-entropy works on them as on logits, and a
    score-based attack (NAttack) reads the smoothed probabilities through a softmax.

    The model is stochastic: every call draws new noise, so gradient attacks must average
    over calls (``eot`` > 1) or use EPGD; the attacks' sanity check warns otherwise.
    Noise is drawn on the input's device and dtype as ``sigma * torch.randn((k, N, C, H, W))``
    for successive chunks of k draws (k = m when ``batch_size`` is None), from a generator
    seeded with ``seed`` (one per device), or torch's global generator when ``seed`` is None.
    With ``sigma = 0`` there is no noise and one forward pass (every method is then the
    base model's argmax).

    Args:
        base: ``nn.Module`` (or callable) mapping [0, 1] images to logits (N, K).
        sigma: noise standard deviation in [0, 1] pixel units (>= 0).
        m: noise draws per forward call (paper: 1 to 256, accuracy grows with m).
        method: one of :data:`VOTE_METHODS`.
        batch_size: most noisy images per forward pass of ``base`` (None: all m * N at once;
            at least one draw of the whole batch per pass).
        seed: seed of the noise generator (None: torch's global generator).
    """

    def __init__(self, base: nn.Module, sigma: float, m: int = 8, method: str = "soft", *,
                 batch_size: int | None = None, seed: int | None = None) -> None:
        super().__init__()
        if not callable(base):
            raise TypeError(f"base must be an nn.Module or a callable returning logits; got {type(base).__name__}")
        sigma = check_nonnegative("sigma (in [0, 1] pixel units)", sigma)
        m = check_int("m (noise draws per forward)", m, minimum=1)
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, minimum=1)
        if seed is not None:
            seed = check_int("seed", seed, minimum=-(2**63))
        self.base = base
        self.sigma = sigma
        self.m = m
        self.method = check_method(method)
        self.batch_size = batch_size
        self.seed = seed
        self._gens: dict[str, torch.Generator] = {}

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, m={self.m}, method={self.method!r}, batch_size={self.batch_size}, seed={self.seed}"

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._gens:
            self._gens[key] = make_generator(self.seed, device)
        return self._gens[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x, "x", single=False, in_shape=model_in_shape(self.base))
        n = x.shape[0]
        m = 1 if self.sigma == 0 else self.m
        per_pass = m if self.batch_size is None else max(1, min(m, self.batch_size // max(n, 1)))
        straight_through = self.method in ("hard", "weighted") and torch.is_grad_enabled()
        gen = self._generator(x.device)
        total = soft_total = None
        for start in range(0, m, per_pass):
            k = min(per_pass, m - start)
            if self.sigma == 0:
                batch = x
            else:
                noise = Gaussian(self.sigma).draw((k, *x.shape), x, gen)  # sigma * randn, the one noise object
                batch = (x.unsqueeze(0) + noise).reshape(k * n, *x.shape[1:])
            with forward_errors(x.shape[1:], "the base model"):
                out = check_logits(self.base(batch), count=k * n, name="the base model")
            w = draw_weights(out, self.method, out.shape[1]).view(k, n, -1).sum(0)
            total = w if total is None else total + w
            if straight_through:
                s = torch.softmax(out.float(), dim=1).view(k, n, -1).sum(0)
                soft_total = s if soft_total is None else soft_total + s
        scores = total / m
        if self.method == "soft_logits":
            return torch.log_softmax(scores, dim=1)
        logp = torch.log(scores.clamp_min(LOG_FLOOR))
        if straight_through:
            log_soft = torch.log((soft_total / m).clamp_min(LOG_FLOOR))
            logp = log_soft + (logp - log_soft).detach()
        return logp
