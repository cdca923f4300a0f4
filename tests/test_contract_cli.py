"""The contract at the command line: every bad flag, file or target exits 2 with a message
that names the problem, never a traceback, and nothing is written or overwritten that
should not be. One regression test per bug of the contract issue."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smoothguard.cli import main
from smoothguard.models import get_model
from smoothguard.models.checkpoint import FORMAT, save_checkpoint

LENET_META = {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28], "mean": [0.286], "std": [0.353]}


def _ckpt(path, **meta_changes):
    torch.manual_seed(0)
    meta = dict(LENET_META, **meta_changes)
    model = get_model(meta["arch"], meta["num_classes"], meta["in_shape"], meta["mean"], meta["std"])
    save_checkpoint(path, model, meta)
    return path


def _raw_ckpt(path, payload):
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    good = _ckpt(d / "good.pt")
    sd = torch.load(good, weights_only=True)["state_dict"]
    nan_sd = {k: v.clone() for k, v in sd.items()}
    next(v for k, v in nan_sd.items() if k.endswith("weight")).view(-1)[0] = float("nan")
    log = d / "train.log"
    log.write_text("epoch 1 loss 0.5\n")
    empty = d / "empty.pt"
    empty.write_bytes(b"")
    (d / "folder.pt").mkdir()
    from smoothguard.models.denoiser import get_denoiser

    den = get_denoiser("dncnn", (1, 28, 28))
    save_checkpoint(d / "den.pt", den, {"kind": "denoiser", "arch": "dncnn", "in_shape": [1, 28, 28],
                                        "model_options": {}, "noise_sd": 0.25})
    return {
        "good": good,
        "five_classes": _ckpt(d / "five.pt", num_classes=5),
        "sd050": _ckpt(d / "sd050.pt", noise_sd=0.5),
        "meta_list": _raw_ckpt(d / "meta_list.pt", {"format": FORMAT, "meta_json": "[1, 2]", "state_dict": sd}),
        "options_list": _raw_ckpt(d / "options_list.pt", {
            "format": FORMAT, "meta_json": json.dumps(dict(LENET_META, model_options=[1])), "state_dict": sd}),
        "sd_string": _raw_ckpt(d / "sd_string.pt", {
            "format": FORMAT, "meta_json": json.dumps(LENET_META), "state_dict": "weights"}),
        "zero_std": _raw_ckpt(d / "zero_std.pt", {
            "format": FORMAT, "meta_json": json.dumps(dict(LENET_META, std=[0.0])), "state_dict": sd}),
        "nan_weights": _raw_ckpt(d / "nan.pt", {"format": FORMAT, "meta_json": json.dumps(LENET_META),
                                                "state_dict": nan_sd}),
        "empty": empty, "folder": d / "folder.pt", "log": log, "denoiser": d / "den.pt",
    }


CHECKPOINT_CASES = [
    ("meta_list", "metadata must be a JSON object"),
    ("options_list", "'model_options' must be a JSON object"),
    ("sd_string", "state_dict must be a dict of parameter names to tensors"),
    ("zero_std", "std must be positive"),
    ("nan_weights", "non-finite values"),
    ("empty", "is empty"),
    ("folder", "is a folder"),
    ("log", "cannot read checkpoint"),
    ("denoiser", "is a denoiser checkpoint, not a classifier"),
]


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["certify", "attack", "evaluate", "predict"])
@pytest.mark.parametrize("case,message", CHECKPOINT_CASES)
def test_malformed_checkpoints_are_a_clear_error_in_every_command(command, case, message, ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, "--model", str(ckpts[case]), "--max", "1"]
    argv += ["--out-dir", str(out)] if command == "evaluate" else ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and str(ckpts[case]) in err
    _no_traceback(err)
    assert not out.exists()


def test_a_classifier_passed_as_denoiser_is_refused(ckpts, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert main(["certify", "--denoiser", str(ckpts["good"]), "--max", "1", "--out", str(out)]) == 2
    assert "is a classifier checkpoint, not a denoiser" in capsys.readouterr().err
    assert not out.exists()


def test_info_on_a_malformed_checkpoint(ckpts, capsys):
    assert main(["info", str(ckpts["meta_list"])]) == 2
    assert "metadata must be a JSON object" in capsys.readouterr().err


def test_a_bad_checkpoint_fails_its_step_and_the_runner_goes_on(ckpts, tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text(f"""
[experiment]
name = "bad"

[certify.bad]
model = "{ckpts['meta_list']}"
n = 100
max = 1

[certify.good]
n = 100
max = 1

[analyze.bad]
files = ["@certify.bad"]
""")
    assert main(["run", str(exp), "--run-dir", str(tmp_path / "run")]) == 1
    summary = {s["step"]: s for s in json.loads((tmp_path / "run" / "run.json").read_text())["steps"]}
    assert summary["certify.bad"]["status"] == "failed"
    assert "metadata must be a JSON object" in summary["certify.bad"]["error"]
    assert summary["certify.good"]["status"] == "ran"  # independent: still runs
    assert summary["analyze.bad"]["status"] == "blocked"  # its input failed
    assert (tmp_path / "run" / "certify" / "good" / "certify.tsv").exists()


@pytest.mark.parametrize("command", ["certify", "attack", "evaluate", "smooth-eval"])
def test_a_five_class_model_on_ten_class_data_is_refused(command, ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, "--model", str(ckpts["five_classes"]), "--max", "1"]
    argv += ["--out-dir", str(out)] if command in ("evaluate", "smooth-eval") else ["--out", str(out)]
    assert main(argv) == 2
    assert "has 5 classes but --data demo has 10" in capsys.readouterr().err
    assert not out.exists()


def test_sigma_defaults_to_the_checkpoint_training_noise_sd(ckpts, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert main(["certify", "--model", str(ckpts["sd050"]), "--max", "1", "--n0", "10", "--n", "100",
                 "--out", str(out)]) == 0
    side = json.loads(Path(str(out) + ".json").read_text())["settings"]
    assert side["sigma"] == 0.5 and side["sigma_source"] == "checkpoint"
    assert "sigma 0.5 (the noise_sd the model was trained at)" in capsys.readouterr().err
    out2 = tmp_path / "c2.tsv"
    assert main(["certify", "--model", str(ckpts["sd050"]), "--sigma", "0.25", "--max", "1", "--n0", "10",
                 "--n", "100", "--out", str(out2)]) == 0
    side = json.loads(Path(str(out2) + ".json").read_text())["settings"]
    assert side["sigma"] == 0.25 and side["sigma_source"] == "flag" and side["model_noise_sd"] == 0.5
    assert "--sigma 0.25 differs from the noise_sd 0.5" in capsys.readouterr().err
    # no training noise recorded: the documented 0.25
    out3 = tmp_path / "c3.tsv"
    assert main(["certify", "--model", str(ckpts["good"]), "--max", "1", "--n0", "10", "--n", "100",
                 "--out", str(out3)]) == 0
    side = json.loads(Path(str(out3) + ".json").read_text())["settings"]
    assert side["sigma"] == 0.25 and side["sigma_source"] == "default"


# ---------------------------------------------------------------------------------------
# outputs

def test_a_fifo_target_is_refused_and_left_alone(tmp_path, capsys):
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    assert main(["certify", "--max", "1", "--n", "100", "--out", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert "is a FIFO" in err
    _no_traceback(err)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.tsv"]  # no sidecar, no temporary


def test_report_to_a_special_file_writes_nothing_beside_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert main(["certify", "--max", "2", "--n", "100", "--out", str(run_dir / "c.tsv")]) == 0
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    fifo = target_dir / "report.html"
    os.mkfifo(fifo)
    assert main(["report", str(run_dir), "-o", str(fifo)]) == 2
    assert "is a FIFO" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [p.name for p in target_dir.iterdir()] == ["report.html"]  # no PNG/SVG written beside it
    assert main(["report", str(run_dir), "-o", str(target_dir)]) == 2  # a folder as the file
    assert "is a folder" in capsys.readouterr().err


def test_unwritable_outputs_exit_2_and_keep_the_earlier_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["certify", "--max", "1", "--n", "100", "--out", str(blocker / "c.tsv")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err
    _no_traceback(err)
    # analyze --out-table onto an existing table: a failure mid-write keeps the old table
    tsv = tmp_path / "c.tsv"
    assert main(["certify", "--max", "2", "--n", "100", "--out", str(tsv)]) == 0
    table = tmp_path / "table.md"
    table.write_text("old table\n")
    assert main(["analyze", str(tsv), "--out-table", str(table / "x.md")]) == 2
    assert table.read_text() == "old table\n"


def test_read_only_folder_gives_exit_2(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the refusal cannot be provoked here")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = subprocess.run([sys.executable, "-m", "smoothguard", "certify", "--max", "1", "--n", "100",
                               "--out", str(ro / "c.tsv")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------------------------
# resume

def _rows(path):
    return [ln.split("\t") for ln in Path(path).read_text().splitlines()[1:]]


@pytest.mark.parametrize("corrupt,reason", [
    (lambda lines: lines[:2] + ["garbage\tline"] + lines[2:], "fields"),
    (lambda lines: lines[:2] + [lines[1]] + lines[2:], "appears twice"),
    (lambda lines: lines[:2] + ["99999\t1\t1\t0.1\t1\t0.01"] + lines[2:], "not in this run's selection"),
    (lambda lines: lines[:2] + [lines[2].replace("\t", "\tx", 1)] + lines[3:], "not a number"),
])
def test_resume_keeps_only_valid_rows(corrupt, reason, tmp_path):
    out = tmp_path / "c.tsv"
    argv = ["certify", "--max", "4", "--skip", "5", "--n0", "10", "--n", "200", "--out", str(out)]
    assert main(argv) == 0
    clean = out.read_text()
    lines = clean.splitlines()
    out.write_text("\n".join(corrupt(lines)) + "\n")
    with pytest.warns(UserWarning, match=f"line 3: .*{reason}"):
        assert main(argv) == 0
    # the rows before the bad one are kept, the rest recomputed: the rows of a clean run (but their times)
    assert [r[:-1] for r in _rows(out)] == [ln.split("\t")[:-1] for ln in lines[1:]]
    assert out.read_text().splitlines()[:2] == lines[:2]  # kept rows untouched, time included


def test_attack_batch_is_a_resume_key(tmp_path, capsys):
    out = tmp_path / "a.tsv"
    argv = ["attack", "--attack", "fgsm", "--max", "2", "--out", str(out)]
    assert main([*argv, "--batch", "2"]) == 0
    before = out.read_text()
    assert main([*argv, "--batch", "1"]) == 2
    assert "batch: file 2, now 1" in capsys.readouterr().err
    assert out.read_text() == before


# ---------------------------------------------------------------------------------------
# flags and environment

@pytest.mark.parametrize("argv,message", [
    (["certify", "--radii", "0.25,0.5", "--n", "5000"], "has no effect with --radii"),
    (["certify", "--sigma", "0"], "--sigma must be a positive"),
    (["certify", "--alpha", "0"], "--alpha must lie in (0, 1)"),
    (["certify", "--batch", "0"], "--batch must be an integer >= 1"),
    (["certify", "--workers", "0"], "--workers must be an integer >= 1"),
    (["attack", "--eps", "8"], "did you mean eps/255"),
    (["certify", "--denoiser", ""], "--denoiser is empty"),
    (["certify", "--model", ""], "--model is empty"),
    (["attack", "--model", ""], "--model is empty"),
])
def test_bad_flags_exit_2_with_the_allowed_values(argv, message, tmp_path, capsys):
    out = tmp_path / "never.tsv"
    assert main([*argv, "--max", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    _no_traceback(err)
    assert not out.exists()


def test_bad_world_size_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert main(["certify", "--max", "1", "--n", "100", "--out", str(tmp_path / "c.tsv")]) == 2
    assert "WORLD_SIZE='abc' must be an integer >= 1" in capsys.readouterr().err


def test_kill_9_then_a_hand_corrupted_row_then_resume(tmp_path):
    """The worst case of a resume: a run killed mid-file (SIGKILL after its 3rd row), then a
    kept row corrupted by hand. The rerun keeps the rows before the corruption, recomputes
    the rest, and ends with the rows of an uninterrupted run."""
    import signal

    argv = ["certify", "--max", "5", "--skip", "7", "--n0", "10", "--n", "300", "--seed", "3"]
    full = tmp_path / "full.tsv"
    assert main([*argv, "--out", str(full)]) == 0
    part = tmp_path / "part.tsv"
    killer = Path(__file__).with_name("kill_after_rows.py")
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, str(killer), "3", "--", *argv, "--out", str(part)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    lines = part.read_text().splitlines()
    assert len(lines) == 4  # header + 3 rows
    lines[2] = "x" + lines[2]  # the 2nd row's idx is no longer an integer: untrusted from here on
    part.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="line 3: idx .* is not an integer"):
        assert main([*argv, "--out", str(part)]) == 0
    assert [r[:-1] for r in _rows(part)] == [r[:-1] for r in _rows(full)]


def test_an_unsafe_pickle_is_refused_without_advising_weights_only_false(tmp_path, capsys):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    out = tmp_path / "a.tsv"
    assert main(["attack", "--model", str(evil), "--max", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "import-model" in err
    assert "weights_only` set to `False`" not in err and "weights_only=False" not in err
    assert not out.exists()
