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


# ----------------------------------------------------------------------------- issue 24: messages, sidecar, keys
def test_the_sidecar_is_canonical_json_with_the_version(tmp_path):
    """Indented, keys sorted (stable diffs between runs), newline-terminated, and it
    records the package version."""
    import smoothguard

    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)], settings={"z": 1, "a": [1, 2], "sigma": 0.25, "n": 10})
    text = sidecar_path(path).read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"
    assert text.startswith('{\n  "columns": [\n    "idx",')
    assert set(meta) == {"kind", "columns", "settings", "key_settings", "smoothguard_version"}
    assert meta["smoothguard_version"] == smoothguard.__version__
    assert meta["settings"] == {"z": 1, "a": [1, 2], "sigma": 0.25, "n": 10}


def test_a_refused_resume_leaves_the_file_and_its_sidecar_alone(tmp_path):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)])
    side_before, rows_before = sidecar_path(path).read_text(), path.read_text()
    for bad in (dict(settings={**SETTINGS, "n": 5}), dict(kind="predict")):
        with pytest.raises(ResultFileError):
            _writer(path, **bad).open()
        assert sidecar_path(path).read_text() == side_before and path.read_text() == rows_before


def test_refusal_messages_name_the_file_the_problem_and_the_remedy(tmp_path):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)])

    def message(fn):
        with pytest.raises(ResultFileError) as info:
            fn()
        return str(info.value)

    assert message(lambda: _writer(path, settings={**SETTINGS, "sigma": 0.5, "n": 7}).open()) == (
        f"refusing to resume {path}: settings differ (sigma: file 0.25, now 0.5; n: file 1000, now 7). "
        "Use the same settings, another --out, or --overwrite")
    assert message(lambda: _writer(path, kind="predict", columns=["idx", "label", "x"]).open()) == (
        f"{path} was written by 'certify' with columns ['idx', 'label', 'radius']; this run is 'predict' with "
        "columns ['idx', 'label', 'x']. Choose another --out or pass --overwrite")
    assert message(lambda: read_complete_rows(path, ["idx", "x", "y"])) == (
        f"{path}: header ['idx', 'label', 'radius'] differs from expected ['idx', 'x', 'y']")
    side = sidecar_path(path)
    side.write_text("{not json")
    msg = message(lambda: _writer(path).open())
    assert msg.startswith(f"{side}: unreadable settings file (Expecting property name") and msg.endswith(
        "); pass --overwrite")
    side.unlink()
    assert message(lambda: _writer(path).open()) == (
        f"{path} exists but has no settings file out.tsv.json, so it cannot be resumed safely; pass --overwrite "
        "to start it again or choose another --out")
    binary = tmp_path / "bin.tsv"
    binary.write_bytes(b"\xff\xfe\n0\t1\t0.5\n")
    assert message(lambda: read_complete_rows(binary, COLS)) == (
        f"{binary}: header None differs from expected ['idx', 'label', 'radius']")
    with pytest.raises(ValueError, match=r"^the first column of a result file must be 'idx'$"):
        ResultWriter(tmp_path / "o.tsv", [], "certify", {}, [])
    with _writer(tmp_path / "o.tsv") as w:
        with pytest.raises(ValueError, match=r"^row has 4 fields, expected 3$"):
            w.write((0, 1, 0.5, 9))


def test_the_cut_warning_names_the_line_and_the_reason(tmp_path):
    from smoothguard.evaluation.resultfile import ResultFileWarning

    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5), (1, 1, 0.25)])
    with open(path, "a") as fh:
        fh.write("0\t1\t0.5\n2\t0\t0.0\n")
    w = _writer(path)
    with pytest.warns(ResultFileWarning) as caught:
        w.open()
    w.close()
    assert len(caught) == 1
    assert str(caught[0].message) == (f"{path}: line 4: idx 0 appears twice; resuming from the rows before it "
                                      "(2 kept, the rest is recomputed)")
    assert issubclass(ResultFileWarning, UserWarning) and issubclass(ResultFileError, ValueError)


@pytest.mark.parametrize("key,old,new", [("noise", "gaussian", "laplace"), ("sequential", "bonferroni", "cs")])
def test_a_file_from_before_a_key_existed_resumes_as_that_keys_old_value(tmp_path, key, old, new):
    path = tmp_path / "out.tsv"
    _write(path, [(0, 1, 0.5)])  # written without the key
    keys = KEYS + [key]
    with ResultWriter(path, COLS, "certify", {**SETTINGS, key: old}, keys) as w:
        assert sorted(w.done) == [0]
    _write(path, [(0, 1, 0.5)], overwrite=True)
    with pytest.raises(ResultFileError, match=rf"settings differ \({key}: file '{old}', now '{new}'\)"):
        ResultWriter(path, COLS, "certify", {**SETTINGS, key: new}, keys).open()


def test_numbers_in_rows_and_file_hashes(tmp_path):
    import hashlib

    from smoothguard.evaluation.resultfile import file_sha256

    path = tmp_path / "out.tsv"
    path.write_text("idx\tlabel\tradius\n0\tnan\tinf\n1\t-1\t1e-300\n2\t\t0.5\n")
    assert sorted(read_complete_rows(path, COLS)[0]) == [0, 1]  # an empty field is not a number
    blob = tmp_path / "model.pt"
    data = bytes(range(256)) * 10_000  # 2.5 MB: several read chunks
    blob.write_bytes(data)
    assert file_sha256(blob) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(str(empty)) == hashlib.sha256(b"").hexdigest()


def test_merge_writes_the_sidecar_of_the_merged_run_and_skips_missing_parts(tmp_path):
    a, out = tmp_path / "a.tsv", tmp_path / "all.tsv"
    _write(a, [(1, 1, 0.5), (0, 2, 0.25)])
    assert merge_parts(out, [tmp_path / "gone.tsv", a], COLS, "predict", {"n": 3}, ["n"], [0, 1]) is True
    assert out.read_text() == "idx\tlabel\tradius\n0\t2\t0.25\n1\t1\t0.5\n"
    meta = json.loads(sidecar_path(out).read_text())
    assert (meta["kind"], meta["columns"], meta["settings"], meta["key_settings"]) == ("predict", COLS, {"n": 3},
                                                                                        ["n"])
    with ResultWriter(out, COLS, "predict", {"n": 3}, ["n"]) as w:  # the merged file resumes
        assert sorted(w.done) == [0, 1]


def test_odd_targets_and_old_sidecars_are_named(tmp_path):
    from smoothguard.contract import OutputError
    from smoothguard.evaluation.resultfile import first_bad_row

    folder = tmp_path / "out.tsv"
    folder.mkdir()
    with pytest.raises(OutputError) as info:
        _writer(folder).open()
    assert str(info.value) == (f"refusing to write result file {folder}: it exists and is a folder; give the path of "
                               "a regular file")
    path = tmp_path / "b.tsv"
    sidecar_path(path).mkdir()
    with pytest.raises(OutputError) as info:
        _writer(path).open()
    assert str(info.value) == (f"refusing to write settings file {sidecar_path(path)}: it exists and is a folder; "
                               "give the path of a regular file")
    # a one-byte file is an existing file: without a sidecar it is not overwritten
    one = tmp_path / "one.tsv"
    one.write_text("\n")
    with pytest.raises(ResultFileError, match="has no settings file"):
        _writer(one).open()
    assert one.read_text() == "\n"
    # a sidecar of a version that wrote no settings: every key setting differs from "missing"
    old = tmp_path / "old.tsv"
    _write(old, [(0, 1, 0.5)])
    meta = json.loads(sidecar_path(old).read_text())
    del meta["settings"]
    sidecar_path(old).write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match=r"settings differ \(sigma: file None, now 0.25; n: file None, now 1000\)"):
        _writer(old).open()
    # fields are tab-separated: a space-separated header or an empty field is named as such
    spaced = tmp_path / "spaced.tsv"
    spaced.write_text("idx label radius\n0 1 0.5\n")
    with pytest.raises(ResultFileError, match="header"):
        read_complete_rows(spaced, COLS)
    empty = tmp_path / "empty.tsv"
    empty.write_text("idx\tlabel\tradius\n0\t\t0.5\n")
    assert first_bad_row(empty, COLS) == (2, "a field is not a number")
