"""Learned noise-injection layers: PNI and CNI (docs/algorithms.md section 5).

* **PNI** (He, Rakin, Fan, "Parametric Noise Injection", CVPR 2019): each conv/linear
  layer adds Gaussian noise to its weights, W + alpha_w * std(W) * N(0, I), and/or to its
  output activations, a + alpha_a * std(a) * N(0, I); one learned scale per layer
  ("layerwise"), initialized to 0.25 (paper). std(.) is the layer's current (detached)
  standard deviation, as in the paper's code.
* **CNI** (Zheltonozhskii, Baskin, Nemcovsky, Chmiel, Mendelson, Bronstein, "Colored
  Noise Injection for Training Adversarially Robust Neural Networks", 2020): colored
  weight noise. Each output unit's fan-in weight vector w_j (length d) gets
  w_j + std(W) * (diag(s) z_j + V u_j) with z_j ~ N(0, I_d), u_j ~ N(0, I_r): Gaussian
  noise of covariance std(W)^2 (diag(s)^2 + V V^T) (low rank r plus diagonal), s and V
  learned per layer and, like PNI's alpha, relative to the layer's weight sd (absolute
  scales train unstably: they are tiny next to their gradients). Initialization (our
  choice): s = 0.25, V ~ N(0, 0.25^2 / r), rank r = 5.

Noise is active in train *and* eval mode (the defense is a stochastic classifier);
:func:`set_noise_injection` switches it off (deterministic model) and on. Noise is drawn
from torch's global generator, or from one bound with :func:`noise_generator` (the
trainer binds its per-epoch generator so training runs are reproducible and resumable).

Used through ``get_model("lenet" | "madry_cnn", ..., noise_injection=KIND)`` with KIND in
:data:`NOISE_INJECTIONS`; the option is stored in checkpoint metadata so that
``load_checkpoint`` rebuilds the noisy model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

NOISE_INJECTIONS = ("pni-w", "pni-a", "pni-wa", "cni")
PNI_ALPHA_INIT = 0.25  # He et al. 2019
CNI_RANK = 5


class NoiseInjection(nn.Module):
    """Base: wraps one ``nn.Conv2d`` or ``nn.Linear``; subclasses perturb its weights or
    outputs. ``enabled`` switches the noise; ``generator`` (None: global RNG) is its source."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"noise injection wraps nn.Conv2d or nn.Linear, got {type(layer).__name__}")
        self.layer = layer
        self.enabled = True
        self.generator: torch.Generator | None = None

    def _randn(self, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=like.device, dtype=like.dtype)

    def _apply_layer(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)

    def noisy_weight(self) -> torch.Tensor:
        return self.layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.layer(x)
        return self._apply_layer(x, self.noisy_weight())


class PNI(NoiseInjection):
    """Parametric noise injection on the weights (``weight``) and/or the output
    activations (``activation``) of one layer (He, Rakin, Fan, CVPR 2019)."""

    def __init__(self, layer: nn.Module, weight: bool = True, activation: bool = False,
                 alpha_init: float = PNI_ALPHA_INIT) -> None:
        super().__init__(layer)
        if not (weight or activation):
            raise ValueError("PNI needs weight and/or activation noise")
        self.alpha_w = nn.Parameter(torch.tensor(float(alpha_init))) if weight else None
        self.alpha_a = nn.Parameter(torch.tensor(float(alpha_init))) if activation else None

    def noisy_weight(self) -> torch.Tensor:
        w = self.layer.weight
        if self.alpha_w is None:
            return w
        return w + self.alpha_w * w.detach().std() * self._randn(w.shape, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.enabled and self.alpha_a is not None:
            out = out + self.alpha_a * out.detach().std() * self._randn(out.shape, out)
        return out

    def extra_repr(self) -> str:
        return f"weight={self.alpha_w is not None}, activation={self.alpha_a is not None}, enabled={self.enabled}"


class CNI(NoiseInjection):
    """Colored (low-rank plus diagonal covariance) learned weight noise on one layer
    (Zheltonozhskii et al. 2020); see the module docstring."""

    def __init__(self, layer: nn.Module, rank: int = CNI_RANK, scale_init: float = PNI_ALPHA_INIT) -> None:
        super().__init__(layer)
        if rank < 1:
            raise ValueError(f"CNI rank must be >= 1, got {rank}")
        w = layer.weight.detach()
        fan_in = w[0].numel()
        self.diag = nn.Parameter(torch.full((fan_in,), float(scale_init), dtype=w.dtype, device=w.device))
        self.factor = nn.Parameter(
            torch.randn(fan_in, rank, dtype=w.dtype, device=w.device) * scale_init / math.sqrt(rank))

    def noisy_weight(self) -> torch.Tensor:
        w = self.layer.weight
        out_units, rank = w.shape[0], self.factor.shape[1]
        z = self._randn((out_units, self.diag.shape[0]), w)
        u = self._randn((out_units, rank), w)
        noise = z * self.diag + u @ self.factor.t()
        return w + w.detach().std() * noise.view_as(w)

    def extra_repr(self) -> str:
        return f"rank={self.factor.shape[1]}, enabled={self.enabled}"


def _wrap(layer: nn.Module, kind: str) -> NoiseInjection:
    if kind == "pni-w":
        return PNI(layer, weight=True, activation=False)
    if kind == "pni-a":
        return PNI(layer, weight=False, activation=True)
    if kind == "pni-wa":
        return PNI(layer, weight=True, activation=True)
    return CNI(layer)


def add_noise_injection(net: nn.Module, kind: str) -> nn.Module:
    """Wrap every ``nn.Conv2d`` and ``nn.Linear`` of ``net`` (in place) with noise of
    ``kind`` in :data:`NOISE_INJECTIONS`; returns ``net``."""
    if kind not in NOISE_INJECTIONS:
        raise ValueError(f"unknown noise injection {kind!r}; allowed: {', '.join(NOISE_INJECTIONS)}")
    for name, child in list(net.named_children()):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(net, name, _wrap(child, kind))
        elif not isinstance(child, NoiseInjection):
            add_noise_injection(child, kind)
    return net


def noise_layers(model: nn.Module) -> list[NoiseInjection]:
    return [m for m in model.modules() if isinstance(m, NoiseInjection)]


def set_noise_injection(model: nn.Module, enabled: bool) -> int:
    """Switch every noise-injection layer of ``model`` on or off (in train and eval mode
    alike); returns how many layers were switched (0: the model has none)."""
    layers = noise_layers(model)
    for m in layers:
        m.enabled = bool(enabled)
    return len(layers)


@contextmanager
def noise_generator(model: nn.Module, generator: torch.Generator | None) -> Iterator[None]:
    """Draw the noise layers' noise from ``generator`` inside the block (restored after)."""
    layers = noise_layers(model)
    saved = [m.generator for m in layers]
    for m in layers:
        m.generator = generator
    try:
        yield
    finally:
        for m, g in zip(layers, saved):
            m.generator = g
