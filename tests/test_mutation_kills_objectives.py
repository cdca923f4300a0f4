"""Property tests aimed at mutants that survived scripts/mutation.py's objectives target (issue 24).

The adversarial-training objectives' inner attacks: the threat model the objective was given
(its eps, not the library's default radius; its random start or none), and no warnings of the
evaluation-time sanity checks inside a training step (a model early in training may well
have flat gradients); the KL helper raises no implicit-dimension warning.
"""

import warnings

import torch
from torch import nn

from smoothguard.attacks.sanity import RobustnessWarning
from smoothguard.training.adversarial import PGDAT, TRADES, kl_div_rows
from smoothguard.training.objectives import StepContext


def _ctx(seed):
    return StepContext(0, 1, 0, 1, torch.Generator().manual_seed(seed))


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(-1, 1, 48).reshape(3, 16))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


def _batch():
    x = torch.full((4, 1, 4, 4), 0.5)
    return x, torch.tensor([0, 1, 2, 0])


def test_kl_div_rows_gives_no_implicit_dimension_warning():
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl = kl_div_rows(p, q)
    want = (p.softmax(1) * (p.log_softmax(1) - q.log_softmax(1))).sum(1)
    torch.testing.assert_close(kl, want)


def test_trades_inner_attack_uses_the_objectives_eps():
    """eps = 0.3 (above the library's default l_inf radius 0.1): the KL ascent moves pixels
    beyond 0.1 and never beyond 0.3."""
    model, (x, y) = _Linear(), _batch()
    obj = TRADES(beta=1.0, eps=0.3, attack_steps=10)
    x_adv = obj._attack_for(model).perturb(x, y, torch.Generator().manual_seed(0))
    dist = float((x_adv - x).abs().max())
    assert 0.1 + 1e-3 < dist <= 0.3 + 1e-6


def test_pgd_at_without_random_start_is_deterministic():
    """random_start=False: the attack starts at x, so the generator does not matter (one
    small step: the end point still shows where the attack started)."""
    model, (x, y) = _Linear(), _batch()
    obj = PGDAT(eps=0.1, attack_steps=1, step_size=0.01, random_start=False)
    a = obj._attack_for(model).perturb(x, y, torch.Generator().manual_seed(0))
    b = obj._attack_for(model).perturb(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert float((a - x).abs().max()) <= 0.01 + 1e-6
    obj_rs = PGDAT(eps=0.1, attack_steps=1, step_size=0.01)
    c = obj_rs._attack_for(model).perturb(x, y, torch.Generator().manual_seed(0))
    d = obj_rs._attack_for(model).perturb(x, y, torch.Generator().manual_seed(1))
    assert not torch.equal(c, d)  # the default random start does depend on it


class _Flat(nn.Module):
    """Logits that do not depend on the input (zero input gradient), trainable bias."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.b.expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :3]


def test_training_steps_raise_no_evaluation_sanity_warnings():
    """A zero input gradient is a warning sign when evaluating a defense, not when training
    (an untrained or flat model has it): the objectives' attacks run without those checks."""
    x, y = _batch()
    for obj in (PGDAT(eps=0.1, attack_steps=2), TRADES(beta=1.0, eps=0.1, attack_steps=2)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RobustnessWarning)
            out = obj(_Flat(), x, y, _ctx(0))
        assert torch.isfinite(out.loss)
