"""``smoothguard report``: one self-contained HTML file with every section and its images,
from a run folder or from a plain folder of result files."""

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report_helpers import run_tiny_experiment
from smoothguard.cli import main
from smoothguard.evaluation.analysis import Results
from smoothguard.evaluation.report import SECTIONS, envelope_rows


class _Page(HTMLParser):
    """Sections (by id) with their images and tables; every src/href; tags seen."""

    def __init__(self):
        super().__init__()
        self.section = None
        self.sections = {}
        self.refs = []
        self.tags = set()
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.section = a.get("id")
            self.sections[self.section] = {"img": [], "table": 0, "empty": False}
        for key in ("src", "href"):
            if key in a:
                self.refs.append(a[key])
        if self.section is None:
            return
        if tag == "img":
            self.sections[self.section]["img"].append(a["src"])
        elif tag == "table":
            self.sections[self.section]["table"] += 1
        elif tag == "p" and a.get("class") == "empty":
            self.sections[self.section]["empty"] = True

    def handle_endtag(self, tag):
        if tag == "section":
            self.section = None


def _parse(path):
    page = _Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def _decode_png(src):
    assert src.startswith("data:image/png;base64,"), src[:60]
    raw = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(raw))
    im.load()
    assert im.size[0] > 100 and im.size[1] > 100
    # not a blank canvas: a plot has ink
    arr = np.asarray(im.convert("L"))
    assert arr.std() > 5
    return im


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    # shared with test_report_browser.py: a second run of the same experiment skips every step
    return run_tiny_experiment(tmp_path_factory.getbasetemp() / "tiny-shared")


def test_report_of_a_run_has_every_section_with_its_images(tiny_run):
    html_path = tiny_run / "report" / "report.html"
    assert html_path.is_file()
    page = _parse(html_path)
    assert [k for k, _ in SECTIONS] == list(page.sections)
    with_images = ["certified", "attacks", "evaluations", "losses", "examples", "smoothed", "training"]
    for key in with_images:
        assert page.sections[key]["img"], f"section {key} has no image"
        assert not page.sections[key]["empty"], key
    for key in ("envelope", "models", "steps"):
        assert page.sections[key]["table"] >= 1 and not page.sections[key]["empty"], key
    for src in [s for sec in page.sections.values() for s in sec["img"]]:
        _decode_png(src)


def test_report_is_self_contained(tiny_run):
    text = (tiny_run / "report" / "report.html").read_text(encoding="utf-8")
    page = _parse(tiny_run / "report" / "report.html")
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    for ref in page.refs:
        assert ref.startswith(("data:image/png;base64,", "#")), ref[:80]
    assert "http://" not in text and "https://" not in text
    assert "url(" not in text and "@import" not in text


def test_figures_are_written_as_png_and_svg_in_a_subfolder_of_the_report(tiny_run):
    assert not list((tiny_run / "report").glob("*.png"))  # only report.html (and its manifest) beside it
    folder = tiny_run / "report" / "figures"
    pngs = sorted(p.stem for p in folder.glob("*.png"))
    assert {"certified_accuracy", "attack_accuracy_vs_eps", "training_curves"} <= set(pngs)
    for stem in pngs:
        svg = folder / f"{stem}.svg"
        assert svg.is_file() and svg.read_text().lstrip().startswith(("<?xml", "<svg")), stem


def test_report_tables_hold_the_run_numbers(tiny_run):
    text = (tiny_run / "report" / "report.html").read_text(encoding="utf-8")
    # every step's command line and manifest settings (a reader can rerun it)
    for step in ("train.tiny", "certify.s025", "certify.s050", "attack.l2_05", "evaluate.tiny", "smooth-eval.l2"):
        m = json.loads((tiny_run / step.replace(".", "/", 1) / "manifest.json").read_text())
        assert m["command_line"].replace("'", "&#x27;") in text, step
    # the empirical (smoothed, l2) dashed lines are on the certified plot
    assert "dashed: empirical robust accuracy of the smoothed classifier" in text
    # the clean accuracy of each certification appears in its row of the per-model table
    from smoothguard.evaluation.analysis import clean_accuracy, read_results

    res = read_results(tiny_run / "certify/s025/certify.tsv")
    assert f"{100 * clean_accuracy(res):.1f}" in text


def _results(radius, correct, sigma, path="x.tsv"):
    radius = np.asarray(radius, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    n = len(radius)
    return Results(kind="certify", idx=np.arange(n), label=np.zeros(n, int),
                   predict=np.where(radius > 0, 0, -1), correct=correct & (radius > 0), radius=radius,
                   settings={"sigma": sigma}, path=Path(path))


def test_envelope_picks_the_best_certification_per_radius():
    # small sigma: 3/4 certified up to 0.3; large sigma: 2/4 certified up to 0.9, 1/4 at 1.2
    small = _results([0.3, 0.3, 0.3, 0.0], [1, 1, 1, 0], 0.25)
    large = _results([0.9, 0.9, 1.2, 0.0], [1, 1, 1, 0], 0.5)
    rows = envelope_rows([("small", small), ("large", large)], [0.0, 0.25, 0.5, 1.0, 1.5])
    assert [r[2] for r in rows] == ["small", "small", "large", "large", "(none certifies this radius)"]
    assert [r[1] for r in rows] == ["75.0", "75.0", "75.0", "25.0", "0.0"]
    assert rows[2][3] == "0.5" and rows[2][4] == "75.0"  # the chosen model's sigma and clean accuracy


def test_report_of_a_plain_folder_without_manifests(tiny_run, tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    for src in ("certify/s025/certify.tsv", "certify/s025/certify.tsv.json", "attack/l2_05/attack.tsv",
                "attack/l2_05/attack.tsv.json"):
        shutil.copy(tiny_run / src, folder / src.replace("/", "_"))
    # Cohen et al.'s own format: no sidecar, timedelta times
    (folder / "cohen.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                                      "0\t3\t3\t0.512\t1\t0:00:01.5\n20\t1\t-1\t0.0\t0\t0:00:01.2\n")
    out = tmp_path / "out" / "r.html"
    assert main(["report", str(folder), "-o", str(out)]) == 0
    page = _parse(out)
    assert page.sections["certified"]["img"] and page.sections["attacks"]["img"]
    for key in ("evaluations", "losses", "examples", "smoothed", "training"):
        assert page.sections[key]["empty"] and not page.sections[key]["img"], key
    text = out.read_text()
    assert "No step manifests" in text and "cohen" in text
    assert "sections without data" in capsys.readouterr().err


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no such folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "-o", str(tmp_path / "r.html")]) == 0
    page = _parse(tmp_path / "r.html")
    assert all(sec["empty"] for sec in page.sections.values())
