"""Input-preprocessing "defenses" that mask gradients, for studying obfuscated gradients.

Athalye, Carlini and Wagner (ICML 2018), "Obfuscated Gradients Give a False Sense of
Security": a non-differentiable or gradient-shattering preprocessing g in front of a model
makes gradient attacks fail while the model is no more robust. These layers exist to show
it (and to test :class:`smoothguard.attacks.BPDA`, which breaks them); they are not
defenses to deploy.

* :class:`BitDepthReduction` quantizes each pixel to ``bits`` bits (Xu, Evans and Qi 2018,
  "Feature Squeezing"): the rounding's gradient is zero almost everywhere.
* :class:`MedianFilter` replaces each pixel by the median of its ``size`` x ``size``
  neighbourhood (reflect padding), computed without a gradient (the filter is treated as a
  black box, as in the defenses Athalye et al. broke): no gradient reaches the input.

``defended(model, g)`` is ``nn.Sequential(g, model)`` with the model's ``in_shape`` and
``num_classes`` carried over, so attacks and the contract see the same shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import check_int


class BitDepthReduction(nn.Module):
    """x -> round(x (2^bits - 1)) / (2^bits - 1) for x in [0, 1]: 2^bits grey levels."""

    def __init__(self, bits: int = 3) -> None:
        super().__init__()
        self.bits = check_int("bits", bits, minimum=1, maximum=16)
        self.levels = float(2 ** self.bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class MedianFilter(nn.Module):
    """The median of each pixel's ``size`` x ``size`` neighbourhood per channel (``size``
    odd, reflect padding), computed without autograd: the output carries no gradient."""

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        self.size = check_int("size", size, minimum=1)
        if self.size % 2 == 0:
            from smoothguard.contract import ContractError

            raise ContractError(f"median filter size must be odd (3, 5, ...); got {size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            k, pad = self.size, self.size // 2
            padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
            patches = padded.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, k, k)
            med = patches.reshape(*patches.shape[:4], k * k).median(dim=-1).values
        # connected to x with a zero gradient (as a black-box filter looks to autograd), so
        # gradient attacks run and see nothing rather than fail
        return med + (x - x.detach()) * 0.0

    def extra_repr(self) -> str:
        return f"size={self.size}"


def defended(model: nn.Module, preprocessing: nn.Module) -> nn.Sequential:
    """``model`` behind ``preprocessing`` (x -> model(g(x))), keeping its declared shapes."""
    out = nn.Sequential(preprocessing, model)
    for attr in ("in_shape", "num_classes"):
        if hasattr(model, attr):
            setattr(out, attr, getattr(model, attr))
    return out
