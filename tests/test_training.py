import pytest
import torch

from smoothguard.data import load_dataset
from smoothguard.models import get_model, load_checkpoint
from smoothguard.models.checkpoint import CheckpointError
from smoothguard.training import StepContext, TrainConfig, Trainer, get_objective
from smoothguard.training.trainer import evaluate_accuracy


@pytest.fixture(scope="module")
def demo():
    ds = load_dataset("demo")
    return ds.subset(max_count=200), ds.subset(skip=1, max_count=500).subset(skip=5)


def _lenet(info):
    torch.manual_seed(0)
    return get_model("lenet", info.num_classes, info.input_shape, info.mean, info.std)


@pytest.mark.parametrize("objective,kwargs", [("standard", {}), ("gaussian", {"noise_sd": 0.25})])
def test_objective_decreases_its_loss_on_a_small_subset(demo, objective, kwargs):
    train, _ = demo
    model = _lenet(train.info)
    obj = get_objective(objective, **kwargs)
    before, _ = evaluate_accuracy(model, train)
    trainer = Trainer(model, obj, TrainConfig(epochs=4, batch_size=32, lr=0.05, schedule="constant", seed=1))
    history = trainer.fit(train)
    after, acc = evaluate_accuracy(model, train)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert after < 0.8 * before
    assert acc > 0.5


def test_gaussian_objective_draws_fresh_noise_every_batch():
    obj = get_objective("gaussian", noise_sd=0.5)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 2, requires_grad=True)

    gen = torch.Generator().manual_seed(0)
    x, y = torch.full((4, 1, 3, 3), 0.5), torch.zeros(4, dtype=torch.long)
    for step in range(2):
        obj(Probe(), x, y, StepContext(0, 1, step, 2, gen))
    assert not torch.equal(seen[0], seen[1])
    noise = torch.cat(seen) - 0.5
    assert abs(float(noise.std()) - 0.5) < 0.1  # pixel-unit sd, unclipped
    assert float(noise.min()) < -0.5 or float(noise.max()) > 0.5  # not clipped to [0,1]


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(demo, tmp_path):
    train, test = demo
    cfg = dict(batch_size=50, lr=0.02, seed=7, schedule="step", lr_step=1, gamma=0.5)
    meta = {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28], "mean": [0.286], "std": [0.353]}

    full = _lenet(train.info)
    Trainer(full, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=3, **cfg), meta).fit(
        train, test, tmp_path / "full")

    part = _lenet(train.info)
    Trainer(part, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=2, **cfg), meta).fit(
        train, test, tmp_path / "part")
    resumed_model = _lenet(train.info)
    trainer = Trainer(resumed_model, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=3, **cfg), meta)
    trainer.resume_from(tmp_path / "part" / "checkpoint.pt")
    assert trainer.start_epoch == 2
    trainer.fit(train, test, tmp_path / "part")

    for a, b in zip(full.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    log_full = (tmp_path / "full" / "log.tsv").read_text().splitlines()
    log_part = (tmp_path / "part" / "log.tsv").read_text().splitlines()
    assert len(log_part) == 4  # header + 3 epochs, no duplicates
    strip = lambda lines: [l.rsplit("\t", 1)[0] for l in lines]  # drop the seconds column
    assert strip(log_full) == strip(log_part)
    model, meta_out = load_checkpoint(tmp_path / "part" / "model.pt")
    assert meta_out["epochs_trained"] == 3 and meta_out["objective"] == "gaussian"
    assert meta_out["training"]["lr"] == 0.02 and "test_acc" in meta_out["metrics"]


def test_resume_with_other_settings_is_refused(demo, tmp_path):
    train, _ = demo
    meta = {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28], "mean": [0.286], "std": [0.353]}
    Trainer(_lenet(train.info), get_objective("standard"), TrainConfig(epochs=1, batch_size=100), meta).fit(
        train, None, tmp_path)
    t = Trainer(_lenet(train.info), get_objective("standard"), TrainConfig(epochs=2, batch_size=100, lr=0.5), meta)
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.01 vs now 0.5"):
        t.resume_from(tmp_path / "checkpoint.pt")


def test_config_and_objective_validation():
    with pytest.raises(ValueError, match="allowed: sgd, adam"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="allowed: constant, step, cosine"):
        TrainConfig(schedule="poly")
    with pytest.raises(ValueError, match="allowed: standard, gaussian"):
        get_objective("mixup")
    with pytest.raises(ValueError, match="noise_sd .pixel units. must be a positive"):
        get_objective("gaussian", noise_sd=0)
