"""Input-gradient regularization (Ross and Doshi-Velez 2018): the penalty is the squared
norm of each example's input gradient, checked against finite differences, and it is
trained by double backpropagation (its parameter gradient, too, against finite differences)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.training import StepContext, get_objective


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _penalty_fd(model, x, y, h=1e-6):
    """mean_i ||d CE_i / d x_i||^2 by central differences, one coordinate at a time."""
    total = 0.0
    for i in range(x.shape[0]):
        g = torch.zeros(x[i].numel(), dtype=torch.float64)
        for j in range(x[i].numel()):
            e = torch.zeros_like(x[i]).view(-1)
            e[j] = h
            e = e.view_as(x[i])
            up = F.cross_entropy(model((x[i] + e)[None]), y[i:i + 1])
            down = F.cross_entropy(model((x[i] - e)[None]), y[i:i + 1])
            g[j] = (up - down) / (2 * h)
        total += float(g.pow(2).sum())
    return total / x.shape[0]


def _ctx():
    return StepContext(epoch=0, epochs=1, step=0, steps_per_epoch=1, generator=torch.Generator().manual_seed(0))


def test_penalty_equals_finite_differences_and_zero_lambda_is_cross_entropy():
    model = _tiny()
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    obj = get_objective("gradreg", lbd=2.0)
    out = obj(model, x, y, _ctx())
    fd = _penalty_fd(model, x, y)
    assert float(out.stats["grad_norm2"]) == pytest.approx(fd, rel=1e-6)
    ce = float(F.cross_entropy(model(x), y))
    assert float(out.loss) == pytest.approx(ce + 2.0 * fd, rel=1e-6)
    plain = get_objective("gradreg", lbd=0.0)(model, x, y, _ctx())
    assert float(plain.loss) == pytest.approx(ce, rel=1e-12)


def test_the_penalty_is_trained_by_double_backprop():
    """d loss / d theta includes the penalty's own parameter gradient (create_graph)."""
    model = _tiny()
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    obj = get_objective("gradreg", lbd=5.0)
    obj(model, x, y, _ctx()).loss.backward()
    w = model[1].weight
    analytic = float(w.grad[1, 2])
    h = 1e-6

    def loss_at(delta):
        with torch.no_grad():
            w[1, 2] += delta
        val = float(obj(model, x, y, _ctx()).loss)
        with torch.no_grad():
            w[1, 2] -= delta
        return val

    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-5)
    # and it differs from the cross-entropy's gradient alone: the penalty term is trained
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert abs(float(w.grad[1, 2]) - analytic) > 1e-6


def test_gradreg_is_a_train_objective(tiny_idx_root, tmp_path, capsys):
    from smoothguard.cli import main

    out = tmp_path / "m"
    assert main(["train", "--root", str(tiny_idx_root), "--objective", "gradreg", "--lbd", "0.5", "--epochs", "1",
                 "--batch", "32", "--out", str(out)]) == 0
    log = (out / "log.tsv").read_text().splitlines()
    assert "grad_norm2" in log[0].split("\t")
    assert main(["train", "--root", str(tiny_idx_root), "--objective", "gradreg", "--lbd", "-1", "--epochs", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "lbd must be a non-negative" in capsys.readouterr().err
