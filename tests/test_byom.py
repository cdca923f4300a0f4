"""Bring your own model (issue 22): import-model, --model-factory, Cohen et al.'s layout,
Trainer metadata from get_model, and first-run friction (datasets, analyze, train-denoiser)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from smoothguard.cli import main
from smoothguard.data import load_dataset
from smoothguard.models import CheckpointError, get_model, load_checkpoint, load_default_model
from smoothguard.models.foreign import cohen_resnet_key, load_factory_model, read_weights, resolve_factory


@pytest.fixture
def demo_x():
    ds = load_dataset("demo", "test").subset(max_count=16)
    return ds.images, ds.labels


def _rc_err(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# --------------------------------------------------------------------------- registry archs


def test_plain_state_dict_of_bare_network_behind_data_parallel(tmp_path, capsys, demo_x):
    """A LeNet trained elsewhere: the bare network's keys behind DataParallel's module.,
    normalization outside the network. Imported, it gives the same logits."""
    ref, _ = load_default_model()
    torch.save({"module." + k: v for k, v in ref[1].state_dict().items()}, tmp_path / "sd.pt")
    out = tmp_path / "m.pt"
    rc, stdout, err = _rc_err(capsys, ["import-model", "--arch", "lenet", "--weights", str(tmp_path / "sd.pt"),
                                       "--mean", "0.2860", "--std", "0.3530", "--noise-sd", "0.25",
                                       "--check-images", "50", "--out", str(out)])
    assert rc == 0, err
    assert "wrote" in stdout and "clean accuracy" in err and "under noise sd 0.25" in err
    model, meta = load_checkpoint(out)
    assert meta["arch"] == "lenet" and meta["noise_sd"] == 0.25 and meta["import"]["check"]["images"] == 50
    assert meta["import"]["check"]["accuracy"] > 0.6
    x, _ = demo_x
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_plain_state_dict_needs_a_normalization_answer(tmp_path, capsys):
    ref, _ = load_default_model()
    torch.save(ref[1].state_dict(), tmp_path / "sd.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--arch", "lenet", "--weights", str(tmp_path / "sd.pt"),
                                  "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "--mean" in err and "--no-normalize" in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_wrong_architecture_names_the_mismatching_keys(tmp_path, capsys):
    ref, _ = load_default_model()
    torch.save(ref[1].state_dict(), tmp_path / "sd.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--arch", "madry_cnn", "--weights", str(tmp_path / "sd.pt"),
                                  "--no-normalize", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "shapes differ" in err and "fc1.weight" in err


def test_missing_tensor_is_an_error_not_an_initial_value(tmp_path, capsys):
    ref, _ = load_default_model()
    sd = dict(ref[1].state_dict())
    del sd["fc2.bias"]
    torch.save(sd, tmp_path / "sd.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--arch", "lenet", "--weights", str(tmp_path / "sd.pt"),
                                  "--no-normalize", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "1.fc2.bias" in err and "missing" in err


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Evil.target),))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, capsys):
    _Evil.target = str(tmp_path / "pwned")
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "x": _Evil()}, tmp_path / "evil.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--arch", "lenet", "--weights", str(tmp_path / "evil.pt"),
                                  "--no-normalize", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "pickled" in err and "state_dict()" in err
    assert not (tmp_path / "pwned").exists()


def test_a_whole_pickled_model_is_refused_with_the_fix(tmp_path, capsys):
    torch.save(get_model("lenet", 10, (1, 28, 28)), tmp_path / "whole.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--arch", "lenet", "--weights", str(tmp_path / "whole.pt"),
                                  "--no-normalize", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "torch.save(model.state_dict()" in err


def test_a_foreign_file_as_model_points_to_import_model(tmp_path, capsys):
    torch.save(get_model("lenet", 10, (1, 28, 28)).state_dict(), tmp_path / "sd.pt")
    rc, _, err = _rc_err(capsys, ["certify", "--model", str(tmp_path / "sd.pt"), "--max", "1", "--n", "100",
                                  "--out", str(tmp_path / "c.tsv")])
    assert rc == 2 and "import-model" in err


# --------------------------------------------------------------------------- Cohen et al.


class _TheirBlock(nn.Module):
    """The attribute names of Cohen et al.'s (bearpaw's) CIFAR ResNet basic block, written
    here from the key layout so the mapping is checked against an independent network."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TheirResNet(nn.Module):
    def __init__(self, depth):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(_TheirBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class _TheirNormalize(nn.Module):  # Cohen's NormalizeLayer keeps its statistics as plain attributes
    def __init__(self, mean, std):
        super().__init__()
        self.means, self.sds = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x):
        return (x - self.means) / self.sds


class _DataParallelNames(nn.Module):  # DataParallel's key prefix without needing devices
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def _cohen_checkpoint(path, depth=20, seed=1):
    torch.manual_seed(seed)
    net = _TheirResNet(depth)
    for mod in net.modules():  # non-trivial batch-norm statistics, so a mis-mapped buffer shows
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    theirs = nn.Sequential(_TheirNormalize([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
                           _DataParallelNames(net)).eval()
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 90, "arch": f"cifar_resnet{depth}", "state_dict": theirs.state_dict(),
                "optimizer": opt.state_dict()}, path)
    return theirs


def test_cohen_layout_imports_cifar_resnet20_with_the_same_function(tmp_path, capsys):
    path = tmp_path / "models" / "cifar10" / "resnet20" / "noise_0.25" / "checkpoint.pth.tar"
    theirs = _cohen_checkpoint(path)
    sd, info = read_weights(path)
    assert info == {"layout": "cohen", "arch": "cifar_resnet20"} and all(k.startswith("1.module.") for k in sd)
    out = tmp_path / "r20.pt"
    rc, _, err = _rc_err(capsys, ["import-model", "--weights", str(path), "--check-images", "0",
                                  "--in-shape", "3,32,32", "--num-classes", "10", "--out", str(out)])
    assert rc == 0, err
    assert "Cohen et al.'s CIFAR-10 NormalizeLayer constants" in err and "noise_sd 0.25 read from the path" in err
    model, meta = load_checkpoint(out)  # a registry checkpoint: no user code
    assert meta["arch"] == "cifar_resnet20" and meta["noise_sd"] == 0.25
    assert meta["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), theirs(x), atol=1e-4)


def test_cohen_key_mapping_of_resnet110_covers_every_tensor():
    ours = get_model("cifar_resnet110", 10, (3, 32, 32)).state_dict()
    theirs = _TheirResNet(110).state_dict()
    mapped = {cohen_resnet_key(k, 110) for k in theirs}
    assert None not in mapped
    assert mapped == {k for k in ours if not k.startswith("0.")}
    assert cohen_resnet_key("layer2.0.downsample.1.running_var", 110) == "1.layers.18.shortcut.1.running_var"
    assert cohen_resnet_key("layer3.17.bn2.weight", 110) == "1.layers.53.bn2.weight"


def test_cohen_imagenet_resnet50_is_refused_with_the_way_forward(tmp_path, capsys):
    torch.save({"arch": "resnet50", "state_dict": {"1.module.conv1.weight": torch.zeros(64, 3, 7, 7)}},
               tmp_path / "r50.pth.tar")
    rc, _, err = _rc_err(capsys, ["import-model", "--weights", str(tmp_path / "r50.pth.tar"), "--check-images", "0",
                                  "--in-shape", "3,224,224", "--num-classes", "1000", "--out", str(tmp_path / "o.pt")])
    assert rc == 2 and "resnet50" in err and "--factory" in err


# --------------------------------------------------------------------------- factories

_FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    class Tiny(nn.Module):              # not a registry architecture; takes [0, 1] pixels
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.body(x)

    def build():
        return Tiny()

    def build_with_shape():
        m = Tiny()
        m.in_shape = (1, 28, 28)
        return m

    def build_lenet():
        from smoothguard.models import get_model
        return get_model("lenet", 10, (1, 28, 28), (0.2860,), (0.3530,))

    def not_a_model():
        return 42
''')


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(_FACTORY)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import sys

    sys.modules.pop("user_nets", None)


def test_factory_model_checkpoint_stores_a_reference_and_certifies(factory_dir, capsys):
    torch.manual_seed(3)
    net = resolve_factory("user_nets:build")()
    torch.save(net.state_dict(), "w.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--factory", "user_nets:build", "--weights", "w.pt",
                                  "--no-normalize", "--check-images", "20", "--out", "tiny.pt"])
    assert rc == 0, err
    assert "not a registry architecture" in err and "--model-factory user_nets:build --weights tiny.pt" in err
    raw = torch.load("tiny.pt", weights_only=True)  # only tensors and strings: no code in the file
    meta = json.loads(raw["meta_json"])
    assert meta["arch"] == "factory" and meta["factory"] == "user_nets:build" and meta["in_shape"] == [1, 28, 28]
    with pytest.raises(CheckpointError, match="--model-factory user_nets:build"):
        load_checkpoint("tiny.pt")
    model, meta2 = load_factory_model("user_nets:build", "tiny.pt")
    x = load_dataset("demo", "test").images[:5]
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-6)
    assert meta2["num_classes"] == 10
    rc, _, err = _rc_err(capsys, ["certify", "--model-factory", "user_nets:build", "--weights", "tiny.pt",
                                  "--max", "2", "--n0", "20", "--n", "100", "--out", "c.tsv"])
    assert rc == 0, err
    settings = json.loads(open("c.tsv.json").read())["settings"]  # what a resume compares: reference + weights hash
    assert settings["model"].startswith("factory:user_nets:build weights:") and settings["model_sha256"]
    assert len(open("c.tsv").read().strip().splitlines()) == 3


def test_factory_of_a_get_model_model_gives_a_code_free_checkpoint(factory_dir, capsys):
    ref, _ = load_default_model()
    torch.save(ref.state_dict(), "lenet_full.pt")
    rc, _, err = _rc_err(capsys, ["import-model", "--factory", "user_nets:build_lenet", "--weights", "lenet_full.pt",
                                  "--check-images", "20", "--out", "l.pt"])
    assert rc == 0, err
    assert "loads with no user code" in err
    model, meta = load_checkpoint("l.pt")
    assert meta["arch"] == "lenet" and "factory" not in meta
    x = load_dataset("demo", "test").images[:5]
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-6)


def test_model_factory_with_a_plain_state_dict_and_in_shape_attribute(factory_dir, capsys):
    torch.save(resolve_factory("user_nets:build")().state_dict(), "w.pt")
    rc, _, err = _rc_err(capsys, ["attack", "--model-factory", "user_nets.py:build_with_shape", "--weights", "w.pt",
                                  "--max", "2", "--steps", "2", "--out", "a.tsv"])
    assert rc == 0, err
    # without in_shape the error says how to give it
    rc, _, err = _rc_err(capsys, ["attack", "--model-factory", "user_nets:build", "--weights", "w.pt",
                                  "--max", "2", "--out", "b.tsv"])
    assert rc == 2 and "model.in_shape" in err and "import-model" in err


@pytest.mark.parametrize("argv, message", [
    (["--model", "x.pt", "--model-factory", "user_nets:build"], "not both"),
    (["--weights", "w.pt"], "--weights goes with --model-factory"),
    (["--model-factory", "user_nets"], "MODULE:CALLABLE"),
    (["--model-factory", "no_such_module_xyz:build"], "cannot import"),
    (["--model-factory", "user_nets:nope"], "has no 'nope'"),
    (["--model-factory", "user_nets:not_a_model"], "not a torch.nn.Module"),
])
def test_model_factory_errors_exit_2(factory_dir, capsys, argv, message):
    rc, _, err = _rc_err(capsys, ["certify", *argv, "--max", "1", "--n", "100", "--out", "c.tsv"])
    assert rc == 2 and message in err and "Traceback" not in err


def test_every_model_command_takes_model_factory():
    from smoothguard.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        opts = {o for a in p._actions for o in a.option_strings}
        if "--model" in opts:
            assert {"--model-factory", "--weights"} <= opts, name


# --------------------------------------------------------------------------- Trainer metadata


def _tiny_train():
    ds = load_dataset("demo", "test")
    return ds.subset(max_count=64), ds.subset(max_count=32, start=400)


def test_trainer_needs_no_meta_for_get_model_models(tmp_path):
    from smoothguard.training import TrainConfig, Trainer, get_objective

    train, test = _tiny_train()
    i = train.info
    model = get_model("lenet", i.num_classes, i.input_shape, i.mean, i.std)
    Trainer(model, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=1)).fit(train, test, tmp_path / "r")
    loaded, meta = load_checkpoint(tmp_path / "r" / "model.pt")
    assert meta["arch"] == "lenet" and meta["noise_sd"] == 0.25 and meta["mean"] == pytest.approx(list(i.mean))


def test_trainer_refuses_before_training_when_a_plain_module_has_no_meta(tmp_path):
    from smoothguard.training import TrainConfig, Trainer, get_objective

    train, test = _tiny_train()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    trainer = Trainer(model, get_objective("standard"), TrainConfig(epochs=1))
    with pytest.raises(CheckpointError, match=r"meta=") as exc:
        trainer.fit(train, test, tmp_path / "r")
    assert "arch" in str(exc.value) and not trainer.history and not (tmp_path / "r").exists()
    trainer.fit(train, test)  # no out_dir: nothing to write, nothing needed


def test_denoiser_training_logs_mse_psnr_not_accuracy(tmp_path):
    from smoothguard.models import get_denoiser
    from smoothguard.training import TrainConfig, Trainer, get_objective

    train, test = _tiny_train()
    den = get_denoiser("dncnn", (1, 28, 28), depth=3, width=8)
    hist = Trainer(den, get_objective("denoiser_mse", noise_sd=0.25),
                   TrainConfig(epochs=1, optimizer="adam", lr=1e-3, weight_decay=0)).fit(train, test, tmp_path / "d")
    row = hist[-1]
    assert "train_acc" not in row and "test_acc" not in row
    assert 0 < row["test_mse"] < 0.25 ** 2 * 1.2 and row["test_psnr"] == pytest.approx(-10 * torch.log10(
        torch.tensor(row["test_mse"])).item(), rel=1e-6)
    _, meta = load_checkpoint(tmp_path / "d" / "model.pt", kind="denoiser")
    assert meta["model_options"] == {"depth": 3, "width": 8}
    header = (tmp_path / "d" / "log.tsv").read_text().splitlines()[0].split("\t")
    assert "test_psnr" in header and "train_acc" not in header


def test_train_denoiser_cli_log_and_end_message(tmp_path, capsys, tiny_idx_root):
    rc, out, err = _rc_err(capsys, ["train-denoiser", "--root", str(tiny_idx_root), "--epochs", "1", "--depth", "3",
                                    "--width", "8", "--out", str(tmp_path / "den")])
    assert rc == 0, err
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch 1"))
    assert "test_psnr" in epoch_line and "dB" in epoch_line and "acc" not in epoch_line and "nan" not in epoch_line
    last = out.strip().splitlines()[-1]
    assert last.startswith("wrote") and "classifier" not in last and "verified" not in last


def test_interrupted_training_says_to_rerun_with_resume(tmp_path, capsys, tiny_idx_root, monkeypatch):
    from smoothguard.training import trainer as trainer_mod

    real = trainer_mod.Trainer._write_log

    def write_then_interrupt(self, out_dir):
        real(self, out_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_write_log", write_then_interrupt)
    argv = ["train", "--root", str(tiny_idx_root), "--objective", "standard", "--epochs", "2",
            "--out", str(tmp_path / "t")]
    rc, _, err = _rc_err(capsys, argv)
    assert rc == 130 and "rerun the same command with --resume" in err
    monkeypatch.setattr(trainer_mod.Trainer, "_write_log", real)
    rc, _, err = _rc_err(capsys, argv)  # what the message says: without --resume it is refused
    assert rc == 2 and "--resume" in err
    rc, _, err = _rc_err(capsys, argv + ["--resume"])
    assert rc == 0, err


# --------------------------------------------------------------------------- datasets, analyze


def test_dataset_is_a_torch_dataset_with_a_one_line_repr():
    ds = load_dataset("demo", "test")
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 500
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and int(y) == int(ds.labels[3])
    assert torch.equal(ds[-1][0], ds.images[-1])
    with pytest.raises(IndexError):
        ds[500]
    with pytest.raises(TypeError, match="subset"):
        ds[1:3]
    r = repr(ds)
    assert "\n" not in r and "500 images" in r and "tensor" not in r and len(r) < 100
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=7)))
    assert xb.shape == (7, 1, 28, 28) and yb.tolist() == ds.labels[:7].tolist()


def _cert_file(path):
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n1\t2\t0\t0.0\t0\t0.1\n")
    return path


def test_analyze_writes_a_plot_only_when_asked(tmp_path, capsys):
    a = _cert_file(tmp_path / "a.tsv")
    rc, out, err = _rc_err(capsys, ["analyze", str(a), "--sigma", "0.25"])
    assert rc == 0 and out.endswith("\n") and not list(tmp_path.glob("*.png"))
    rc, out, err = _rc_err(capsys, ["analyze", str(a), "--sigma", "0.25", "--plot"])
    assert rc == 0 and (tmp_path / "a_certified_accuracy.png").is_file() and "wrote" in err
    rc, out, err = _rc_err(capsys, ["analyze", str(a), "--sigma", "0.25", "--format", "csv",
                                    "--plot", str(tmp_path / "fig")])
    assert rc == 0 and out.endswith("\n") and (tmp_path / "fig.svg").is_file()


# --------------------------------------------------------------------------- report figures


def _certify_results(k: int, n: int = 20, sigma: float = 0.25, start: int = 0):
    import numpy as np

    from smoothguard.evaluation.analysis import Results

    rng = np.random.default_rng(k)
    idx = np.arange(start, start + n) * 20
    return Results("certify", idx, np.zeros(n), np.zeros(n), np.ones(n), radius=rng.uniform(0, 1.2, n),
                   settings={"sigma": sigma, "n": 1000, "alpha": 0.001})


def _boxes(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    return (ax.get_legend().get_window_extent(r), ax.xaxis.label.get_window_extent(r),
            ax.yaxis.label.get_window_extent(r), [t.get_window_extent(r) for t in ax.get_xticklabels()], ax)


@pytest.mark.parametrize("curves, empirical", [(10, 0), (3, 0), (6, 4)])
def test_certified_accuracy_legend_never_covers_an_axis_label(curves, empirical):
    """The layout fact the report's screenshots showed broken: with 10 curves the legend
    box sat over the x-axis label. Checked on the drawn element boxes."""
    from smoothguard.evaluation.plots import certified_accuracy_figure

    res = [_certify_results(k) for k in range(curves)]
    labels = [f"models/gaussian_lenet_run_{k}/model.pt sigma=0.25 (n=1000)" for k in range(curves)]
    emp = [(f"empirical under attack: run_{j} sigma=0.25", [0.0, 0.25, 0.5], [0.9, 0.6, 0.3], j)
           for j in range(empirical)]
    legend, xlabel, ylabel, xticks, ax = _boxes(certified_accuracy_figure(res, labels, empirical=emp))
    assert not legend.overlaps(xlabel) and not legend.overlaps(ylabel)
    assert not any(legend.overlaps(t) for t in xticks)
    assert ax.get_ylabel().endswith("(%)")
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and all(t.endswith("%") for t in ticks) and "100%" in ticks


def test_restart_histogram_counts_are_whole_numbers_and_x_ticks_few(tmp_path):
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from smoothguard.evaluation import attack_plots

    captured = {}
    real = attack_plots._save
    attack_plots._save = lambda fig, stem: captured.setdefault("fig", fig) and real(fig, stem)
    try:
        rng = np.random.default_rng(0)
        losses = np.stack([rng.normal(2.0 + i, 0.001, 5) for i in range(2)])  # 5 restarts: counts 0..5
        paths = attack_plots.plot_restart_losses(losses, tmp_path / "rl", pooled=rng.normal(1, 1, 400))
    finally:
        attack_plots._save = real
    assert all(p.is_file() for p in paths)
    fig = captured["fig"]
    fig.canvas.draw()
    assert len(fig.axes) == 3 and fig.axes[2].get_title().startswith("all points")
    for ax in fig.axes[:2]:
        assert isinstance(ax.yaxis.get_major_locator(), MaxNLocator)
        for t in ax.get_yticklabels():
            text = t.get_text().replace("\u2212", "-")
            assert not text or float(text).is_integer(), text
        r = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()]
        assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:]))


def test_report_marks_predict_rows_mixed_image_sets_and_keeps_figures_in_a_subfolder(tmp_path):
    from smoothguard.evaluation.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    (run / "a.tsv").write_text(head + "".join(f"{i * 20}\t1\t1\t0.5\t1\t0.1\n" for i in range(20)))
    (run / "b.tsv").write_text(head + "".join(f"{i * 20}\t1\t1\t0.7\t1\t0.1\n" for i in range(24)))
    (run / "p.tsv").write_text("idx\tlabel\tpredict\tcorrect\ttime\n" + "".join(
        f"{i * 20}\t1\t1\t1\t0.1\n" for i in range(5)))
    out = tmp_path / "rep" / "report.html"
    write_report(run, out)
    text = out.read_text()
    assert "different image sets" in text and "24 images" in text and "20 images" in text
    assert "predict: " in text
    assert not list(out.parent.glob("*.png")) and list((out.parent / "figures").glob("certified_accuracy.*"))
    assert "figures/certified_accuracy.png" in text


def test_certify_prints_a_time_estimate_after_the_start_up(tmp_path, capsys, monkeypatch):
    import smoothguard.cli._smoothing_run as loop

    monkeypatch.setattr(loop, "ESTIMATE_MIN_SECONDS", 0.0)  # every run is "long" here
    rc, _, err = _rc_err(capsys, ["certify", "--max", "10", "--n0", "100", "--n", "200",  # groups of 4 images
                                  "--out", str(tmp_path / "c.tsv")])
    assert rc == 0, err
    line = next(x for x in err.splitlines() if "should take about" in x)
    assert "s per image so far" in line and "the other 2 images" in line
    monkeypatch.setattr(loop, "ESTIMATE_MIN_SECONDS", 1e9)
    rc, _, err = _rc_err(capsys, ["certify", "--max", "10", "--n0", "100", "--n", "200",
                                  "--out", str(tmp_path / "d.tsv")])
    assert rc == 0 and "should take about" not in err


def test_evaluate_progress_rows_announce_their_totals():
    from smoothguard.evaluation.robustness import build_cascade, evaluate_robustness

    model, _ = load_default_model()
    ds = load_dataset("demo", "test").subset(max_count=6)

    class Recorder:
        def __init__(self):
            self.totals, self.done = {}, {}

        def start_row(self, label, total):
            self.totals[label] = total

        def __call__(self, label, n):
            self.done[label] = self.done.get(label, 0) + n

    rec = Recorder()
    cascade = build_cascade(model, "linf", 0.1, attacks=["fgsm", "pgd"], steps=2, restarts=1)
    evaluate_robustness(model, ds.images, ds.labels, cascade, progress=rec)
    assert rec.totals and set(rec.done) <= set(rec.totals)
    for label, done in rec.done.items():
        assert done == rec.totals[label]  # untargeted rows: every announced point is attacked once
    evaluate_robustness(model, ds.images, ds.labels, cascade, progress=lambda label, n: None)  # plain callables too


def test_square_reports_its_query_loop_to_the_progress_bar():
    from smoothguard.evaluation.robustness import build_cascade, evaluate_robustness

    model, _ = load_default_model()
    ds = load_dataset("demo", "test").subset(max_count=4)
    seen = []

    class Recorder:
        def start_row(self, label, total):
            pass

        def iteration(self, label, i, total):
            seen.append((label, i, total))

        def __call__(self, label, n):
            pass

    cascade = build_cascade(model, "linf", 0.3, attacks=["square"], square_queries=400)
    evaluate_robustness(model, ds.images, ds.labels, cascade, progress=Recorder())
    assert seen and all(lab.startswith("Square") and total == 398 for lab, _, total in seen)
    assert [i for _, i, _ in seen] == sorted({i for _, i, _ in seen}) and seen[0][1] == 0
    assert all(getattr(c.attack, "on_iteration", None) is None for c in cascade)  # not left behind


def test_report_names_same_named_result_files_by_their_folders(tmp_path):
    from smoothguard.evaluation.report import collect

    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n"
    for name in ("s025", "s050"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "certify.tsv").write_text(head)
    labels = sorted(lab for lab, _ in collect(tmp_path).certify)
    assert labels == ["s025/certify.tsv", "s050/certify.tsv"]
