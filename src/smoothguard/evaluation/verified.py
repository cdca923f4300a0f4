"""Verified accuracy beside empirical robust accuracy: the robustness sandwich.

For one model, threat model (norm) and eps, on the same images,

    verified accuracy (IBP <= CROWN)  <=  accuracy under the best attack  <=  clean accuracy,

because a verified image is one no perturbation can flip and an attack only tries some.
This module reads ``smoothguard verify`` and ``smoothguard attack`` result files (with
their sidecars), groups them by model and norm, and lays them out eps by eps for
``smoothguard analyze`` (a table) and ``smoothguard report`` (a table and a plot). A
verified accuracy above an attack's robust accuracy on the same images would mean an
unsound bound or a broken attack; such rows are flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from smoothguard.evaluation.resultfile import read_complete_rows

from smoothguard.evaluation.formats import ATTACK_COLUMNS, VERIFY_COLUMNS, read_header  # declared once there


@dataclass
class AccuracyRun:
    """One verify or attack result file, summarized."""

    path: Path
    kind: str  # "verify" or "attack"
    method: str  # verification method or attack name
    model: str
    norm: str
    eps: float | None
    n: int
    clean_accuracy: float
    accuracy: float  # verified accuracy, or robust accuracy under the attack
    idx: frozenset = field(default_factory=frozenset)


def read_run(path: str | Path) -> AccuracyRun | None:
    """Summarize a verify or attack result file (None when it has no complete row)."""
    path = Path(path)
    head = tuple(read_header(path))
    if head not in (VERIFY_COLUMNS, ATTACK_COLUMNS):
        raise ValueError(f"{path}: not a verify or attack result file (header {list(head)})")
    # the one reader of result rows: complete, numeric, unique rows, in file order
    rows = list(read_complete_rows(path, head)[0].values())
    if not rows:
        return None
    try:
        st: dict[str, Any] = dict(json.loads(Path(str(path) + ".json").read_text()).get("settings") or {})
    except (OSError, ValueError):
        st = {}
    labels = [int(r[1]) for r in rows]
    clean = sum(int(r[2]) == lab for r, lab in zip(rows, labels)) / len(rows)
    if head == VERIFY_COLUMNS:
        kind, method = "verify", str(st.get("method", "?"))
        acc = sum(int(r[3]) for r in rows) / len(rows)
    else:
        kind, method = "attack", str(st.get("attack", "?"))
        acc = sum(int(r[3]) == lab for r, lab in zip(rows, labels)) / len(rows)
    eps = st.get("eps")
    model = str(st.get("model_sha256") or st.get("model") or "?")
    return AccuracyRun(path, kind, method, model, str(st.get("norm", "?")),
                       float(eps) if isinstance(eps, (int, float)) else None, len(rows), clean, acc,
                       frozenset(int(r[0]) for r in rows))


def _model_name(runs: Sequence[AccuracyRun], model: str) -> str:
    for r in runs:
        if r.model == model:
            try:
                st = json.loads(Path(str(r.path) + ".json").read_text()).get("settings") or {}
                name = str(st.get("model", model))
                return Path(name).parent.name or name
            except (OSError, ValueError):
                pass
    return model[:12]


def sandwich_table(runs: Sequence[AccuracyRun]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per (model, norm, eps) with clean accuracy, the verified
    accuracy of every method and the robust accuracy under every attack (fractions;
    None where a run is missing), and a ``check`` column: ``ok``, or ``VIOLATED`` where a
    verified accuracy exceeds an attack's robust accuracy on the same images."""
    runs = [r for r in runs if r.eps is not None]
    methods = sorted({r.method for r in runs if r.kind == "verify"})
    attacks = sorted({r.method for r in runs if r.kind == "attack"})
    header = (["model", "norm", "eps", "images", "clean"] + [f"verified ({m})" for m in methods]
              + [f"{a} (attack)" for a in attacks] + ["check"])
    keys = sorted({(r.model, r.norm, r.eps) for r in runs}, key=lambda k: (k[0], k[1], k[2]))
    rows = []
    for model, norm, eps in keys:
        group = [r for r in runs if (r.model, r.norm, r.eps) == (model, norm, eps)]
        ver = {r.method: r for r in group if r.kind == "verify"}
        atk = {r.method: r for r in group if r.kind == "attack"}
        ok = all(v.accuracy <= a.accuracy + 1e-12 for v in ver.values() for a in atk.values() if v.idx == a.idx)
        rows.append([_model_name(group, model), norm, eps, max(r.n for r in group), group[0].clean_accuracy]
                    + [ver[m].accuracy if m in ver else None for m in methods]
                    + [atk[a].accuracy if a in atk else None for a in attacks]
                    + ["ok" if ok else "VIOLATED"])
    return header, rows


def format_sandwich(runs: Sequence[AccuracyRun], fmt: str = "table") -> str:
    """The sandwich table as text (``table``), ``markdown`` or ``csv``; accuracies in %."""
    header, rows = sandwich_table(runs)

    def cell(v: Any, i: int) -> str:
        if v is None:
            return "-"
        if isinstance(v, float) and i >= 4 and header[i] != "check":
            return f"{100 * v:.1f}" if fmt != "csv" else repr(v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    cells = [[cell(v, i) for i, v in enumerate(r)] for r in rows]
    if fmt == "csv":
        return "\n".join(",".join(r) for r in [header] + cells) + "\n"
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *cells)]
    return "\n".join("  ".join(str(x).rjust(w) for x, w in zip(r, widths)) for r in [header] + cells) + "\n"


def plot_sandwich(runs: Sequence[AccuracyRun], stem: str | Path) -> list[Path]:
    """Accuracy vs eps, one panel per (model, norm): verified accuracy per method (solid)
    and robust accuracy per attack (dashed). Writes STEM.png and STEM.svg."""
    from smoothguard.evaluation.attack_plots import _new_figure, _save

    runs = [r for r in runs if r.eps is not None]
    panels = sorted({(r.model, r.norm) for r in runs})
    fig = _new_figure(4.2 * max(1, len(panels)), 3.3)
    for k, (model, norm) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        group = [r for r in runs if (r.model, r.norm) == (model, norm)]
        for kind, style in (("verify", "-"), ("attack", "--")):
            for method in sorted({r.method for r in group if r.kind == kind}):
                pts = sorted((r.eps, 100 * r.accuracy) for r in group if r.kind == kind and r.method == method)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3,
                        label=f"verified ({method})" if kind == "verify" else f"{method} (attack)")
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(_model_name(group, model), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, stem)


def read_runs(paths: Sequence[str | Path]) -> list[AccuracyRun]:
    out = []
    for p in paths:
        r = read_run(p)
        if r is not None:
            out.append(r)
    return out
