"""Every result format is declared once (evaluation/formats.py) and the commands, the
report, analyze and the runner use that declaration."""

from __future__ import annotations

import json
import math

import pytest

from smoothguard.evaluation import formats as F


def _tsv(path, header, rows=(), partial=""):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows) + partial)
    return path


@pytest.mark.parametrize("header,kind", [
    (F.CERTIFY_COLUMNS, "certify"),
    (F.ADAPTIVE_CERTIFY_COLUMNS, "certify"),
    (F.PREDICT_COLUMNS, "predict"),
    (F.ADAPTIVE_PREDICT_COLUMNS, "predict"),
    (F.ATTACK_COLUMNS, "attack"),
    (F.VERIFY_COLUMNS, "verify"),
    (("idx", "label", "predict", "radius", "correct"), "certify"),  # Cohen's files without time
    (("epoch", "lr", "train_loss"), None),
    (("idx", "label", "clean_pred"), None),
])
def test_a_file_is_recognized_by_its_header(tmp_path, header, kind):
    fmt = F.format_of(_tsv(tmp_path / "r.tsv", header))
    assert (fmt.kind if fmt else None) == kind


def test_json_tables_are_recognized_by_their_content(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"evaluation": {}, "settings": {}}))
    (tmp_path / "b.json").write_text(json.dumps({"grid": {"sigmas": [], "m": [], "methods": []}, "rows": []}))
    (tmp_path / "c.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "d.json").write_text("{not json")
    assert [getattr(F.format_of(tmp_path / f"{n}.json"), "kind", None) for n in "abcd"] == \
        ["evaluate", "smooth-eval", None, None]


def test_read_rows_keeps_complete_rows_only(tmp_path):
    rows = [[0, 1, 1, 1, 0.0, 0, 0.5], [5, 2, 2, 0, 0.25, 1, 0.5]]
    path = _tsv(tmp_path / "a.tsv", F.ATTACK_COLUMNS, rows, partial="9\t1\t1")
    assert F.read_rows(path) == [[str(v) for v in r] for r in rows]
    with pytest.raises(ValueError, match="not a verify result file"):
        F.read_rows(path, F.VERIFY)


def test_attack_summary_by_hand():
    # idx label clean adv norm success time: 3 images, one misclassified clean, one broken at 0.3
    rows = [["0", "1", "1", "1", "0.1", "0", "1.0"],
            ["1", "2", "2", "0", "0.3", "1", "2.0"],
            ["2", "0", "4", "4", "0.0", "1", "0.5"]]
    s = F.summarize_attack(rows, eps=0.5)
    assert s["n"] == 3
    assert s["clean_accuracy"] == pytest.approx(2 / 3)
    assert s["robust_accuracy"] == pytest.approx(1 / 3)
    assert s["success_rate_on_correct"] == pytest.approx(1 / 2)
    assert s["mean_norm_successful"] == pytest.approx(0.3)
    assert s["max_norm"] == pytest.approx(0.3)
    assert s["total_seconds"] == pytest.approx(3.5)
    assert math.isnan(F.summarize_attack([], None)["clean_accuracy"])


def test_the_commands_and_the_runner_use_the_declarations():
    from smoothguard.cli import attack, certify, predict, verify
    from smoothguard.cli.run import OUTPUTS

    assert tuple(attack.COLUMNS) == F.ATTACK.columns
    assert tuple(verify.COLUMNS) == F.VERIFY.columns
    assert tuple(certify.COLUMNS) == F.CERTIFY.columns
    assert tuple(predict.COLUMNS) == F.PREDICT.columns
    for kind in ("certify", "predict", "attack", "verify"):
        spec, fmt = OUTPUTS[kind], F.get_format(kind)
        assert spec.primary == fmt.file and spec.complete == fmt.complete
        assert spec.options["out"].endswith("/" + fmt.file)
    assert OUTPUTS["evaluate"].complete == F.EVALUATE.complete


def test_is_complete_needs_every_file(tmp_path):
    assert not F.is_complete(F.CERTIFY, tmp_path)
    (tmp_path / "certify.tsv").write_text("")
    assert F.is_complete(F.CERTIFY, tmp_path)
    with pytest.raises(ValueError, match="allowed: attack, verify, certify"):
        F.get_format("certfy")
