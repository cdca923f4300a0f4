"""Resumable result files (evaluation/resultfile.py) on their own: what a killed run
leaves, what reopening keeps and cuts, which settings refuse a resume, and the merge of
sharded parts. Deterministic stand-ins for the kill -9 tests of the CLI."""

import json

import pytest

from smoothguard.evaluation.resultfile import (
    ResultFileError,
    ResultWriter,
    format_value,
    merge_parts,
    read_complete_rows,
    sidecar_path,
)

COLS = ["idx", "label", "radius"]
SETTINGS = {"sigma": 0.25, "n": 1000, "device": "cpu"}
KEYS = ["sigma", "n"]


def _writer(path, settings=SETTINGS, kind="certify", columns=COLS, overwrite=False):
    return ResultWriter(path, columns, kind, settings, KEYS, overwrite=overwrite)


def _write(path, rows, **kw):
    with _writer(path, **kw) as w:
        for row in rows:
            w.write(row)
    return w


def test_rows_are_written_with_header_full_precision_and_a_sidecar(tmp_path):
    path = tmp_path / "out.tsv"
    w = _write(path, [(0, 3, 0.1 + 0.2), (1, -1, 0.0)])
    assert path.read_text() == "idx\tlabel\tradius\n0\t3\t0.30000000000000004\n1\t-1\t0.0\n"
    assert sorted(w.done) == [0, 1] and w.done[0] == ["0", "3", "0.30000000000000004"]
    assert sidecar_path(path) == tmp_path / "out.tsv.json"  # Cohen's TSV plus FILE.tsv.json
    meta = json.loads((tmp_path / "out.tsv.json").read_text())
    assert meta["kind"] == "certify" and meta["columns"] == COLS
    assert meta["settings"] == SETTINGS and meta["key_settings"] == KEYS
    assert "smoothguard_version" in meta
    assert format_value(1.5) == "1.5" and format_value(7) == "7" and format_value("a") == "a"


def test_reopening_keeps_complete_rows_and_cuts_a_partial_tail(tmp_path):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5), (1, 2, 0.25)])
    with open(path, "a") as fh:
        fh.write("2\t7\t0.12")  # a killed run's partial row: no newline
    rows, keep, size = read_complete_rows(path, COLS)
    assert sorted(rows) == [0, 1] and size > keep
    assert keep == len("idx\tlabel\tradius\n0\t1\t0.5\n1\t2\t0.25\n")
    with _writer(path) as w:
        assert sorted(w.done) == [0, 1]
        assert path.read_text().endswith("1\t2\t0.25\n")  # the tail is cut at open
        w.write((2, 7, 0.125))
    assert path.read_text() == "idx\tlabel\tradius\n0\t1\t0.5\n1\t2\t0.25\n2\t7\t0.125\n"


@pytest.mark.parametrize("tail", ["3\t1\n", "x\t1\t0.5\n", "\n", "4\t1\t0.5\t9\n"])
def test_a_corrupt_row_ends_the_scan_and_is_cut(tmp_path, tail):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)])
    good = path.read_text()
    with open(path, "a") as fh:
        fh.write(tail + "5\t1\t0.5\n")  # rows after a corrupt one are not trusted either
    rows, keep, size = read_complete_rows(path, COLS)
    assert sorted(rows) == [0] and keep == len(good) and size > keep
    with _writer(path) as w:
        assert sorted(w.done) == [0]
    assert path.read_text() == good


def test_empty_file_or_overwrite_starts_fresh(tmp_path):
    path = tmp_path / "sub" / "out.tsv"
    path.parent.mkdir()
    path.write_text("")
    with _writer(path) as w:
        assert w.done == {}
    assert path.read_text() == "idx\tlabel\tradius\n"
    _write(path, [(0, 1, 0.5)])
    with _writer(path, settings={**SETTINGS, "sigma": 0.5}, overwrite=True) as w:
        assert w.done == {}
    assert path.read_text() == "idx\tlabel\tradius\n"
    assert json.loads(sidecar_path(path).read_text())["settings"]["sigma"] == 0.5
    # parent folders are created
    with _writer(tmp_path / "a" / "b" / "c.tsv") as w:
        w.write((0, 0, 0.0))
    assert (tmp_path / "a" / "b" / "c.tsv").exists()


def test_resume_refuses_other_key_settings_but_not_other_free_settings(tmp_path):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)])
    with _writer(path, settings={**SETTINGS, "device": "cuda"}) as w:  # not a key setting
        assert sorted(w.done) == [0]
    with pytest.raises(ResultFileError, match=r"settings differ \(sigma: file 0.25, now 0.5\)\. Use the same "
                                              r"settings, another --out, or --overwrite$"):
        _writer(path, settings={**SETTINGS, "sigma": 0.5}).open()
    missing = {k: v for k, v in SETTINGS.items() if k != "n"}
    with pytest.raises(ResultFileError, match="settings differ"):
        _writer(path, settings=missing).open()
    assert path.read_text() == "idx\tlabel\tradius\n0\t1\t0.5\n"  # a refused resume writes nothing


def test_resume_refuses_another_kind_other_columns_no_sidecar_or_a_bad_sidecar(tmp_path):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)])
    with pytest.raises(ResultFileError, match=r"was written by 'certify' with columns \['idx', 'label', "
                                              r"'radius'\]; this run is 'predict'.*--overwrite$"):
        _writer(path, kind="predict").open()
    with pytest.raises(ResultFileError, match="columns"):
        _writer(path, columns=["idx", "label", "other"]).open()
    side = sidecar_path(path)
    side.write_text("{not json")
    with pytest.raises(ResultFileError, match="unreadable"):
        _writer(path).open()
    side.unlink()
    with pytest.raises(ResultFileError, match=r"no settings file out.tsv.json.*pass --overwrite to start it "
                                              r"again or choose another --out$"):
        _writer(path).open()
    with pytest.raises(ResultFileError, match="header"):
        read_complete_rows(path, ["idx", "x", "y"])


def test_writer_checks_its_use(tmp_path):
    with pytest.raises(ValueError, match="idx"):
        ResultWriter(tmp_path / "o.tsv", ["label", "idx"], "certify", {}, [])
    w = _writer(tmp_path / "o.tsv")
    with pytest.raises(RuntimeError, match="open"):
        w.write((0, 1, 0.5))
    w.open()
    with pytest.raises(ValueError, match="3"):
        w.write((0, 1))
    w.close()
    with pytest.raises(RuntimeError, match=r"^ResultWriter.open\(\) first$"):
        w.write((0, 1, 0.5))  # closed: no more rows
    w.close()  # idempotent


def test_merge_parts_in_index_order_only_when_complete(tmp_path):
    a, b, out = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "all.tsv"
    _write(a, [(0, 1, 0.5), (2, 1, 0.25)])
    _write(b, [(3, 0, 0.0)])
    assert merge_parts(out, [a, b, tmp_path / "missing.tsv"], COLS, "certify", SETTINGS, KEYS, [0, 1, 2, 3]) is False
    assert not out.exists() and not sidecar_path(out).exists()
    _write(b, [(1, 2, 0.75)])  # resumes b: appends idx 1
    assert merge_parts(out, [a, b], COLS, "certify", SETTINGS, KEYS, [3, 0, 2, 1]) is True
    assert out.read_text() == "idx\tlabel\tradius\n0\t1\t0.5\n1\t2\t0.75\n2\t1\t0.25\n3\t0\t0.0\n"
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["kind"] == "certify" and meta["settings"] == SETTINGS and meta["key_settings"] == KEYS
    # only the expected indices are merged
    assert merge_parts(out, [a, b], COLS, "certify", SETTINGS, KEYS, [2, 3]) is True
    assert out.read_text() == "idx\tlabel\tradius\n2\t1\t0.25\n3\t0\t0.0\n"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("tail,line,reason", [
    ("2\t1\n", 3, "2 fields, expected 3"),
    ("x\t1\t0.5\n", 3, "idx 'x' is not an integer"),
    ("2\tone\t0.5\n", 3, "a field is not a number"),
    ("0\t1\t0.5\n", 3, "idx 0 appears twice"),
    ("9\t1\t0.5\n", 3, "idx 9 is not in this run's selection of images"),
    (b"2\t\xff\t0.5\n", 3, "not UTF-8 text"),
    ("2\t1\t0.5", 3, "a partial last row (no newline)"),
])
def test_the_first_untrusted_row_is_named_and_resume_cuts_there(tmp_path, tail, line, reason):
    """The scan stops at the first row that is not a complete, numeric, unique row of this
    run's selection (allowed = 0..4): first_bad_row names it, resuming keeps the rows
    before it, cuts the rest and warns unless it was only a partial last row."""
    import warnings

    from smoothguard.evaluation.resultfile import first_bad_row

    path = tmp_path / "out.tsv"
    with ResultWriter(path, COLS, "certify", SETTINGS, KEYS, allowed=range(5)) as w:
        w.write((0, 1, 0.5))
    good = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(tail if isinstance(tail, bytes) else tail.encode())
        if not (isinstance(tail, str) and not tail.endswith("\n")):
            fh.write(b"3\t1\t0.5\n")  # a valid row after a bad one is not trusted either
    assert first_bad_row(path, COLS, allowed=range(5)) == (line, reason)
    rows, keep, size = read_complete_rows(path, COLS, allowed=range(5))
    assert sorted(rows) == [0] and keep == len(good) and size > keep
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ResultWriter(path, COLS, "certify", SETTINGS, KEYS, allowed=range(5)) as w:
            assert sorted(w.done) == [0]
    assert path.read_bytes() == good
    named = [str(c.message) for c in caught if f"line {line}: {reason}" in str(c.message)]
    assert len(named) == (0 if reason.startswith("a partial") else 1)
    assert first_bad_row(path, COLS, allowed=range(5)) is None
    assert first_bad_row(path, COLS) is None
