import subprocess
import sys

import pytest

from smoothguard.cli import COMMANDS, main
from smoothguard.models import default_model_path, load_checkpoint


def test_help_lists_every_sub_command_with_one_line(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for name, _ in COMMANDS:
        assert f"    {name} " in out


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_sub_command_has_help_with_common_options(name, capsys):
    with pytest.raises(SystemExit) as ex:
        main([name, "--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--device", "--seed", "--threads"):  # analyze and report read files: none of them
        assert (opt in out) == (name not in ("analyze", "report"))


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "smoothguard", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("smoothguard ")


def test_train_command_writes_log_checkpoint_and_resumes(tiny_idx_root, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--data", "mnist", "--root", str(tiny_idx_root), "--arch", "lenet", "--batch", "16",
            "--out", str(out), "--threads", "1"]
    assert main([*base, "--epochs", "1"]) == 0
    assert (out / "checkpoint.pt").exists() and (out / "model.pt").exists()
    header = (out / "log.tsv").read_text().splitlines()[0].split("\t")
    for col in ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "noisy_test_acc", "seconds"):
        assert col in header
    assert main([*base, "--epochs", "1"]) == 2  # exists: refuses without --resume
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    assert len((out / "log.tsv").read_text().splitlines()) == 3
    _, meta = load_checkpoint(out / "model.pt")
    assert meta["epochs_trained"] == 2 and meta["noise_sd"] == 0.25 and meta["dataset"] == "mnist"
    assert meta["command"].startswith("smoothguard train")


def test_bad_device_is_a_clear_error(capsys):
    assert main(["info", "--device", "tpu"]) == 2
    assert "allowed: auto, cpu, cuda" in capsys.readouterr().err


def test_embedded_model_is_shipped_with_its_provenance():
    model, meta = load_checkpoint(default_model_path())
    assert meta["arch"] == "lenet" and meta["objective"] == "gaussian" and meta["noise_sd"] == 0.25
    assert meta["dataset"] == "fashion-mnist" and meta["train_size"] == 60000
    assert meta["metrics"]["test_acc"] > 0.85
    assert default_model_path().stat().st_size < 4 * 2**20


def test_embedded_model_accuracy_on_the_demo_set():
    import torch

    from smoothguard.data import load_dataset

    model, _ = load_checkpoint(default_model_path())
    ds = load_dataset("demo")
    with torch.no_grad():
        acc = (model(ds.images).argmax(1) == ds.labels).float().mean().item()
    assert acc > 0.83


def test_demo_runs_small_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path), "--count", "4", "--n", "300", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ACR" in out and "results:" in out
    assert (tmp_path / "certify.tsv").exists()
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "certify.tsv").read_text().splitlines()) == 5
