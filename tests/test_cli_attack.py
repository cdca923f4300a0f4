"""Tests of ``smoothguard attack``: rows, threat model, resume, transfer, option errors."""

from __future__ import annotations

import json

import pytest
import torch

from smoothguard.cli import main
from smoothguard.cli.attack import COLUMNS
from smoothguard.data import load_dataset
from smoothguard.models import get_model, load_default_model, save_checkpoint

torch.set_num_threads(1)

BASE = ["attack", "--threads", "1", "--max", "8"]


def read_rows(path):
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == COLUMNS
    return [line.split("\t") for line in lines[1:]]


@pytest.mark.parametrize("attack, norm, eps, extra", [
    ("pgd", "linf", 0.05, ["--steps", "5", "--restarts", "2"]),
    ("pgd", "l2", 0.5, ["--steps", "5"]),
    ("fgsm", "linf", 0.1, []),
    ("apgd", "l2", 0.8, ["--steps", "5", "--loss", "dlr"]),
    ("square", "linf", 0.1, ["--queries", "30"]),
    ("ddn", "l2", 0.7, ["--steps", "10"]),
])
def test_rows_respect_the_eps_ball(attack, norm, eps, extra, tmp_path, capsys):
    out = tmp_path / "a.tsv"
    argv = [*BASE, "--attack", attack, "--norm", norm, "--eps", str(eps), *extra, "--out", str(out)]
    assert main(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 8 and len({r[0] for r in rows}) == 8
    assert [int(r[0]) for r in rows] == [20 * i for i in range(8)]  # the demo set is test --skip 20
    for idx, label, clean, adv, nrm, success, sec in rows:
        assert 0.0 <= float(nrm) <= eps + 1e-6
        assert int(success) == int(int(adv) != int(label))
        assert float(sec) >= 0
    assert any(int(r[5]) for r in rows)  # the attack does something on this model
    summary = json.loads((out.parent / (out.name + ".json")).read_text())["summary"]
    robust = sum(int(r[3]) == int(r[1]) for r in rows) / 8
    assert summary["robust_accuracy"] == pytest.approx(robust)
    assert summary["clean_accuracy"] >= summary["robust_accuracy"]
    assert summary["max_norm"] <= eps + 1e-6
    assert "robust accuracy" in capsys.readouterr().out


def test_resume_after_interruption_has_no_duplicates(tmp_path, monkeypatch):
    import smoothguard.attacks as A

    out = tmp_path / "r.tsv"
    argv = [*BASE, "--attack", "pgd", "--eps", "0.05", "--steps", "3", "--batch", "3", "--out", str(out)]
    real_run = A.PGD.run
    calls = {"n": 0}

    def flaky_run(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(A.PGD, "run", flaky_run)
    assert main(argv) == 130  # interrupted after the first group of 3
    first = read_rows(out)
    assert len(first) == 3
    # a killed process may also leave a partial line behind
    with open(out, "a") as fh:
        fh.write("60\t7\t7")
    monkeypatch.setattr(A.PGD, "run", real_run)
    assert main(argv) == 0
    rows = read_rows(out)
    idx = [int(r[0]) for r in rows]
    assert len(idx) == 8 and len(set(idx)) == 8 and sorted(idx) == [20 * i for i in range(8)]
    assert rows[:3] == first  # resumed rows untouched
    summary = json.loads((tmp_path / "r.tsv.json").read_text())["summary"]
    assert summary["n"] == 8
    # a third run has nothing left to do; other settings are refused
    assert main(argv) == 0 and len(read_rows(out)) == 8
    assert main([*argv[:-2], "--eps", "0.1", "--out", str(out)]) == 2


def test_transfer_reports_the_target_predictions(tmp_path):
    model, meta = load_default_model()
    torch.manual_seed(0)
    other = get_model("lenet", meta["num_classes"], meta["in_shape"], meta["mean"], meta["std"])
    target_path = tmp_path / "target.pt"
    save_checkpoint(target_path, other, {k: meta[k] for k in ("arch", "num_classes", "in_shape", "mean", "std")})
    out = tmp_path / "t.tsv"
    argv = [*BASE, "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--target-model", str(target_path),
            "--out", str(out)]
    assert main(argv) == 0
    rows = read_rows(out)
    ds = load_dataset("demo")
    x = ds.images[:8]
    with torch.no_grad():
        target_pred = other.eval()(x).argmax(1).tolist()
        source_pred = model(x).argmax(1).tolist()
    assert [int(r[2]) for r in rows] == target_pred
    assert target_pred != source_pred  # the check can tell them apart
    settings = json.loads((tmp_path / "t.tsv.json").read_text())["settings"]
    assert settings["target_model"].endswith("target.pt") and settings["target_sha256"]


@pytest.mark.parametrize("argv, match", [
    (["--attack", "bim"], "--attack must be one of pgd, fgsm, fgm, apgd, cw, ddn, square, nattack"),
    (["--norm", "l1"], "--norm must be one of linf, l2"),
    (["--attack", "fgsm", "--norm", "l2"], "--norm l2 is not supported by --attack fgsm; allowed: linf"),
    (["--attack", "cw", "--norm", "linf"], "allowed: l2"),
    (["--loss", "hinge"], "--loss must be one of ce, cw, dlr"),
    (["--eps", "-1"], "--eps must be a positive"),
    (["--eps", "3"], "--eps 3.0 > 1"),
    (["--eps", "none"], "--eps none (minimal perturbation) is only allowed for --attack cw, ddn, fab, not pgd"),
    (["--attack", "square", "--restarts", "3"], "--restarts applies to --attack pgd, apgd"),
    (["--queries", "100"], "--queries applies to --attack square, nattack"),
    (["--attack", "square", "--queries", "1"], "--queries must be an integer >= 2"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
])
def test_bad_options_exit_2_naming_the_option(argv, match, tmp_path, capsys):
    out = tmp_path / "bad.tsv"
    assert main([*BASE, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("smoothguard attack: error:")
    assert not out.exists()


def test_minimal_attack_without_eps_and_stdout(capsys):
    assert main([*BASE, "--max", "3", "--attack", "ddn", "--norm", "l2", "--eps", "none", "--steps", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t") == COLUMNS and len(out) == 4
    rows = [line.split("\t") for line in out[1:]]
    # minimal perturbation: every correctly classified point is fooled, at a positive norm;
    # a misclassified one needs no perturbation
    assert all(int(r[5]) == 1 and (float(r[4]) > 0) == (r[1] == r[2]) for r in rows)


def test_square_reports_its_queries_to_the_attack_progress_bar(tmp_path, monkeypatch):
    """The bar moves during Square's query loop (a postfix every 100 queries), not only
    when a batch of images finishes."""
    from smoothguard.cli import common

    seen = []
    real_progress = common.progress

    def spying_progress(*a, **k):
        bar = real_progress(*a, **k)
        original = bar.set_postfix_str

        def record(text, *aa, **kk):
            seen.append(text)
            return original(text, *aa, **kk)

        bar.set_postfix_str = record
        return bar

    monkeypatch.setattr("smoothguard.cli._smoothing_run.progress", spying_progress)
    out = tmp_path / "sq.tsv"
    assert main(["attack", "--attack", "square", "--queries", "300", "--max", "2", "--out", str(out)]) == 0
    assert any(t.startswith("query ") for t in seen), seen  # called from inside Square's loop


def test_conv_grad_is_the_cpu_default_recorded_and_changes_only_float_rounding(tmp_path):
    """--conv-grad (the first convolution's input gradient by GEMM + shifted sums; the
    default on the CPU): the same decisions as --no-conv-grad (oneDNN's own backward), l_2
    norms equal up to float32 rounding, and the sidecar says which was used (a resume
    cannot mix the two)."""
    rows, sidecars = {}, {}
    for name, flag in (("plain", ["--no-conv-grad"]), ("conv", []), ("explicit", ["--conv-grad"])):
        out = tmp_path / f"{name}.tsv"
        argv = [*BASE, "--attack", "pgd", "--norm", "l2", "--eps", "0.5", "--steps", "5", *flag, "--out", str(out)]
        assert main(argv) == 0
        rows[name] = read_rows(out)
        sidecars[name] = json.loads((out.parent / (out.name + ".json")).read_text())["settings"]
    assert sidecars["plain"]["conv_grad"] is False and sidecars["conv"]["conv_grad"] is True
    assert [r[:6] for r in rows["explicit"]] == [r[:6] for r in rows["conv"]]  # the default is --conv-grad
    for a, b in zip(rows["plain"], rows["conv"]):
        assert a[:4] == b[:4] and a[5] == b[5]  # index, label, clean and adversarial class, success
        assert float(b[4]) == pytest.approx(float(a[4]), rel=1e-5)
    resumed = [*BASE, "--attack", "pgd", "--norm", "l2", "--eps", "0.5", "--steps", "5", "--no-conv-grad", "--out",
               str(tmp_path / "conv.tsv")]
    assert main(resumed) != 0  # the file was made with conv_grad: resuming with --no-conv-grad is refused
