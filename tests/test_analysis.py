"""Result-file reading, metrics, tables, plots and ``smoothguard analyze``."""

from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy.stats import norm

from smoothguard.evaluation import (
    ResultsFileError,
    abstention_rate,
    analyze_files,
    average_certified_radius,
    certified_accuracy,
    certified_accuracy_lower_bounds,
    clean_accuracy,
    latex_escape,
    legends,
    mean_time,
    parse_time,
    plot_certified_accuracy,
    read_results,
    run_r_max,
    summary_table,
    total_samples,
)

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"

# 8 images: correct ones have radii 0.8, 0.3, 0.1, 0.55, 1.2; one wrong with a radius;
# two abstentions.
OURS = [
    (0, 1, 1, 0.80, 1, 1.0),
    (1, 2, 2, 0.30, 1, 2.0),
    (2, 3, 3, 0.10, 1, 3.0),
    (3, 4, 5, 0.60, 0, 4.0),
    (4, 5, -1, 0.0, 0, 5.0),
    (5, 6, 6, 0.55, 1, 6.0),
    (6, 7, -1, 0.0, 0, 7.0),
    (7, 8, 8, 1.20, 1, 8.0),
]
SETTINGS = {"sigma": 0.5, "n0": 100, "n": 1000, "alpha": 0.001, "model": "lenet", "data": "demo",
            "denoiser": None}

COHEN_TIMEDELTA = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t3\t3\t0.557\t1\t0:00:04.125342\n"
    "20\t7\t7\t0.927\t1\t0:00:04.010221\n"
    "40\t4\t-1\t0.0\t0\t0:00:03.998317\n"
)
COHEN_FLOAT = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t3\t3\t0.557\t1\t4.125342\n"
    "20\t7\t7\t1.23e+03\t1\t4.01\n"
    "40\t4\t5\t0.213\t0\t3.99\n"
    "60\t2\t2\t0.0812\t1\t4\n"
)


def write_ours(path, rows=OURS, settings=SETTINGS, extra_header="", kind="certify"):
    lines = [HEADER + extra_header]
    for row in rows:
        lines.append("\t".join(str(v) for v in row))
    path.write_text("\n".join(lines) + "\n")
    if settings is not None:
        side = path.with_name(path.name + ".json")
        side.write_text(json.dumps({"kind": kind, "settings": settings, "smoothguard_version": "0.1.0"}))
    return path


# ------------------------------------------------------------------ metrics by hand


def test_metrics_hand_computed(tmp_path):
    res = read_results(write_ours(tmp_path / "ours.tsv"))
    assert res.kind == "certify" and len(res) == 8
    acc = certified_accuracy(res, [0.0, 0.25, 0.5, 0.75, 0.8, 1.0, 1.2, 1.21])
    np.testing.assert_allclose(acc, [5 / 8, 4 / 8, 3 / 8, 2 / 8, 2 / 8, 1 / 8, 1 / 8, 0.0])
    assert certified_accuracy(res, 0.3) == pytest.approx(4 / 8)  # radius >= r is inclusive
    assert average_certified_radius(res) == pytest.approx((0.8 + 0.3 + 0.1 + 0.55 + 1.2) / 8)
    assert abstention_rate(res) == pytest.approx(2 / 8)
    assert clean_accuracy(res) == pytest.approx(5 / 8)
    assert clean_accuracy(res) == certified_accuracy(res, 0.0)
    assert mean_time(res) == pytest.approx(4.5)
    assert total_samples(res) is None
    assert res.settings == SETTINGS


def test_abstain_is_wrong_even_if_file_says_correct(tmp_path):
    rows = [(0, 1, -1, 0.0, 1, 1.0), (1, 2, 2, 0.4, 1, 1.0)]
    res = read_results(write_ours(tmp_path / "a.tsv", rows))
    assert clean_accuracy(res) == 0.5
    assert average_certified_radius(res) == pytest.approx(0.2)


def test_r_max_from_sidecar(tmp_path):
    res = read_results(write_ours(tmp_path / "ours.tsv"))
    expected = 0.5 * norm.ppf(0.001 ** (1 / 1000))
    assert run_r_max(res) == pytest.approx(expected, rel=1e-12)
    assert run_r_max(res) == pytest.approx(0.5 * 2.463, abs=1e-3)  # ALGORITHMS.md table
    # Arguments only fill in what the sidecar lacks.
    assert run_r_max(res, sigma=1.0, n=5, alpha=0.1) == pytest.approx(expected, rel=1e-12)


def test_r_max_unknown_without_sidecar(tmp_path):
    (tmp_path / "c.tsv").write_text(COHEN_TIMEDELTA)
    res = read_results(tmp_path / "c.tsv")
    assert res.settings == {} and res.sidecar is None
    assert run_r_max(res) is None
    assert run_r_max(res, sigma=0.25, n=100_000) is None  # alpha still unknown
    assert run_r_max(res, sigma=0.25, n=100_000, alpha=0.001) == pytest.approx(0.953, abs=5e-4)


def test_n_used_column_and_extra_columns(tmp_path):
    rows = [r + (1000 * (i + 1), "x") for i, r in enumerate(OURS)]
    res = read_results(write_ours(tmp_path / "ours.tsv", rows, extra_header="\tn_used\tnote"))
    assert total_samples(res) == 1000 * (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8)
    assert res.extra["note"] == ["x"] * 8
    assert average_certified_radius(res) == pytest.approx(2.95 / 8)


def test_predict_file(tmp_path):
    p = tmp_path / "pred.tsv"
    p.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:00.5\n1\t2\t-1\t0\t0.25\n"
                 "2\t3\t4\t0\t0.25\n3\t4\t4\t1\t1\n")
    res = read_results(p)
    assert res.kind == "predict" and res.radius is None
    assert clean_accuracy(res) == 0.5
    assert abstention_rate(res) == 0.25
    assert mean_time(res) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="predict file"):
        certified_accuracy(res, 0.25)
    with pytest.raises(ValueError, match="predict file"):
        average_certified_radius(res)
    table = summary_table([res], [0.0, 0.5])
    row = table.rows[0].values
    assert row["cert_acc@0.5"] is None and row["acr"] is None and row["clean_acc"] == 0.5


# ------------------------------------------------------------------ Cohen's files


def test_cohen_timedelta_file(tmp_path):
    p = tmp_path / "noise_0.25.tsv"
    p.write_text(COHEN_TIMEDELTA)
    res = read_results(p)
    np.testing.assert_array_equal(res.idx, [0, 20, 40])
    np.testing.assert_allclose(res.radius, [0.557, 0.927, 0.0])
    np.testing.assert_allclose(res.time, [4.125342, 4.010221, 3.998317])
    np.testing.assert_array_equal(res.correct, [True, True, False])
    assert abstention_rate(res) == pytest.approx(1 / 3)
    assert certified_accuracy(res, 0.6) == pytest.approx(1 / 3)
    assert average_certified_radius(res) == pytest.approx((0.557 + 0.927) / 3)


def test_cohen_float_time_file(tmp_path):
    p = tmp_path / "cohen_float.tsv"
    p.write_text(COHEN_FLOAT)
    res = read_results(p)
    np.testing.assert_allclose(res.radius, [0.557, 1230.0, 0.213, 0.0812])
    np.testing.assert_allclose(res.time, [4.125342, 4.01, 3.99, 4.0])
    assert clean_accuracy(res) == 0.75
    assert certified_accuracy(res, 0.1) == 0.5  # 0.557 and 1230; 0.213 is wrong, 0.0812 too small


@pytest.mark.parametrize("text, seconds", [
    ("0:00:04.125342", 4.125342),
    ("0:00:04", 4.0),
    ("1:02:03.5", 3723.5),
    ("1 day, 2:03:04.5", 93784.5),
    ("2 days, 0:00:00", 172800.0),
    ("12.5", 12.5),
    ("3", 3.0),
])
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


def test_parse_time_rejects_garbage():
    with pytest.raises(ValueError, match="H:MM:SS"):
        parse_time("4 seconds")


# ------------------------------------------------------------------ lower bound


def test_lower_bound_hand_computation(tmp_path):
    m, y = 1000, 900
    rows = [(i, 0, 0, 0.5 if i < y else 0.1, 1, 1.0) for i in range(m)]
    settings = dict(SETTINGS, alpha=0.001)
    res = read_results(write_ours(tmp_path / "big.tsv", rows, settings))
    alpha, rho = 0.001, 0.01
    ln = math.log(1 / rho)
    by_hand = (y / m - alpha - math.sqrt(2 * alpha * (1 - alpha) * ln / m) - ln / (3 * m)) / (1 - alpha)
    assert by_hand == pytest.approx(0.89533, abs=1e-5)  # (0.9 - 0.001 - 0.0030333 - 0.0015351) / 0.999
    lbs = certified_accuracy_lower_bounds(res, [0.25, 0.0], rho=rho)
    assert lbs[0] == pytest.approx(by_hand, rel=1e-12)
    by_hand_all = (1.0 - alpha - math.sqrt(2 * alpha * (1 - alpha) * ln / m) - ln / (3 * m)) / (1 - alpha)
    assert lbs[1] == pytest.approx(by_hand_all, rel=1e-12)
    assert lbs[0] < certified_accuracy(res, 0.25)


def test_lower_bound_clipped_and_unknown_alpha(tmp_path):
    res = read_results(write_ours(tmp_path / "ours.tsv"))
    assert certified_accuracy_lower_bounds(res, [1.0]) == [0.0]  # 1/8 - ln(1000)/24 < 0
    (tmp_path / "c.tsv").write_text(COHEN_TIMEDELTA)
    cohen = read_results(tmp_path / "c.tsv")
    assert certified_accuracy_lower_bounds(cohen, [0.0]) is None
    assert certified_accuracy_lower_bounds(cohen, [0.0], alpha=0.001) == [0.0]


# ------------------------------------------------------------------ tables


def _two_files(tmp_path):
    a = write_ours(tmp_path / "a.tsv")
    better = [(0, 1, 1, 0.9, 1, 1.0), (1, 2, 2, 0.6, 1, 1.0), (2, 3, 3, 0.2, 1, 1.0), (3, 4, -1, 0.0, 0, 1.0)]
    b = write_ours(tmp_path / "b.tsv", better, dict(SETTINGS, model="my_net", denoiser="runs/dn_cnn/denoiser.pt"))
    return a, b


def test_legends(tmp_path):
    a, b = _two_files(tmp_path)
    (tmp_path / "cohen.tsv").write_text(COHEN_TIMEDELTA)
    results = [read_results(a), read_results(b), read_results(tmp_path / "cohen.tsv")]
    labs = legends(results)
    assert labs[0] == "lenet sigma=0.5 n=1000"
    assert labs[1] == "my_net+dn_cnn/denoiser sigma=0.5 n=1000"
    assert labs[2] == "cohen"
    same = legends([results[0], read_results(write_ours(tmp_path / "a2.tsv"))])
    assert same == ["lenet sigma=0.5 n=1000 [a.tsv]", "lenet sigma=0.5 n=1000 [a2.tsv]"]


def test_markdown_marks_best(tmp_path):
    a, b = _two_files(tmp_path)
    md = analyze_files([a, b], [0.0, 0.5, 1.0]).render("markdown")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row_a = [c.strip() for c in lines[2].strip("|").split("|")]
    row_b = [c.strip() for c in lines[3].strip("|").split("|")]
    col = {h: i for i, h in enumerate(header)}
    # a: r=0 62.5, r=0.5 37.5, r=1 12.5, ACR 0.369; b: 75.0, 50.0, 0.0, ACR 0.425
    assert row_a[col["r=0"]] == "62.5" and row_b[col["r=0"]] == "**75.0**"
    assert row_a[col["r=0.5"]] == "37.5" and row_b[col["r=0.5"]] == "**50.0**"
    assert row_a[col["r=1"]] == "**12.5**" and row_b[col["r=1"]] == "0.0"
    assert row_b[col["ACR"]] == "**0.425**" and row_a[col["ACR"]] == "0.369"
    assert row_a[col["R\\_max"]] == f"{0.5 * norm.ppf(0.001 ** (1 / 1000)):.3f}"
    assert "**" not in row_a[col["abstain"]] + row_b[col["abstain"]]  # lower is better: not marked
    assert "my\\_net+dn\\_cnn/denoiser" in row_b[0]


def test_terminal_table_star_and_alignment(tmp_path):
    a, b = _two_files(tmp_path)
    text = str(analyze_files([a, b], [0.0, 0.5]))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["file", "images", "r=0", "r=0.5"]
    assert len(lines[2]) == len(lines[3])  # aligned columns
    assert "75.0*" in lines[3] and "62.5*" not in lines[2]


def test_no_mark_when_all_equal_or_single_file(tmp_path):
    a, _ = _two_files(tmp_path)
    assert "*" not in analyze_files([a]).render("markdown").split("\n\n")[0]
    b = write_ours(tmp_path / "same.tsv")
    table = analyze_files([a, b])
    assert table.best("cert_acc@0") == set()


def test_latex_escapes_and_bold(tmp_path):
    a, b = _two_files(tmp_path)
    tex = analyze_files([a, b], [0.0, 0.5]).render("latex")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"my\_net+dn\_cnn/denoiser" in tex
    assert r"\textbf{75.0}" in tex
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    assert "_" not in body.replace(r"\_", "")  # every underscore in the rows escaped
    assert latex_escape("a_b 50% & $x#{y}") == r"a\_b 50\% \& \$x\#\{y\}"


def test_csv_parses_back_to_the_numbers(tmp_path):
    a, b = _two_files(tmp_path)
    radii = [0.0, 0.25, 0.5, 0.8]
    table = analyze_files([a, b], radii, lower_bound=True, rho=0.05)
    rows = list(csv.DictReader(io.StringIO(table.render("csv"))))
    assert [r["file"] for r in rows] == [str(a), str(b)]
    for row, path in zip(rows, [a, b]):
        res = read_results(path)
        for r, acc in zip(radii, certified_accuracy(res, radii)):
            assert float(row[f"cert_acc@{r:g}"]) == acc
        assert float(row["acr"]) == average_certified_radius(res)
        assert float(row["abstention"]) == abstention_rate(res)
        assert float(row["clean_acc"]) == clean_accuracy(res)
        assert float(row["r_max"]) == run_r_max(res)
        assert int(row["images"]) == len(res)
        assert [float(row[f"lb@{r:g}"]) for r in radii] == certified_accuracy_lower_bounds(res, radii, 0.05)
        assert "*" not in ",".join(row.values())


def test_cohen_file_table_with_cli_settings(tmp_path):
    (tmp_path / "c.tsv").write_text(COHEN_TIMEDELTA)
    table = analyze_files([tmp_path / "c.tsv"], [0.5], sigma=0.25, n=100_000, alpha=0.001)
    v = table.rows[0].values
    assert v["r_max"] == pytest.approx(0.25 * norm.ppf(0.001 ** 1e-5))
    assert v["cert_acc@0.5"] == pytest.approx(2 / 3)
    assert table.rows[0].label == "c sigma=0.25 n=100000"
    with pytest.raises(ValueError, match="unknown table format"):
        table.render("html")


# ------------------------------------------------------------------ reading edge cases and errors


def test_trailing_partial_line_skipped(tmp_path):
    p = tmp_path / "running.tsv"
    p.write_text(COHEN_TIMEDELTA + "60\t1\t1\t0.4")
    res = read_results(p)
    assert len(res) == 3 and res.skipped_partial_line == 5
    p.write_text(COHEN_TIMEDELTA + "60\t1\t1\t0.4\t1\t0:00:01.5")  # complete but unterminated: kept
    res = read_results(p)
    assert len(res) == 4 and res.skipped_partial_line is None


def test_blank_lines_and_repeated_header_and_crlf(tmp_path):
    p = tmp_path / "cat.tsv"
    p.write_text((COHEN_TIMEDELTA + "\n" + HEADER + "\n60\t1\t1\t0.4\t1\t2.0\n\n").replace("\n", "\r\n"))
    res = read_results(p)
    np.testing.assert_array_equal(res.idx, [0, 20, 40, 60])


@pytest.mark.parametrize("content, pattern", [
    ("", r"empty file, expected a header line"),
    ("0\t3\t3\t0.5\t1\t1.0\n", r"line 1: expected a header .*missing idx, label, predict, correct"),
    (HEADER + "\n0\t3\t3\t0.5\t1\t1.0\n1\t3\t3\tabc\t1\t1.0\n", r"line 3: column radius: expected a number"),
    (HEADER + "\n0\t3\t3\t0.5\t1\n1\t3\t3\t0.5\t1\t1.0\n", r"line 2: expected 6 fields .* got 5"),
    (HEADER + "\n0\t3\t3\t0.5\t2\t1.0\n", r"line 2: column correct: expected 0 or 1"),
    (HEADER + "\n0\t3\t3\t-0.5\t1\t1.0\n", r"line 2: column radius: expected a finite number >= 0"),
    (HEADER + "\n0\t3\t-2\t0.5\t1\t1.0\n", r"line 2: column predict: expected a class index"),
    (HEADER + "\n0\t3\t3\t0.5\t1\tyesterday\n", r"line 2: column time: expected seconds .* or H:MM:SS"),
    (HEADER + "\n0\t3\t3\t0.5\t1\t1.0\n0\t3\t3\t0.5\t1\t1.0\n", r"line 3: idx 0 already appeared on line 2"),
    (HEADER + "\n0\tx\t3\t0.5\t1\t1.0\n", r"line 2: column label: expected an integer"),
])
def test_malformed_files(tmp_path, content, pattern):
    p = tmp_path / "bad.tsv"
    p.write_text(content)
    with pytest.raises(ResultsFileError, match=pattern) as info:
        read_results(p)
    assert str(p) in str(info.value)


def test_bad_sidecar(tmp_path):
    p = write_ours(tmp_path / "ours.tsv")
    (tmp_path / "ours.tsv.json").write_text("{not json")
    with pytest.raises(ResultsFileError, match=r"ours\.tsv\.json: cannot read the JSON sidecar"):
        read_results(p)
    (tmp_path / "ours.tsv.json").write_text(json.dumps({"kind": "predict", "settings": {}}))
    with pytest.raises(ResultsFileError, match="sidecar says kind='predict'"):
        read_results(p)


def test_missing_file(tmp_path):
    with pytest.raises(ResultsFileError, match="no such file"):
        read_results(tmp_path / "nope.tsv")


# ------------------------------------------------------------------ plots


def test_plot_writes_valid_png_and_svg(tmp_path):
    a, b = _two_files(tmp_path)
    (tmp_path / "p.tsv").write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t1.0\n")
    results = [read_results(a), read_results(b), read_results(tmp_path / "p.tsv")]
    paths = plot_certified_accuracy(results, None, tmp_path / "plots" / "curve_sigma0.5")
    assert [p.name for p in paths] == ["curve_sigma0.5.png", "curve_sigma0.5.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(paths[1]).getroot()
    assert root.tag.endswith("svg")
    svg_text = paths[1].read_text()
    # matplotlib keeps each text as an XML comment next to its glyph paths
    assert "lenet sigma=0.5 n=1000" in svg_text and "my_net+dn_cnn/denoiser sigma=0.5 n=1000" in svg_text
    with pytest.raises(ValueError, match="at least one certify file"):
        plot_certified_accuracy([results[2]], None, tmp_path / "x")


# ------------------------------------------------------------------ CLI


def test_cli_missing_file_exit_2(tmp_path, capsys):
    from smoothguard.cli import main

    rc = main(["analyze", str(tmp_path / "missing.tsv")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "missing.tsv: no such file" in err and "analyze" in err


def test_cli_bad_radii_exit_2(tmp_path, capsys):
    from smoothguard.cli import main

    a = write_ours(tmp_path / "a.tsv")
    assert main(["analyze", str(a), "--radii", "0,-1", "--no-plot"]) == 2
    assert "--radii must be finite and >= 0" in capsys.readouterr().err


def test_cli_table_csv_and_plot(tmp_path, capsys):
    from smoothguard.cli import main

    a, b = _two_files(tmp_path)
    (tmp_path / "cohen.tsv").write_text(COHEN_TIMEDELTA)
    out_csv = tmp_path / "out" / "table.csv"
    rc = main(["analyze", str(a), str(b), str(tmp_path / "cohen.tsv"), "--radii", "0,0.5",
               "--out-table", str(out_csv), "--sigma", "0.25", "--n", "100000", "--alpha", "0.001",
               "--lower-bound", "--plot"])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.splitlines()[0].split()[:4] == ["file", "images", "r=0", "r=0.5"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [float(r["cert_acc@0.5"]) for r in rows] == pytest.approx([3 / 8, 2 / 4, 2 / 3])
    # the sidecar's sigma wins for a and b; --sigma fills in for Cohen's file
    assert float(rows[0]["r_max"]) == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 1000)))
    assert float(rows[2]["r_max"]) == pytest.approx(0.25 * norm.ppf(0.001 ** 1e-5))
    assert (tmp_path / "a_certified_accuracy.png").is_file()
    assert (tmp_path / "a_certified_accuracy.svg").is_file()

    rc = main(["analyze", str(a), "--format", "latex", "--plot", str(tmp_path / "fig"), "--no-plot"])
    assert rc == 0
    assert r"\toprule" in capsys.readouterr().out
    assert not (tmp_path / "fig.png").exists()
