"""``smoothguard verify``: rows, resume, errors, and the analyze sandwich table."""

from __future__ import annotations

import json

import pytest
import torch

from smoothguard.cli import main
from smoothguard.cli.verify import COLUMNS
from smoothguard.data import load_dataset
from smoothguard.models import load_default_model
from smoothguard.verification import verify


def read_rows(path):
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == COLUMNS
    return [line.split("\t") for line in lines[1:]]


def test_rows_match_the_library_and_resume(tmp_path):
    out = tmp_path / "v.tsv"
    argv = ["verify", "--max", "6", "--method", "crown-ibp", "--eps", "0.002", "--batch", "4", "--threads", "1",
            "--out", str(out)]
    assert main(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 6
    data = load_dataset("demo", "test").subset(max_count=6)
    model, _ = load_default_model()
    res = verify(model, data.images, data.labels, 0.002, "linf", "crown-ibp")
    assert [int(r[0]) for r in rows] == data.indices.tolist()
    assert [int(r[3]) for r in rows] == res.verified.int().tolist()
    torch.testing.assert_close(torch.tensor([float(r[4]) for r in rows]), res.margin_lb, rtol=1e-5, atol=1e-5)
    assert 0 < sum(int(r[3]) for r in rows) < 6  # the eps separates the images (image 2 is misclassified)
    side = json.loads((tmp_path / "v.tsv.json").read_text())
    assert side["kind"] == "verify" and side["summary"]["n"] == 6
    # cut the last row in half: the rerun keeps 5 rows and recomputes the sixth, identically
    text = out.read_text()
    out.write_text(text[: text.rstrip("\n").rfind("\n") + 5])
    assert main(argv) == 0
    again = read_rows(out)
    assert [r[:4] for r in again] == [r[:4] for r in rows]
    # the recomputed row ran in a smaller batch: the same bound up to float rounding
    torch.testing.assert_close(torch.tensor([float(r[4]) for r in again]), torch.tensor([float(r[4]) for r in rows]),
                               rtol=1e-5, atol=1e-5)
    # other settings are refused
    assert main(argv[:-2] + ["--eps", "0.01", "--out", str(out)]) == 2


@pytest.mark.parametrize("argv, match", [
    (["--method", "deeppoly"], "--method"),
    (["--norm", "l1"], "--norm"),
    (["--eps", "3"], "--eps"),
    (["--eps", "-1"], "--eps"),
    (["--batch", "0"], "--batch"),
])
def test_bad_options_exit_2_naming_the_option(argv, match, capsys):
    assert main(["verify", "--max", "2"] + argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_analyze_puts_verified_beside_attack_accuracy(tmp_path, capsys):
    v, a = tmp_path / "v.tsv", tmp_path / "a.tsv"
    common = ["--max", "6", "--eps", "0.004", "--threads", "1"]
    assert main(["verify", *common, "--method", "ibp", "--out", str(v)]) == 0
    assert main(["attack", *common, "--attack", "pgd", "--steps", "10", "--out", str(a)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(v), str(a), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    assert header[:5] == ["model", "norm", "eps", "images", "clean"]
    assert "verified (ibp)" in header and "pgd (attack)" in header and row[-1] == "ok"
    got = dict(zip(header, row))
    assert float(got["verified (ibp)"]) <= float(got["pgd (attack)"]) <= float(got["clean"])
