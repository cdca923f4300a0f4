"""Input-gradient regularization (Ross and Doshi-Velez, AAAI 2018, "Improving the
Adversarial Robustness and Interpretability of Deep Neural Networks by Regularizing their
Input Gradients"; the lecture's "smoothing the output gradients").

loss = CE(f(x), y) + lbd * mean_i ||grad_{x_i} CE(f(x_i), y_i)||_2^2, the penalty trained
by double backpropagation (Drucker and Le Cun 1992): the input gradient is taken with
``create_graph=True`` so the optimizer differentiates through it. A flat loss surface
around the training points makes small perturbations change the loss less; it is cheaper
than adversarial training (one extra backward per step) and weaker against strong attacks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import check_nonnegative
from smoothguard.training.objectives import Objective, StepContext, StepOutput


class GradientRegularization(Objective):
    """Cross-entropy plus ``lbd`` times the mean squared l2 norm of each example's input
    gradient of its cross-entropy (pixel units). ``lbd`` = 0 is plain cross-entropy.

    Ross and Doshi-Velez chose lambda by validation; the default 1.0 here is not a paper
    number: on Fashion-MNIST LeNets the penalty starts near 1-10 and 1.0 keeps clean
    accuracy within a few points (see RESULTS.md). Logged: ``grad_norm2``, the batch mean of
    the squared gradient norms (before the weight lbd).
    """

    name = "gradreg"

    def __init__(self, lbd: float = 1.0) -> None:
        self.lbd = check_nonnegative("lbd", lbd)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        ce = F.cross_entropy(logits, y, reduction="none")
        # examples are independent (no batch norm in training mode across them), so the
        # gradient of the sum holds each example's own input gradient
        (grad,) = torch.autograd.grad(ce.sum(), xg, create_graph=True)
        penalty = grad.flatten(1).pow(2).sum(1).mean()
        loss = ce.mean() + self.lbd * penalty
        return StepOutput(loss, logits, {"grad_norm2": penalty.detach()})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "lbd": self.lbd}
