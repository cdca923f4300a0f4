"""Free adversarial training (Shafahi et al. 2019): m replays of each minibatch, one
backward per replay updating both the weights and a perturbation that persists across
replays and minibatches and never leaves the eps-box."""

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.data.core import Dataset, DatasetInfo
from smoothguard.training import StepContext, TrainConfig, Trainer, get_objective


def _ctx(step=0):
    return StepContext(epoch=0, epochs=1, step=step, steps_per_epoch=2, generator=torch.Generator().manual_seed(0))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_one_backward_moves_the_perturbation_by_a_signed_gradient_step_inside_the_box():
    model = _model()
    obj = get_objective("free_at", eps=0.1, replays=4, step_size=0.06)
    x = torch.full((5, 1, 4, 4), 0.5)
    y = torch.tensor([0, 1, 2, 0, 1])
    out = obj(model, x, y, _ctx())
    assert torch.count_nonzero(obj.delta) == 0  # starts at zero, unchanged until the backward
    out.loss.backward()
    # the weights got their gradient from the same backward ...
    assert model[1].weight.grad is not None
    # ... and delta moved by step_size * sign of the loss gradient at x + delta (here x + 0)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    torch.testing.assert_close(obj.delta, 0.06 * g.sign())
    first = obj.delta.clone()
    # a second replay continues from it (persistence) and is clipped at eps
    obj(model, x, y, _ctx()).loss.backward()
    assert float(obj.delta.abs().max()) <= 0.1 + 1e-7  # eps, up to float32 rounding
    assert float(obj.delta.abs().max()) > 0.06  # two steps of 0.06 reached the clip at 0.1 somewhere
    moved = (obj.delta - first).abs()
    assert float(moved.max()) <= 0.06 + 1e-7  # one step of step_size at most


def test_the_trainer_replays_each_minibatch_and_delta_stays_in_the_ball():
    n = 64
    torch.manual_seed(1)
    images = torch.rand(n, 1, 4, 4)
    labels = (images.flatten(1).mean(1) > 0.5).long()
    info = DatasetInfo("toy", 2, (1, 4, 4), (0.5,), (0.25,), ("a", "b"))
    data = Dataset(images, labels, info)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    obj = get_objective("free_at", eps=0.05, replays=3)
    trainer = Trainer(model, obj, TrainConfig(epochs=1, batch_size=16, lr=0.1))
    steps = []
    original_step = trainer.optimizer.step

    def step_and_check(*a, **k):
        steps.append(1)
        assert obj.delta is None or float(obj.delta.abs().max()) <= 0.05 + 1e-7
        return original_step(*a, **k)

    trainer.optimizer.step = step_and_check
    trainer.fit(data)
    assert len(steps) == 3 * (n // 16)  # m optimizer steps per minibatch
    assert float(obj.delta.abs().max()) <= 0.05 + 1e-7
    assert float(obj.delta.abs().max()) > 0  # it did move


def test_free_at_from_the_command_line(tiny_idx_root, tmp_path, capsys):
    from smoothguard.cli import main
    from smoothguard.models.checkpoint import read_checkpoint

    out = tmp_path / "m"
    assert main(["train", "--root", str(tiny_idx_root), "--objective", "free_at", "--eps", "0.1", "--replays", "2",
                 "--epochs", "1", "--batch", "32", "--out", str(out)]) == 0
    training = read_checkpoint(out / "model.pt")["meta"]["training"]
    assert (training["objective"], training["replays"], training["step_size"]) == ("free_at", 2, 0.1)
    assert "delta_linf" in (out / "log.tsv").read_text().splitlines()[0].split("\t")
    assert main(["train", "--root", str(tiny_idx_root), "--objective", "pgd_at", "--replays", "2",
                 "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--replays does not apply to --objective pgd_at" in capsys.readouterr().err
