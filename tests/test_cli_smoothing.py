"""End-to-end tests of ``smoothguard certify`` / ``predict``: rows, resume, refusal, errors."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smoothguard.cli import main
from smoothguard.models import get_model, save_checkpoint

KILL_AFTER_ROWS = Path(__file__).with_name("kill_after_rows.py")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = get_model("lenet", 10, (1, 28, 28), [0.286], [0.353])
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pt"
    save_checkpoint(path, model, {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28],
                                  "mean": [0.286], "std": [0.353], "dataset": "fashion-mnist"})
    return path


def _rows(path):
    lines = path.read_text().splitlines()
    return lines[0], [l.split("\t") for l in lines[1:]]


def _without_time(rows):
    return [r[:-1] for r in rows]


def test_certify_rows_are_cohen_compatible(ckpt, tmp_path):
    out = tmp_path / "c.tsv"
    assert main(["certify", "--model", str(ckpt), "--max", "5", "--skip", "3", "--n", "500",
                 "--out", str(out), "--threads", "1"]) == 0
    header, rows = _rows(out)
    assert header == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert [int(r[0]) for r in rows] == [0, 60, 120, 180, 240]  # demo indices 0, 20, 40, ... every 3rd
    for idx, label, pred, radius, correct, t in rows:
        assert int(correct) == int(int(pred) == int(label))
        assert float(radius) >= 0 and (float(radius) == 0.0) == (int(pred) == -1)
        assert float(t) > 0
    assert (tmp_path / "c.tsv.json").exists()


def test_resume_after_kill_gives_the_rows_of_an_uninterrupted_run(ckpt, tmp_path):
    args = ["--model", str(ckpt), "--max", "8", "--n", "10000", "--batch", "400", "--threads", "1", "--seed", "5"]
    full = tmp_path / "full.tsv"
    assert main(["certify", *args, "--out", str(full)]) == 0

    part = tmp_path / "part.tsv"
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1")
    # the run SIGKILLs itself right after its 3rd row: interrupted mid-file on any machine
    proc = subprocess.run([sys.executable, str(KILL_AFTER_ROWS), "3", "--", "certify", *args, "--out", str(part)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    _, done = _rows(part)
    assert len(done) == 3, "the run was not interrupted after its 3rd row"
    with open(part, "a") as fh:  # a row cut in the middle, as a kill during a write leaves it
        fh.write("999\t3\t3\t0.12")
    assert main(["certify", *args, "--out", str(part)]) == 0
    _, resumed = _rows(part)
    _, expected = _rows(full)
    assert _without_time(resumed) == _without_time(expected)
    assert len({r[0] for r in resumed}) == len(resumed) == 8


def test_resume_refuses_other_settings_and_leaves_the_file_intact(ckpt, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert main(["certify", "--model", str(ckpt), "--max", "2", "--n", "200", "--out", str(out)]) == 0
    before = out.read_text()
    assert main(["certify", "--model", str(ckpt), "--max", "2", "--n", "200", "--sigma", "0.5",
                 "--out", str(out)]) == 2
    assert "sigma: file 0.25, now 0.5" in capsys.readouterr().err
    assert out.read_text() == before


def test_predict_rows(ckpt, tmp_path):
    out = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(ckpt), "--max", "3", "--n", "300", "--out", str(out)]) == 0
    header, rows = _rows(out)
    assert header == "idx\tlabel\tpredict\tcorrect\ttime" and len(rows) == 3


def test_adaptive_certify_and_predict_rows_record_samples_and_match_the_library(ckpt, tmp_path):
    from smoothguard.data import load_dataset
    from smoothguard.models import load_checkpoint
    from smoothguard.smoothing import SmoothedClassifier, image_seed
    from smoothguard.smoothing.adaptive import certify_adaptive, predict_adaptive

    c, p = tmp_path / "c.tsv", tmp_path / "p.tsv"
    common = ["--model", str(ckpt), "--max", "4", "--skip", "5", "--threads", "1", "--seed", "7", "--batch", "400"]
    bonf = ["--sequential", "bonferroni"]  # the --sequential cs rows are checked in tests/test_adaptive.py
    assert main(["certify", *common, "--radii", "0.25,0.5", "--n-max", "3000", *bonf, "--out", str(c)]) == 0
    assert main(["predict", *common, "--adaptive", "--n-max", "3000", *bonf, "--out", str(p)]) == 0
    header_c, rows_c = _rows(c)
    header_p, rows_p = _rows(p)
    # adaptive rows are written as their images finish (any order); compare them in index order
    rows_c, rows_p = (sorted(rows, key=lambda r: int(r[0])) for rows in (rows_c, rows_p))
    assert header_c == "idx\tlabel\tpredict\tradius\tcorrect\tn_used\ttime"
    assert header_p == "idx\tlabel\tpredict\tcorrect\tn_used\ttime"
    # the rows are the library's answers with the per-image seeds (seed, idx)
    data = load_dataset("demo").subset(skip=5, max_count=4)
    seeds = [image_seed(7, int(i)) for i in data.indices]
    g = SmoothedClassifier(load_checkpoint(ckpt)[0], 10, 0.25)
    cert = certify_adaptive(g, data.images, [0.25, 0.5], n0=100, n_max=3000, alpha=0.001, seeds=seeds)
    pred = predict_adaptive(g, data.images, n_max=3000, alpha=0.001, seeds=seeds)
    assert [int(r[0]) for r in rows_c] == data.indices.tolist() == [int(r[0]) for r in rows_p]
    assert [int(r[2]) for r in rows_c] == cert.prediction.tolist()
    assert [float(r[3]) for r in rows_c] == cert.radius.tolist()
    assert [int(r[5]) for r in rows_c] == cert.n_used.tolist()
    assert [int(r[2]) for r in rows_p] == pred.prediction.tolist()
    assert [int(r[4]) for r in rows_p] == pred.n_used.tolist()
    assert all(0 < int(r[4]) <= 3000 for r in rows_p)


@pytest.mark.parametrize("argv,message", [
    (["certify", "--radii", "0.25,-1", "--max", "1"], "--radii needs radii >= 0"),
    (["predict", "--adaptive", "--n-max", "0", "--max", "1"], "--n-max must be >= 1"),
    (["predict", "--adaptive", "--futility-alpha", "1", "--max", "1"], "--futility-alpha must be in (0, 1)"),
    (["certify", "--n", "0", "--max", "1"], "--n must be an integer >= 1"),
    (["certify", "--n0", "0", "--max", "1"], "--n0 must be an integer >= 1"),
    (["certify", "--alpha", "2", "--max", "1", "--n", "10"], "--alpha must lie in (0, 1)"),
    (["certify", "--radii", "0.25", "--n", "1000", "--max", "1"], "--n 1000 has no effect with --radii"),
    (["predict", "--adaptive", "--n", "1000", "--max", "1"], "--n 1000 has no effect with --adaptive"),
    (["certify", "--model", "/nonexistent.pt"], "does not exist"),
    (["certify", "--data", "fashion-mnist", "--root", "/nonexistent", "--max", "1"], "t10k-images-idx3-ubyte"),
    (["certify", "--max", "0"], "--max must be a positive count or -1"),
    (["predict", "--sigma", "-1", "--max", "1"], "sigma must be a positive"),
])
def test_bad_input_gives_a_clear_error_and_exit_code_2(argv, message, tmp_path, capsys):
    out = tmp_path / "never.tsv"
    assert main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
