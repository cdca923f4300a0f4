"""Denoised smoothing (Salman et al. 2020): DnCNN, the denoiser objectives on the one
trainer, train-denoiser and certify --denoiser."""

import json

import pytest
import torch
from torch import nn

from smoothguard.cli import main
from smoothguard.data import load_dataset
from smoothguard.models import (
    DenoisedClassifier, DnCNN, get_denoiser, get_model, load_checkpoint, load_default_model, save_checkpoint,
)
from smoothguard.smoothing import SmoothedClassifier
from smoothguard.training import TrainConfig, Trainer, get_objective
from smoothguard.utils import make_generator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo", "test")


def _noisy_mse(den: nn.Module, x: torch.Tensor, sd: float, seed: int = 123) -> float:
    noise = torch.randn(x.shape, generator=make_generator(seed))
    with torch.no_grad():
        return float(((den(x + sd * noise) - x) ** 2).mean())


@pytest.mark.parametrize("depth,width", [(2, 4), (5, 16), (17, 64)])
def test_dncnn_is_exactly_the_identity_at_init_and_has_no_normalization(depth, width):
    den = get_denoiser("dncnn", (3, 9, 7), depth=depth, width=width)
    x = torch.randn(4, 3, 9, 7) * 2  # values outside [0, 1] too: the output is not clipped
    assert torch.equal(den(x), x)
    convs = [m for m in den.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d))
                   for m in den.modules())
    # the residual net itself is not trivial: only its last layer is zero
    assert convs[0].weight.abs().sum() > 0 and convs[-1].weight.abs().sum() == 0


def test_dncnn_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth must be >= 2"):
        DnCNN(1, depth=1)
    with pytest.raises(ValueError, match="unknown denoiser"):
        get_denoiser("unet", (1, 28, 28))


def test_denoiser_checkpoint_round_trips(tmp_path):
    den = get_denoiser("dncnn", (1, 28, 28), depth=3, width=8)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "den.pt"
    save_checkpoint(path, den, {"kind": "denoiser", "arch": "dncnn", "in_shape": [1, 28, 28],
                                "model_options": {"depth": 3, "width": 8}})
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 1, 28, 28)
    assert meta["kind"] == "denoiser" and isinstance(loaded, DnCNN)
    assert torch.equal(loaded(x), den(x)) and not torch.equal(den(x), x)


def test_mse_objective_lowers_the_error_on_noisy_images(demo):
    torch.manual_seed(0)
    train, held_out = demo.subset(max_count=300), demo.subset(start=300, max_count=100)
    den = get_denoiser("dncnn", (1, 28, 28), depth=3, width=8)
    before = _noisy_mse(den, held_out.images, 0.25)
    assert before == pytest.approx(0.0625, rel=0.03)  # identity: E d^2 = sigma^2
    cfg = TrainConfig(epochs=3, batch_size=50, lr=3e-3, optimizer="adam", weight_decay=0.0, schedule="constant")
    history = Trainer(den, get_objective("denoiser_mse", noise_sd=0.25), cfg).fit(train)
    after = _noisy_mse(den, held_out.images, 0.25)
    assert after < 0.6 * before, (before, after)
    assert history[-1]["mse"] < history[0]["mse"]


class _BNClassifier(nn.Module):
    """A small classifier with batch norm: its running statistics would move in train mode."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 13 * 13, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("objective,kw", [("denoiser_stability", {}), ("denoiser_stability", {"target": "soft"}),
                                          ("denoiser_classification", {})])
def test_classifier_objectives_never_change_the_classifier(demo, objective, kw):
    torch.manual_seed(1)
    clf = _BNClassifier().train()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    den = get_denoiser("dncnn", (1, 28, 28), depth=3, width=8)
    den_before = [p.clone() for p in den.parameters()]
    obj = get_objective(objective, classifiers=clf, noise_sd=0.25, **kw)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=1e-3, optimizer="adam", weight_decay=0.0)
    Trainer(den, obj, cfg).fit(demo.subset(max_count=100), demo.subset(start=400, max_count=50))
    after = clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(den_before, den.parameters()))  # the denoiser did train
    obj.assert_frozen()
    with torch.no_grad():
        clf.net[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="changed during training"):
        obj.assert_frozen()


class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.inner(x)


def test_black_box_stability_uses_the_surrogates_one_batch_each_in_turn(demo):
    torch.manual_seed(2)
    s1 = _Counting(get_model("lenet", 10, (1, 28, 28)))
    s2 = _Counting(get_model("lenet", 10, (1, 28, 28)))
    obj = get_objective("denoiser_stability", classifiers=[s1, s2], noise_sd=0.25)
    den = get_denoiser("dncnn", (1, 28, 28), depth=2, width=4)
    cfg = TrainConfig(epochs=1, batch_size=20, lr=1e-3, optimizer="adam", weight_decay=0.0)
    Trainer(den, obj, cfg).fit(demo.subset(max_count=100))  # 5 steps: s1, s2, s1, s2, s1
    assert len(s1.calls) == 3 * 2 and len(s2.calls) == 2 * 2  # f(x) and f(D(x + d)) per step


def test_denoised_classifier_adds_noise_before_the_denoiser(demo):
    model, _ = load_default_model()
    den = get_denoiser("dncnn", (1, 28, 28), depth=2, width=4)
    with torch.no_grad():
        den.net[-1].bias.fill_(0.3)  # D(z) = z + 0.3
    x = demo.images[:2]
    composed = SmoothedClassifier(DenoisedClassifier(model, den), 10, 0.25, memory_format="contiguous")
    by_hand = SmoothedClassifier(lambda z: model(z + 0.3).argmax(1), 10, 0.25)
    a = composed.sample_counts(x, 300, seeds=[1, 2])
    b = by_hand.sample_counts(x, 300, seeds=[1, 2])
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in ("clf", "sur"):
        model = get_model("lenet", 10, (1, 28, 28), [0.286], [0.353])
        out[name] = root / f"{name}.pt"
        save_checkpoint(out[name], model, {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28],
                                           "mean": [0.286], "std": [0.353], "dataset": "fashion-mnist"})
    return out


def test_train_denoiser_cli_mse_then_stability_from_init(tiny_idx_root, ckpts, tmp_path):
    common = ["--data", "fashion-mnist", "--root", str(tiny_idx_root), "--depth", "2", "--width", "4",
              "--epochs", "1", "--batch", "30", "--threads", "1"]
    assert main(["train-denoiser", "--classifier", str(ckpts["clf"]), "--objective", "mse", *common,
                 "--out", str(tmp_path / "mse")]) == 0
    den, meta = load_checkpoint(tmp_path / "mse" / "model.pt")
    assert meta["kind"] == "denoiser" and meta["objective"] == "denoiser_mse"
    assert meta["model_options"] == {"depth": 2, "width": 4} and meta["noise_sd"] == 0.25
    assert "test_acc" in (tmp_path / "mse" / "log.tsv").read_text()
    # hybrid: stability from the mse denoiser (its architecture; --depth would have to agree)
    assert main(["train-denoiser", "--classifier", str(ckpts["clf"]), "--objective", "stability",
                 "--init", str(tmp_path / "mse" / "model.pt"), "--data", "fashion-mnist", "--root",
                 str(tiny_idx_root), "--epochs", "1", "--batch", "30", "--threads", "1", "--lr", "1e-4",
                 "--out", str(tmp_path / "hyb")]) == 0
    _, hmeta = load_checkpoint(tmp_path / "hyb" / "model.pt")
    assert hmeta["init"]["objective"] == "denoiser_mse" and hmeta["model_options"] == meta["model_options"]
    assert hmeta["classifier"]["path"] == str(ckpts["clf"].resolve()) and hmeta["black_box"] is False
    # the same --out again without --resume is refused; --init with another depth too
    assert main(["train-denoiser", "--objective", "mse", *common, "--out", str(tmp_path / "mse")]) == 2
    assert main(["train-denoiser", "--objective", "mse", *common, "--init", str(tmp_path / "mse" / "model.pt"),
                 "--depth", "3", "--out", str(tmp_path / "x")]) == 2


def test_train_denoiser_black_box_loads_only_the_surrogates(tiny_idx_root, ckpts, tmp_path, monkeypatch):
    import smoothguard.cli.train_denoiser as td

    loaded = []
    real = td.load_checkpoint
    monkeypatch.setattr(td, "load_checkpoint", lambda path, device="cpu": (loaded.append(str(path)),
                                                                            real(path, device))[1])
    args = ["train-denoiser", "--objective", "stability", "--data", "fashion-mnist", "--root", str(tiny_idx_root),
            "--depth", "2", "--width", "4", "--epochs", "1", "--batch", "30", "--threads", "1"]
    assert main([*args, "--surrogates", f"{ckpts['sur']},{ckpts['sur']}", "--out", str(tmp_path / "bb")]) == 0
    assert loaded == [str(ckpts["sur"])] * 2
    _, meta = load_checkpoint(tmp_path / "bb" / "model.pt")
    assert meta["black_box"] is True and meta["classifier"] is None and len(meta["surrogates"]) == 2
    # black box excludes the target; stability needs some classifier
    assert main([*args, "--classifier", str(ckpts["clf"]), "--surrogates", str(ckpts["sur"]),
                 "--out", str(tmp_path / "both")]) == 2
    assert main([*args, "--out", str(tmp_path / "none")]) == 2


@pytest.fixture(scope="module")
def den_ckpt(tmp_path_factory):
    torch.manual_seed(3)
    den = get_denoiser("dncnn", (1, 28, 28), depth=2, width=4)
    with torch.no_grad():
        den.net[-1].weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("den") / "den_mse.pt"
    save_checkpoint(path, den, {"kind": "denoiser", "arch": "dncnn", "in_shape": [1, 28, 28],
                                "model_options": {"depth": 2, "width": 4}, "objective": "denoiser_mse",
                                "noise_sd": 0.25})
    return path


def test_certify_with_denoiser_records_it_in_the_sidecar_and_analyze(ckpts, den_ckpt, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    base = ["certify", "--model", str(ckpts["clf"]), "--max", "2", "--n", "200", "--threads", "1"]
    assert main([*base, "--denoiser", str(den_ckpt), "--out", str(out)]) == 0
    side = json.loads((tmp_path / "c.tsv.json").read_text())["settings"]
    assert side["denoiser"] == str(den_ckpt.resolve()) and len(side["denoiser_sha256"]) == 64
    assert side["denoiser_objective"] == "denoiser_mse" and "denoiser_sha256" in json.loads(
        (tmp_path / "c.tsv.json").read_text())["key_settings"]
    # resuming the same file with another denoiser (or none) is refused
    assert main([*base, "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["analyze", str(out), "--no-plot"]) == 0
    assert "clf+den_mse" in capsys.readouterr().out
    # a classifier checkpoint is not a denoiser
    assert main([*base, "--denoiser", str(ckpts["clf"]), "--out", str(tmp_path / "bad.tsv")]) == 2


def test_certify_with_an_untrained_denoiser_equals_certify_without(ckpts, tmp_path):
    den = get_denoiser("dncnn", (1, 28, 28), depth=2, width=4)  # the identity
    path = tmp_path / "identity.pt"
    save_checkpoint(path, den, {"kind": "denoiser", "arch": "dncnn", "in_shape": [1, 28, 28],
                                "model_options": {"depth": 2, "width": 4}})
    base = ["certify", "--model", str(ckpts["clf"]), "--max", "3", "--skip", "7", "--n", "300", "--threads", "1",
            "--no-jit"]
    assert main([*base, "--out", str(tmp_path / "a.tsv")]) == 0
    assert main([*base, "--denoiser", str(path), "--out", str(tmp_path / "b.tsv")]) == 0
    rows = [[line.split("\t")[:5] for line in (tmp_path / f).read_text().splitlines()] for f in ("a.tsv", "b.tsv")]
    assert rows[0] == rows[1]
