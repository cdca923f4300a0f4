"""BPDA (Athalye et al. 2018) against gradient-masking preprocessing: its gradient is the
surrogate's, and where PGD through the defense looks robust, PGD through BPDA breaks it."""

import warnings

import pytest
import torch
from torch import nn

from smoothguard.attacks import BPDA, PGD, RobustnessWarning
from smoothguard.models import BitDepthReduction, MedianFilter, defended

SHAPE = (1, 4, 4)


class MeanThreshold(nn.Module):
    """Class 1 iff the image's mean pixel is above 1/2: the decision boundary is known."""

    in_shape, num_classes = SHAPE, 2

    def forward(self, x):
        z = 20.0 * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([-z, z], dim=1)


def _points(n=8, level=0.56):
    return torch.full((n, *SHAPE), level), torch.ones(n, dtype=torch.long)


def test_forward_is_the_defense_and_the_gradient_is_the_surrogates():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    g = BitDepthReduction(3)
    x = torch.rand(5, *SHAPE, requires_grad=True)
    out = BPDA(f, g)(x)
    assert torch.equal(out, f(g(x.detach())))
    w = torch.randn(5, 3)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    gx = g(x.detach()).requires_grad_(True)
    (expected,) = torch.autograd.grad((f(gx) * w).sum(), gx)  # identity surrogate: f's gradient at g(x)
    torch.testing.assert_close(grad, expected)
    # a differentiable surrogate s: the gradient is s's vector-Jacobian product at x
    s = lambda v: v ** 2  # noqa: E731
    x2 = torch.rand(5, *SHAPE, requires_grad=True)
    (grad2,) = torch.autograd.grad((BPDA(f, g, s)(x2) * w).sum(), x2)
    gx2 = g(x2.detach()).requires_grad_(True)
    (g_at,) = torch.autograd.grad((f(gx2) * w).sum(), gx2)
    torch.testing.assert_close(grad2, g_at * 2 * x2.detach())
    # the defenses themselves pass no gradient to the input
    for layer in (BitDepthReduction(3), MedianFilter(3)):
        xi = torch.rand(2, *SHAPE, requires_grad=True)
        (gi,) = torch.autograd.grad(f(layer(xi)).sum(), xi)
        assert torch.count_nonzero(gi) == 0


def test_median_filter_is_a_median():
    x = torch.arange(16.0).view(1, 1, 4, 4) / 15
    out = MedianFilter(3)(x)
    # interior pixel (1, 1): the median of the 3x3 block of rows/cols 0..2
    assert float(out[0, 0, 1, 1]) == pytest.approx(float(x[0, 0, :3, :3].median()))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="odd"):
        MedianFilter(4)


@pytest.mark.parametrize("layer", [BitDepthReduction(3), MedianFilter(3)], ids=["bit-depth", "median"])
def test_pgd_looks_robust_through_the_defense_and_bpda_breaks_it(layer):
    f = MeanThreshold()
    model = defended(f, layer)
    x, y = _points()
    assert (model(x).argmax(1) == y).all()  # correct on the clean points
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masked = PGD(model, norm="linf", eps=0.1, steps=20, seed=0).run(x, y)
    assert masked.robust_accuracy == 1.0  # "robust": the gradient is zero
    assert any(issubclass(w.category, RobustnessWarning) and "gradient" in str(w.message) for w in caught)
    broken = PGD(BPDA(f, layer), norm="linf", eps=0.1, steps=20, seed=0).run(x, y)
    assert broken.robust_accuracy == 0.0
    # the adversarial points fool the real defended model, not only the approximation
    assert (model(broken.x_adv).argmax(1) != y).all()
    assert float((broken.x_adv - x).abs().max()) <= 0.1 + 1e-6


def test_evaluate_flags_the_masked_model():
    from smoothguard.evaluation.robustness import build_cascade, evaluate_robustness

    model = defended(MeanThreshold(), BitDepthReduction(3))
    x, y = _points(16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = evaluate_robustness(model, x, y, build_cascade(model, "linf", 0.1, attacks=["pgd", "square"]))
    messages = [str(w.message) for w in caught if issubclass(w.category, RobustnessWarning)]
    assert any("gradient masking is likely" in m for m in messages), messages
    assert float(ev.robust.float().mean()) == 0.0  # the black-box row broke what PGD could not
