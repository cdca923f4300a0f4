"""Backward Pass Differentiable Approximation (BPDA; Athalye, Carlini and Wagner, ICML 2018).

A defense that puts a non-differentiable or gradient-shattering preprocessing g in front
of a classifier f (quantization, a median filter, JPEG) gives gradient attacks zero or
useless gradients, so they fail while f(g(x)) is no more robust. BPDA attacks it anyway:
the forward pass runs the real g, the backward pass differentiates a surrogate s with
s(x) ~ g(x) instead, by default the identity (the gradient of f at g(x) is used as the
gradient at x). ``BPDA(model, g)`` is a module like any other, so every gradient attack
takes it: ``PGD(BPDA(f, g), ...)`` attacks f∘g through the approximation; the attack's
decisions (success, robust accuracy) are made by the same forward pass, f(g(x)).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class _Approximated(torch.autograd.Function):
    """Forward: g(x). Backward: the vector-Jacobian product of the surrogate at x."""

    @staticmethod
    def forward(ctx, x, g, surrogate):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        with torch.no_grad():
            return g(x)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.surrogate is None:  # identity: d s(x) / dx = I
            return grad_out, None, None
        with torch.enable_grad():
            xs = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(ctx.surrogate(xs), xs, grad_out)
        return grad, None, None


class BPDA(nn.Module):
    """``model(g(x))`` in the forward pass, differentiated as ``model(surrogate(x))``.

    Args:
        model: the classifier f on [0, 1] images (logits out).
        preprocessing: g, any callable on images (not differentiated).
        surrogate: a differentiable s with s(x) ~ g(x); None (default) is the identity,
            Athalye et al.'s choice for quantization and filters whose output stays close
            to the input.
    """

    def __init__(self, model: nn.Module, preprocessing: Callable[[torch.Tensor], torch.Tensor],
                 surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        if not callable(preprocessing) or (surrogate is not None and not callable(surrogate)):
            raise TypeError("preprocessing and surrogate must be callables on image batches")
        self.model = model
        self.preprocessing = preprocessing
        self.surrogate = surrogate
        for attr in ("in_shape", "num_classes"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_Approximated.apply(x, self.preprocessing, self.surrogate))
