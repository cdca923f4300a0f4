"""One self-contained HTML report of a run folder (``smoothguard report``).

:func:`collect` scans a folder (a ``smoothguard run`` folder with step manifests, or any
folder of result files) for

* certify / predict files (``*.tsv`` with Cohen's columns, with or without a sidecar),
* attack files (``idx label clean_pred adv_pred norm success time`` + sidecar),
* ``smoothguard evaluate`` folders (``table.json``, ``examples.png``),
* training logs (``log.tsv`` with an ``epoch`` column),
* ``smoothguard smooth-eval`` folders (``table.json`` with ``grid`` and ``rows``),
* step manifests (``manifest.json``) and the run's ``experiment.toml``,

and :func:`write_report` draws every figure (PNG + SVG next to the report) and writes one
HTML file with the PNGs embedded as base64 data URIs, inline CSS, no script and no
external reference. Sections without data are omitted with a line saying so.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import smoothguard
from smoothguard.contract import check_output_path, write_text_atomic
from smoothguard.evaluation.analysis import (
    DEFAULT_RADII,
    Results,
    ResultsFileError,
    certified_accuracy,
    _note,
    legend,
    radius_norm,
    read_results,
    summary_table,
)

from smoothguard.evaluation.formats import (
    ATTACK,
    CERTIFY,
    EVALUATE,
    PREDICT,
    SMOOTH_EVAL,
    VERIFY,
    format_of,
    read_header,
    read_rows,
    read_settings,
    read_table,
    summarize_attack,
)
#: Attack names whose rows are decisions of the smoothed classifier (plotted dashed on
#: the certified-accuracy axes when the norm is l2).
from smoothguard.attacks.registry import SMOOTHED_ATTACKS  # noqa: E402

SECTIONS = (
    ("certified", "Certified accuracy"),
    ("envelope", "Best sigma per radius"),
    ("models", "Per-model certification tables"),
    ("attacks", "Attacks"),
    ("verified", "Verified vs empirical robustness"),
    ("evaluations", "Robustness evaluations"),
    ("losses", "Restart-loss distributions"),
    ("examples", "Adversarial examples"),
    ("smoothed", "Smoothed inference"),
    ("training", "Training curves"),
    ("steps", "Steps, settings and reproducibility"),
)


@dataclass
class AttackRun:
    path: Path
    label: str
    settings: dict[str, Any]
    n: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    mean_norm_successful: float
    seconds: float

    @property
    def smoothed(self) -> bool:
        st = self.settings
        return bool(st.get("smoothed")) or str(st.get("attack", "")).lower() in SMOOTHED_ATTACKS

    @property
    def eps(self) -> float | None:
        e = self.settings.get("eps")
        return float(e) if isinstance(e, (int, float)) else None


@dataclass
class RunData:
    root: Path
    certify: list[tuple[str, Results]] = field(default_factory=list)  # (label, results)
    predict: list[tuple[str, Results]] = field(default_factory=list)
    attacks: list[AttackRun] = field(default_factory=list)
    verify: list[Path] = field(default_factory=list)  # smoothguard verify result files
    evaluations: list[tuple[str, Path, dict[str, Any]]] = field(default_factory=list)
    logs: list[tuple[str, Path, dict[str, list[float]]]] = field(default_factory=list)
    smoothed: list[tuple[str, Path, dict[str, Any]]] = field(default_factory=list)
    manifests: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    experiment_toml: str | None = None
    run_summary: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- collecting


def _step_label(path: Path, root: Path, manifests: dict[Path, dict[str, Any]]) -> str | None:
    """The step id of the manifest in ``path``'s folder or an ancestor below ``root``."""
    for d in [path.parent, *path.parent.parents]:
        if d in manifests:
            return manifests[d].get("step")
        if d == root:
            break
    return None


def _read_attack(path: Path, label: str) -> AttackRun | None:
    rows = read_rows(path, ATTACK)
    if not rows:
        return None
    s = summarize_attack(rows)
    return AttackRun(path=path, label=label, settings=read_settings(path), n=s["n"],
                     clean_accuracy=float(s["clean_accuracy"]), robust_accuracy=float(s["robust_accuracy"]),
                     success_rate=float(s["success_rate_on_correct"]),
                     mean_norm_successful=float(s["mean_norm_successful"]), seconds=float(s["total_seconds"]))


def _read_log(path: Path) -> dict[str, list[float]] | None:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    cols = lines[0].split("\t")
    data: dict[str, list[float]] = {c: [] for c in cols}
    for ln in lines[1:]:
        f = ln.split("\t")
        if len(f) != len(cols):
            continue
        for c, v in zip(cols, f):
            try:
                data[c].append(float(v))
            except ValueError:
                data[c].append(math.nan)
    return data if data.get("epoch") else None


def collect(root: str | Path) -> RunData:
    """Everything the report can show from the files under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected a run folder or a folder of result files)")
    data = RunData(root=root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifests: dict[Path, dict[str, Any]] = {}
    for p in files:
        if p.name == "manifest.json":
            try:
                m = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(m, dict) and "step" in m:
                manifests[p.parent] = m
                data.manifests.append((p, m))
    if (root / "experiment.toml").is_file():
        data.experiment_toml = (root / "experiment.toml").read_text(encoding="utf-8", errors="replace")
    try:
        data.run_summary = json.loads((root / "run.json").read_text())
    except (OSError, ValueError):
        pass

    for p in files:
        step = _step_label(p, root, manifests)
        rel = p.relative_to(root).as_posix()
        if p.suffix == ".tsv" and ".part" not in p.name:
            head = read_header(p)
            fmt = None if p.name == "log.tsv" or head[:1] == ["epoch"] else format_of(p)
            if fmt is None:
                log = _read_log(p) if p.name == "log.tsv" or head[:1] == ["epoch"] else None
                if log:
                    data.logs.append((step or rel, p, log))
            elif fmt is VERIFY:
                data.verify.append(p)
            elif fmt is ATTACK:
                a = _read_attack(p, step or rel)
                if a:
                    data.attacks.append(a)
            elif fmt in (CERTIFY, PREDICT):
                try:
                    res = read_results(p)
                except ResultsFileError as exc:
                    data.notes.append(f"skipped {rel}: {exc}")
                    continue
                if len(res) == 0:
                    data.notes.append(f"skipped {rel}: no rows yet")
                    continue
                sig = res.settings.get("sigma")
                lab = (f"{step} (sigma={sig:g})" if isinstance(sig, (int, float)) else step) if step else legend(res)
                (data.certify if res.kind == "certify" else data.predict).append((lab, res))
        elif p.name == EVALUATE.file:
            t = read_table(p)
            if t is None:
                continue
            where = step or p.parent.relative_to(root).as_posix() or "."
            fmt = format_of(p, t)
            if fmt is EVALUATE:
                data.evaluations.append((where, p.parent, t))
            elif fmt is SMOOTH_EVAL:
                data.smoothed.append((where, p.parent, t))
    _disambiguate(data, root)
    return data


def _disambiguate(data: RunData, root: Path) -> None:
    """Result files whose labels coincide (ten ``certify.tsv`` files without step manifests
    all read "certify") are named by their folder instead, so legend entries differ."""
    for group in (data.certify, data.predict):
        labels = [lab for lab, _ in group]
        for i, (lab, res) in enumerate(group):
            if labels.count(lab) > 1 and res.path is not None:
                try:
                    where = res.path.parent.relative_to(root).as_posix()
                except ValueError:
                    where = res.path.parent.name
                group[i] = (f"{where or '.'}/{res.path.name}" + (f" {lab}" if lab != res.path.stem else ""), res)


# --------------------------------------------------------------------------- HTML helpers

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;
background:#fafbfc;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.7em;margin:0 0 4px}h2{font-size:1.3em;margin-top:2.2em;border-bottom:2px solid #d0d7de;
padding-bottom:4px}h3{font-size:1.05em;margin-top:1.4em}
.meta{color:#57606a;font-size:.92em}
nav ol{columns:2;font-size:.95em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.88em;background:#fff}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f0f3f6}td.l,th.l{text-align:left}
td.best{font-weight:700;background:#e6f4ea}
img{max-width:100%;height:auto;background:#fff;border:1px solid #d0d7de;margin:6px 0}
figure{margin:8px 0 18px}figcaption{font-size:.85em;color:#57606a}
.empty{color:#8c959f;font-style:italic}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;white-space:pre-wrap}
details{margin:4px 0}summary{cursor:pointer}
.note{font-size:.85em;color:#57606a}.warn{color:#9a6700;font-weight:600}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "-"
    if isinstance(v, (int, float)):
        return format(v, fmt)
    return _e(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int | set[int] = 1,
           best: dict[tuple[int, int], bool] | None = None) -> str:
    """HTML table; cells are escaped unless given as ``("html", text)``; the first
    ``left`` columns (or the columns in the set ``left``) are left-aligned; ``best``
    marks (row, col) cells bold."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)
    out = ["<table><thead><tr>" + "".join(f'<th class="l">{_e(h)}</th>' if j in lefts else f"<th>{_e(h)}</th>"
                                          for j, h in enumerate(headers)) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cells = []
        for j, c in enumerate(row):
            cls = ["l"] if j in lefts else []
            if best and best.get((i, j)):
                cls.append("best")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            text = c[1] if isinstance(c, tuple) and len(c) == 2 and c[0] == "html" else _e(c)
            cells.append(f"<td{attr}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _figure(png: Path, caption: str) -> str:
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    svg = png.with_suffix(".svg")
    where = f"{png.parent.name}/" if png.parent.name == FIGURES_DIR else ""
    files = f"{where}{png.name}" + (f", {where}{svg.name}" if svg.exists() else "")
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)} <span class=\"note\">(files: {_e(files)})</span></figcaption></figure>")


def _empty(what: str) -> str:
    return f'<p class="empty">{_e(what)}</p>'


# --------------------------------------------------------------------------- figures


def _fig(width: float, height: float):
    from smoothguard.evaluation.attack_plots import _new_figure

    return _new_figure(width, height)


def _save(fig, stem: Path) -> Path:
    """Write STEM.png and STEM.svg (atomically); returns the PNG path."""
    from smoothguard.evaluation.attack_plots import _save as save_png_svg

    return save_png_svg(fig, stem)[0]


def _plot_training(logs: list[tuple[str, Path, dict[str, list[float]]]], stem: Path) -> Path:
    fig = _fig(10, 3.6)
    ax_l, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    styles = {"train": "-", "test": "--", "noisy_test": ":"}
    for k, (label, _, log) in enumerate(logs):
        ep = log["epoch"]
        for kind, ls in styles.items():
            for ax, metric in ((ax_l, "loss"), (ax_a, "acc")):
                col = f"{kind}_{metric}"
                if col in log and any(np.isfinite(log[col])):
                    vals = [100 * v for v in log[col]] if metric == "acc" else log[col]
                    ax.plot(ep, vals, linestyle=ls, marker="o", markersize=3, color=f"C{k % 10}",
                            label=f"{label} {kind.replace('_', ' ')}")
    ax_l.set_xlabel("epoch"); ax_l.set_ylabel("cross-entropy loss"); ax_l.set_title("loss", fontsize=10)
    ax_a.set_xlabel("epoch"); ax_a.set_ylabel("accuracy (%)"); ax_a.set_title(
        "accuracy (noisy test: Gaussian noise of the training sd)", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_a):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, stem)


def _plot_attack_curves(groups: dict[tuple, list[AttackRun]], stem: Path) -> Path:
    norms = sorted({k[2] for k in groups})
    fig = _fig(4.6 * len(norms), 3.6)
    for i, norm in enumerate(norms):
        ax = fig.add_subplot(1, len(norms), i + 1)
        for j, (key, runs) in enumerate(g for g in groups.items() if g[0][2] == norm):
            runs = sorted(runs, key=lambda r: r.eps or 0.0)
            xs = [0.0] + [r.eps for r in runs]
            ys = [100 * runs[0].clean_accuracy] + [100 * r.robust_accuracy for r in runs]
            ax.plot(xs, ys, marker="o", linestyle="--" if key[3] else "-", color=f"C{j % 10}",
                    label=f"{key[0]} {key[1]}" + (" (smoothed)" if key[3] else ""))
        ax.set_xlabel(f"eps ({norm}, pixel units)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{norm} attacks (eps 0: clean accuracy)", fontsize=10)
    fig.tight_layout()
    return _save(fig, stem)


def _smooth_eval_objects(t: dict[str, Any]):
    from smoothguard.evaluation.smoothed_inference import SmoothEvalGrid, SmoothEvalRow

    g = t["grid"]
    grid = SmoothEvalGrid(tuple(float(x) for x in g["sigmas"]), tuple(int(x) for x in g["m"]),
                          tuple(g["methods"]), tuple(g.get("attacks", ())))
    rows = [SmoothEvalRow(float(r["sigma"]), int(r["m"]), r["method"], int(r["n"]),
                          {k: (math.nan if v is None else float(v)) for k, v in r["accuracy"].items()})
            for r in t["rows"]]
    return grid, rows


def _smoothed_empirical(data: RunData) -> dict[tuple, list[tuple[float, float, float]]]:
    """(model, sigma) -> [(eps, clean acc, acc under the strongest attack)] from l2
    smooth-eval runs: the largest m with the hard (majority) vote, the closest to
    Cohen's PREDICT; 'worst' over the attacks when there are several."""
    out: dict[tuple, list[tuple[float, float, float]]] = {}
    for _, _, t in data.smoothed:
        st = t.get("settings", {})
        if st.get("norm") != "l2" or not t["grid"].get("attacks"):
            continue
        try:
            grid, rows = _smooth_eval_objects(t)
        except (KeyError, TypeError, ValueError):
            continue
        key_attack = "worst" if len(grid.attacks) > 1 else grid.attacks[0]
        method = "hard" if "hard" in grid.methods else grid.methods[0]
        for sigma in grid.sigmas:
            if sigma <= 0:
                continue
            cand = [r for r in rows if r.sigma == sigma and r.method == method and r.m == max(grid.ms)]
            if cand and key_attack in cand[0].accuracy:
                out.setdefault((st.get("model"), sigma), []).append(
                    (float(st.get("eps")), cand[0].accuracy.get("clean", math.nan), cand[0].accuracy[key_attack]))
    return out


# --------------------------------------------------------------------------- the report


def _radius_grid(certify: list[Results]) -> list[float]:
    top = max([float(r.radius.max()) for r in certify if len(r)] + [1.0])
    grid = [r for r in DEFAULT_RADII]
    x = 1.25
    while x <= top + 1e-9 and len(grid) < 12:
        grid.append(x)
        x += 0.25
    return grid


def envelope_rows(certify: list[tuple[str, Results]], radii: Sequence[float]) -> list[list[Any]]:
    """The upper envelope over the certify files: per radius the best certified accuracy,
    the file reaching it (first one on ties), its sigma and its clean accuracy."""
    rows = []
    for r in radii:
        accs = [float(certified_accuracy(res, r)) for _, res in certify]
        k = int(np.nanargmax(accs)) if not all(math.isnan(a) for a in accs) else 0
        lab, res = certify[k]
        sigma = res.settings.get("sigma")
        if not accs[k] > 0:  # nothing certified at this radius: no model to choose
            rows.append([f"{r:g}", _pct(accs[k]), "(none certifies this radius)", "-", "-"])
            continue
        rows.append([f"{r:g}", _pct(accs[k]), lab, "-" if sigma is None else f"{sigma:g}",
                     _pct(float(certified_accuracy(res, 0.0)))])
    return rows


FIGURES_DIR = "figures"


def _image_set_note(certify: list[tuple[str, Results]]) -> str:
    """A warning when the certifications compared in one table ran on different images (the
    envelope then picks between accuracies measured on different sets)."""
    sets: dict[tuple[int, ...], list[str]] = {}
    for lab, res in certify:
        sets.setdefault(tuple(sorted(int(i) for i in res.idx)), []).append(lab)
    if len(sets) <= 1:
        return ""
    groups = "; ".join(f"{len(k)} images ({'first index ' + str(k[0]) if k else 'none'}): {', '.join(v)}"
                       for k, v in sorted(sets.items(), key=lambda kv: -len(kv[0])))
    return ('<p class="note warn">Warning: these certifications ran on different image sets, so a row may compare '
            f"accuracies measured on different images: {_e(groups)}.</p>")


def write_report(root: str | Path, output: str | Path, title: str | None = None) -> dict[str, Any]:
    """Write the HTML report of the run folder ``root`` to ``output`` (every figure embedded;
    PNG and SVG copies in ``figures/`` beside it). Returns {"sections": {key: bool has
    data}, "figures": [paths]}."""
    # refuse a target that is a FIFO, device or folder before any figure is written beside it
    output = check_output_path(output, "report")
    data = collect(root)
    out_dir = output.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    # the HTML embeds every figure; the PNG/SVG copies go into a subfolder, not beside the report
    fig_dir = out_dir / FIGURES_DIR
    fig_dir.mkdir(exist_ok=True)
    figs: list[Path] = []
    parts: dict[str, str] = {}
    has: dict[str, bool] = {}
    from smoothguard.evaluation.plots import plot_certified_accuracy

    # --- certified accuracy (+ empirical dashed lines)
    # one norm per figure: the l2 certificates (Gaussian noise) are the main figure, and l1
    # certificates (uniform / Laplace noise) get figures of their own, never a shared axis
    by_norm: dict[str, list[tuple[str, Results]]] = {}
    for lab, res in data.certify:
        by_norm.setdefault(radius_norm(res), []).append((lab, res))
    main_norm = "l2" if "l2" in by_norm or not by_norm else sorted(by_norm)[0]
    certify = by_norm.pop(main_norm, [])
    smoothed_attacks: dict[tuple, list[AttackRun]] = {}
    for a in data.attacks:
        if a.smoothed and a.settings.get("norm", "l2") == "l2" and a.eps is not None:
            key = (a.settings.get("model", "?"), a.settings.get("sigma"))
            smoothed_attacks.setdefault(key, []).append(a)
    if certify:
        empirical = []
        for (model, sigma), runs in smoothed_attacks.items():
            runs = sorted(runs, key=lambda r: r.eps)
            match = next((i for i, (_, res) in enumerate(certify)
                          if res.settings.get("model") == model and res.settings.get("sigma") == sigma), None)
            name = Path(str(model)).parent.name or str(model)
            empirical.append((f"empirical under attack: {name} sigma={sigma}",
                              [0.0] + [r.eps for r in runs],
                              [runs[0].clean_accuracy] + [r.robust_accuracy for r in runs], match))
        for (model, sigma), pts in _smoothed_empirical(data).items():
            pts = sorted(pts)
            match = next((i for i, (_, res) in enumerate(certify)
                          if res.settings.get("model") == model and res.settings.get("sigma") == sigma), None)
            name = Path(str(model)).parent.name or str(model).split(":")[-1].split(".")[0]
            empirical.append((f"smoothed inference under attack: {name} sigma={sigma:g}",
                              [0.0] + [p[0] for p in pts], [pts[0][1]] + [p[2] for p in pts], match))
        paths = plot_certified_accuracy([r for _, r in certify], [lab for lab, _ in certify],
                                        fig_dir / "certified_accuracy", empirical=empirical)
        figs += paths
        note = ("" if empirical else
                "<p class=\"note\">No attack on the smoothed classifier in this run (no empirical dashed lines).</p>")
        parts["certified"] = _figure(paths[0], f"Approximate certified accuracy vs {main_norm} radius, one curve per "
                                     "certification" + ("; dashed: empirical robust accuracy of the smoothed "
                                                        "classifier under attack vs eps" if empirical else "")) + note
        has["certified"] = True
        for norm, group in sorted(by_norm.items()):
            extra = plot_certified_accuracy([r for _, r in group], [lab for lab, _ in group],
                                            fig_dir / f"certified_accuracy_{norm}")
            figs += extra
            parts["certified"] += _figure(extra[0], f"Approximate certified accuracy vs {norm} radius (certificates "
                                          f"of {', '.join(sorted({str(r.settings.get('noise')) for _, r in group}))} "
                                          "noise), one curve per certification")
        radii = _radius_grid([r for _, r in certify])
        parts["envelope"] = (
            "<p>For each radius, the certification (model and sigma) with the highest certified accuracy: the "
            "upper envelope of the curves, with the clean accuracy of the smoothed classifier chosen.</p>"
            + _image_set_note(certify)
            + _table(["radius", "best certified acc. %", "certification", "sigma", "its clean acc. %"],
                     envelope_rows(certify, radii), left={2}))
        has["envelope"] = True
    else:
        parts["certified"] = _empty("No certification results in this folder.")
        parts["envelope"] = _empty("No certification results: no best-sigma table.")
        has["certified"] = has["envelope"] = False

    # --- per-model tables (certify + predict files)
    allres = data.certify + data.predict  # every norm: each row's label names its noise and norm
    if allres:
        radii = _radius_grid([r for _, r in certify]) if certify else list(DEFAULT_RADII)
        table = summary_table([r for _, r in allres], radii, labels=[lab for lab, _ in allres])
        headers = ["file"] + [c.header for c in table.columns]
        rows, best = [], {}
        for i, row in enumerate(table.rows):
            cells = [("predict: " if allres[i][1].kind == "predict" else "") + row.label]  # no radii: not a certify row
            for j, c in enumerate(table.columns):
                v = row.values.get(c.key)
                cells.append(_pct(v) if c.unit == "percent" else _num(v, ".3f" if c.unit == "radius" else
                                                                        (".3g" if c.unit == "seconds" else ".0f")))
                if i in table.best(c.key):
                    best[(i, j + 1)] = True
            rows.append(cells)
        parts["models"] = (_table(headers, rows, best=best)
                           + "<p class=\"note\">" + _e(_note(table, False)[0].upper() + _note(table, False)[1:])
                           + "; best per column in bold.</p>")
        has["models"] = True
    else:
        parts["models"] = _empty("No certify or predict results in this folder.")
        has["models"] = False

    # --- attacks
    if data.attacks:
        rows = []
        for a in data.attacks:
            st = a.settings
            rows.append([a.label, Path(str(st.get("model", "?"))).parent.name or st.get("model", "?"),
                         st.get("attack", "?") + (" (smoothed)" if a.smoothed else ""), st.get("norm", "?"),
                         _num(a.eps, "g"), st.get("steps") or "-", st.get("restarts") or "-", a.n,
                         _pct(a.clean_accuracy), _pct(a.robust_accuracy), _pct(a.success_rate),
                         _num(a.mean_norm_successful, ".4f"), _num(a.seconds, ".1f")])
        groups: dict[tuple, list[AttackRun]] = {}
        for a in data.attacks:
            if a.eps is not None:
                key = (Path(str(a.settings.get("model", "?"))).parent.name or "model", a.settings.get("attack", "?"),
                       a.settings.get("norm", "?"), a.smoothed)
                groups.setdefault(key, []).append(a)
        body = _table(["step", "model", "attack", "norm", "eps", "steps", "restarts", "images", "clean %",
                       "robust %", "success % (on correct)", "mean norm (fooled)", "time (s)"], rows, left=3)
        if groups:
            p = _plot_attack_curves(groups, fig_dir / "attack_accuracy_vs_eps")
            figs += [p, p.with_suffix(".svg")]
            body += _figure(p, "Robust accuracy vs eps of the attack runs (one point per attack step; eps 0 is the "
                               "clean accuracy)")
        parts["attacks"] = body
        has["attacks"] = True
    else:
        parts["attacks"] = _empty("No attack results (smoothguard attack) in this folder.")
        has["attacks"] = False

    # --- verified accuracy (smoothguard verify) beside the attacks' robust accuracy
    if data.verify:
        from smoothguard.evaluation.verified import plot_sandwich, read_runs, sandwich_table

        runs = read_runs(data.verify + [a.path for a in data.attacks if not a.smoothed])
        header, srows = sandwich_table(runs)
        body = _table(header, [[_pct(v) if 4 <= i < len(header) - 1 else (v if v is not None else "-")
                                for i, v in enumerate(r)] for r in srows], left=2)
        p = plot_sandwich(runs, fig_dir / "verified_vs_attacks")[0]
        figs += [p, p.with_suffix(".svg")]
        body += _figure(p, "Verified accuracy (solid; IBP/CROWN bounds, a proof) and robust accuracy under "
                           "attack (dashed; an upper bound on the true robust accuracy) vs eps")
        parts["verified"] = body
        has["verified"] = True
    else:
        parts["verified"] = _empty("No verification results (smoothguard verify) in this folder.")
        has["verified"] = False

    # --- evaluations, losses, examples
    ev_parts, loss_parts, ex_parts = [], [], []
    from smoothguard.evaluation.attack_plots import plot_accuracy_vs_eps, plot_restart_losses
    from smoothguard.evaluation.robustness import EpsCurve

    for k, (label, folder, t) in enumerate(data.evaluations):
        ev, st = t.get("evaluation", {}), t.get("settings", {})
        slug = f"eval{k + 1}"
        rows = [[r.get("attack", ""), r.get("kind", ""), r.get("attacked", ""), r.get("fooled", ""),
                 _num(r.get("accuracy_pct"), ".1f"), _num(r.get("alone_pct"), ".1f"), _num(r.get("mean_norm"), ".4f"),
                 _num(r.get("seconds"), ".1f")] for r in ev.get("table", [])]
        html_ = (f"<h3>{_e(label)}: {_e(st.get('model', ''))}, {_e(ev.get('norm'))} eps = {_e(ev.get('eps'))}, "
                 f"{_e(ev.get('n'))} images</h3>"
                 + _table(["attack", "kind", "points attacked", "newly fooled", "robust acc. % (running worst case)",
                           "acc. % (attack alone)", "mean norm", "time (s)"], rows, left=2))
        for w in ev.get("warnings", []):
            html_ += f'<p class="note">warning: {_e(w)}</p>'
        curves = [EpsCurve(**{k2: c[k2] for k2 in ("norm", "eps", "accuracy", "attacks", "n")})
                  for c in t.get("curves", [])]
        if curves:
            paths = plot_accuracy_vs_eps(curves, fig_dir / f"{slug}_accuracy_vs_eps",
                                         marks=[(ev.get("norm"), ev.get("eps"), ev.get("robust_accuracy"),
                                                 "full evaluation (worst case)")])
            figs += paths
            html_ += _figure(paths[0], f"{label}: robust accuracy vs eps (PGD then APGD-DLR at each eps)")
        ev_parts.append(html_)
        rl = t.get("restart_losses")
        if rl and rl.get("losses"):
            pooled = rl.get("pooled")  # NaN (skipped restarts) was stored as null
            paths = plot_restart_losses(np.array(rl["losses"], dtype=float), fig_dir / f"{slug}_restart_losses",
                                        labels=[f"idx {i}" for i in rl.get("idx", [])],
                                        pooled=None if pooled is None else np.array(
                                            [np.nan if v is None else v for v in pooled], dtype=float))
            figs += paths
            loss_parts.append(_figure(paths[0], f"{label}: final PGD loss over random restarts per example "
                                               "(Madry et al. 2018, Figure 2)"))
        ex = folder / "examples.png"
        if ex.is_file():
            target = fig_dir / f"{slug}_examples.png"
            if ex.resolve() != target.resolve():
                shutil.copyfile(ex, target)
                if ex.with_suffix(".svg").is_file():
                    shutil.copyfile(ex.with_suffix(".svg"), target.with_suffix(".svg"))
            figs.append(target)
            ex_parts.append(_figure(target, f"{label}: clean image / perturbation / adversarial image"))
    parts["evaluations"] = "\n".join(ev_parts) or _empty("No robustness evaluation (smoothguard evaluate) in this "
                                                         "folder.")
    parts["losses"] = "\n".join(loss_parts) or _empty("No restart-loss data (evaluate with --loss-restarts > 0).")
    parts["examples"] = "\n".join(ex_parts) or _empty("No adversarial-example grid (evaluate's examples.png).")
    has["evaluations"], has["losses"], has["examples"] = bool(ev_parts), bool(loss_parts), bool(ex_parts)

    # --- smoothed inference (smooth-eval)
    sm_parts = []
    for k, (label, folder, t) in enumerate(data.smoothed):
        try:
            grid, rows_ = _smooth_eval_objects(t)
        except (KeyError, TypeError, ValueError) as exc:
            data.notes.append(f"skipped smooth-eval results in {folder}: {exc}")
            continue
        from smoothguard.evaluation.smoothed_inference import plot_accuracy_vs

        st = t.get("settings", {})
        head = (f"<h3>{_e(label)}: {_e(st.get('model', ''))}, {_e(st.get('norm'))} eps = {_e(st.get('eps'))}, "
                f"{_e(rows_[0].n if rows_ else 0)} images</h3>")
        keys = list(rows_[0].accuracy) if rows_ else []
        table_rows = [[r.sigma, r.m, r.method] + [_pct(r.accuracy.get(kk)) for kk in keys] for r in rows_]
        html_ = head + _table(["sigma", "m", "vote"] + [f"{kk} %" for kk in keys], table_rows, left=0)
        for note in t.get("notes", []):
            html_ += f'<p class="note">{_e(note)}</p>'
        if rows_:
            for xname in ("m", "sigma"):
                if len(grid.ms if xname == "m" else grid.sigmas) < 2:
                    continue
                paths = plot_accuracy_vs(rows_, grid, xname, fig_dir / f"smooth{k + 1}_accuracy_vs_{xname}",
                                         title=f"{label}: accuracy vs {xname}")
                figs += paths
                html_ += _figure(paths[0], f"{label}: smoothed-inference accuracy vs {xname}")
        sm_parts.append(html_)
    parts["smoothed"] = "\n".join(sm_parts) or _empty("No smoothed-inference results (smooth-eval) in this folder.")
    has["smoothed"] = bool(sm_parts)

    # --- training
    if data.logs:
        p = _plot_training(data.logs, fig_dir / "training_curves")
        figs += [p, p.with_suffix(".svg")]
        rows = []
        for lab, _, log in data.logs:
            last = {k: v[-1] for k, v in log.items() if v}
            rows.append([lab, int(last.get("epoch", 0)), _pct(last.get("train_acc")), _pct(last.get("test_acc")),
                         _pct(last.get("noisy_test_acc")), _num(last.get("noise_sd"), "g"),
                         _num(sum(x for x in log.get("seconds", []) if math.isfinite(x)), ".1f")])
        parts["training"] = _figure(p, "Training curves from the logs (solid: train, dashed: test, dotted: noisy "
                                       "test)") + _table(
            ["run", "epochs", "train acc. %", "test acc. %", "noisy test acc. %", "noise sd", "time (s)"], rows)
        has["training"] = True
    else:
        parts["training"] = _empty("No training logs (log.tsv) in this folder.")
        has["training"] = False

    # --- steps
    parts["steps"], has["steps"] = _steps_section(data)

    # --- assemble
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = title or (data.run_summary or {}).get("experiment") or data.root.resolve().name
    nav = "".join(f'<li><a href="#{k}">{_e(t)}</a>{"" if has.get(k) else " <span class=note>(no data)</span>"}</li>'
                  for k, t in SECTIONS)
    body = "".join(f'<section id="{k}"><h2>{_e(t)}</h2>\n{parts[k]}</section>\n' for k, t in SECTIONS)
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.notes)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)} - smoothguard report</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"meta\">smoothguard {smoothguard.__version__} report of "
        f"<code>{_e(data.root)}</code>, generated {now}. All eps, sigma and radii in [0,1] pixel units; "
        "abstentions count as wrong.</p>"
        f"<nav><ol>{nav}</ol></nav>{body}"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "") + "</main></body></html>\n")
    write_text_atomic(output, page, "report")
    return {"sections": has, "figures": [str(f) for f in figs]}


def _steps_section(data: RunData) -> tuple[str, bool]:
    out = []
    if data.manifests:
        rows = []
        for _, m in sorted(data.manifests, key=lambda pm: pm[1].get("started", "")):
            rows.append([m.get("step"), m.get("status"), _num(m.get("wall_s_total"), ".1f"),
                         len(m.get("attempts", [])), m.get("seed", "-") if m.get("seed") is not None else "-",
                         m.get("device", "-"), m.get("threads", "-"), m.get("smoothguard_version", "-"),
                         m.get("started", "-")])
            if m.get("command") == "report" and m.get("status") == "running":
                rows[-1][1] = "running (this report)"
        out.append(_table(["step", "status", "wall (s)", "attempts", "seed", "device", "threads", "version",
                           "started (UTC)"], rows, left=2))
        cmds = "\n".join(f"# {m.get('step')}\n{m.get('command_line', '')}"
                          for _, m in sorted(data.manifests, key=lambda pm: pm[1].get("started", "")))
        cwd = next((m.get("cwd") for _, m in data.manifests if m.get("cwd")), None)
        out.append("<h3>Command lines</h3><p>Each step as a plain command"
                   + (f" (run from <code>{_e(cwd)}</code>)" if cwd else "") + f":</p><pre>{_e(cmds)}</pre>")
        if data.run_summary:
            out.append(f"<p class=\"note\">Last <code>smoothguard run</code>: finished {_e(data.run_summary.get('finished'))}"
                       f", wall time {_num(data.run_summary.get('wall_s'), '.1f')} s, exit code "
                       f"{_e(data.run_summary.get('exit_code'))}.</p>")
        for _, m in data.manifests:
            extra = {k: m.get(k) for k in ("options", "settings_hash", "inputs", "torch_version", "python_version",
                                           "platform", "cwd", "attempts")}
            out.append(f"<details><summary>{_e(m.get('step'))}: settings</summary><pre>"
                       f"{_e(json.dumps(extra, indent=2, sort_keys=True, default=str))}</pre></details>")
    else:
        # a plain folder: the settings stored in the sidecars
        rows = []
        for lab, res in data.certify + data.predict:
            st = res.settings
            rows.append([res.path.relative_to(data.root).as_posix() if res.path else lab, res.kind,
                         st.get("seed", "-"), (res.sidecar or {}).get("smoothguard_version", "-"),
                         ("html", f"<code>{_e(json.dumps(st, sort_keys=True, default=str))}</code>") if st else "-"])
        for a in data.attacks:
            rows.append([a.path.relative_to(data.root).as_posix(), "attack", a.settings.get("seed", "-"), "-",
                         ("html", f"<code>{_e(a.settings.get('command', ''))}</code>")])
        for lab, folder, t in data.evaluations:
            rows.append([lab, "evaluate", t.get("settings", {}).get("seed", "-"), "-",
                         ("html", f"<code>{_e(t.get('settings', {}).get('command', ''))}</code>")])
        if rows:
            out.append("<p>No step manifests (not a <code>smoothguard run</code> folder): settings from the result "
                       "files' sidecars.</p>" + _table(["file", "kind", "seed", "version", "settings / command"], rows,
                                                       left={0, 1, 4}))
    if data.experiment_toml:
        out.append(f"<h3>experiment.toml</h3><pre>{_e(data.experiment_toml)}</pre>")
    if not out:
        return _empty("No manifests or settings in this folder."), False
    return "\n".join(out), True
