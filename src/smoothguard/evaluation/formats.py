"""Every result format, declared once: its columns, the file a run step writes, how a
file is recognized, its reader, its summary and when a step folder holding it is
complete.

=============  ================================  ============================================
format         file (columns / content)           reader -> summary
=============  ================================  ============================================
certify        ``certify.tsv``: CERTIFY_COLUMNS   :func:`smoothguard.evaluation.analysis.read_results`
               (adaptive: ADAPTIVE_CERTIFY_...)   -> ``summary_table``
predict        ``predict.tsv``: PREDICT_COLUMNS   the same
attack         ``attack.tsv``: ATTACK_COLUMNS     :func:`read_rows` -> :func:`summarize_attack`
verify         ``verify.tsv``: VERIFY_COLUMNS     :func:`read_rows` -> ``verified.read_run``
evaluate       ``table.json`` with "evaluation"   :func:`read_table` (``smoothguard evaluate``)
smooth-eval    ``table.json`` with grid and rows  :func:`read_table` (``smoothguard smooth-eval``)
=============  ================================  ============================================

The TSV formats are written row by row by :class:`~smoothguard.evaluation.resultfile.ResultWriter`
(``idx`` first, a JSON sidecar ``FILE.tsv.json`` with the settings) and read through
:func:`~smoothguard.evaluation.resultfile.read_complete_rows` (complete, numeric, unique
rows). ``smoothguard run`` takes a step as complete when its folder holds the format's
``complete`` files (:func:`is_complete`); ``smoothguard report`` and ``analyze`` sort the
files they are given with :func:`format_of`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from smoothguard.evaluation.resultfile import read_complete_rows, sidecar_path

CERTIFY_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time")
ADAPTIVE_CERTIFY_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "n_used", "time")
PREDICT_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "correct", "time")
ADAPTIVE_PREDICT_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "correct", "n_used", "time")
ATTACK_COLUMNS: tuple[str, ...] = ("idx", "label", "clean_pred", "adv_pred", "norm", "success", "time")
VERIFY_COLUMNS: tuple[str, ...] = ("idx", "label", "clean_pred", "verified", "margin_lb", "time")


@dataclass(frozen=True)
class ResultFormat:
    """One result format.

    ``kind``: the command that writes it (also the sidecar's ``kind``); ``file``: the name
    a ``smoothguard run`` step gives it; ``columns``: the TSV header (``()`` for a JSON
    table), ``variants``: further headers of the same kind (adaptive runs add ``n_used``);
    ``required``: the columns a reader needs (Cohen's own files may lack ``time``);
    ``complete``: the files a finished step folder holds."""

    kind: str
    file: str
    columns: tuple[str, ...] = ()
    variants: tuple[tuple[str, ...], ...] = ()
    required: tuple[str, ...] = ()
    complete: tuple[str, ...] = ()

    @property
    def headers(self) -> tuple[tuple[str, ...], ...]:
        return (self.columns,) + self.variants if self.columns else ()

    def matches_header(self, header: Sequence[str]) -> bool:
        """Whether a TSV header belongs to this format (exactly one of its headers, or, for
        formats that declare ``required`` columns, a header holding them all)."""
        header = tuple(header)
        if header in self.headers:
            return True
        return bool(self.required) and set(self.required) <= set(header)


CERTIFY = ResultFormat("certify", "certify.tsv", CERTIFY_COLUMNS, (ADAPTIVE_CERTIFY_COLUMNS,),
                       required=("idx", "label", "predict", "radius", "correct"), complete=("certify.tsv",))
PREDICT = ResultFormat("predict", "predict.tsv", PREDICT_COLUMNS, (ADAPTIVE_PREDICT_COLUMNS,),
                       required=("idx", "label", "predict", "correct"), complete=("predict.tsv",))
ATTACK = ResultFormat("attack", "attack.tsv", ATTACK_COLUMNS, complete=("attack.tsv",))
VERIFY = ResultFormat("verify", "verify.tsv", VERIFY_COLUMNS, complete=("verify.tsv",))
EVALUATE = ResultFormat("evaluate", "table.json", complete=("table.json",))
SMOOTH_EVAL = ResultFormat("smooth-eval", "table.json", complete=("table.json",))

#: kind -> format; the order is the order in which :func:`format_of` tries TSV headers
#: (exact formats before the certify / predict formats that accept extra columns).
FORMATS: dict[str, ResultFormat] = {f.kind: f for f in (ATTACK, VERIFY, CERTIFY, PREDICT, EVALUATE, SMOOTH_EVAL)}


def get_format(kind: str) -> ResultFormat:
    if kind not in FORMATS:
        raise ValueError(f"unknown result format {kind!r}; allowed: {', '.join(FORMATS)}")
    return FORMATS[kind]


# --------------------------------------------------------------------------- recognizing


def read_header(path: str | Path) -> list[str]:
    """The first line of a TSV file split into column names ([] when unreadable)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            line = fh.readline()
    except (OSError, UnicodeDecodeError):
        return []
    return [c.strip() for c in (line.split("\t") if "\t" in line else line.split())]


def is_evaluate_table(table: Any) -> bool:
    """``smoothguard evaluate``'s table.json: a dict with an ``evaluation`` entry."""
    return isinstance(table, dict) and "evaluation" in table


def is_smooth_eval_table(table: Any) -> bool:
    """``smoothguard smooth-eval``'s table.json: {"settings", "grid": {sigmas, m, methods,
    attacks}, "rows": [{sigma, m, method, n, accuracy: {clean, ATTACK..., worst}}]}."""
    return (isinstance(table, dict) and isinstance(table.get("grid"), dict) and isinstance(table.get("rows"), list)
            and {"sigmas", "m", "methods"} <= set(table["grid"]))


def read_table(path: str | Path) -> dict[str, Any] | None:
    """A JSON table (evaluate, smooth-eval), or None when the file is not readable JSON."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) else None


def format_of(path: str | Path, table: Any = None) -> ResultFormat | None:
    """The format of a result file, from its TSV header or its JSON content (None: not a
    result file; training logs ``log.tsv`` are not result files)."""
    path = Path(path)
    if path.suffix == ".json" and not path.name.endswith(".tsv.json"):
        table = read_table(path) if table is None else table
        if is_evaluate_table(table):
            return EVALUATE
        if is_smooth_eval_table(table):
            return SMOOTH_EVAL
        return None
    if path.suffix != ".tsv":
        return None
    header = read_header(path)
    for fmt in FORMATS.values():
        if fmt.columns and fmt.matches_header(header):
            return fmt
    return None


def is_complete(fmt: ResultFormat, folder: str | Path) -> bool:
    """A step folder is complete for ``fmt`` when it holds every one of its ``complete`` files."""
    return all((Path(folder) / f).exists() for f in fmt.complete)


# --------------------------------------------------------------------------- reading


def read_settings(path: str | Path) -> dict[str, Any]:
    """The ``settings`` of a result file's sidecar ({} when there is none or it is unreadable)."""
    try:
        side = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return dict(side.get("settings") or {}) if isinstance(side, dict) else {}


def read_rows(path: str | Path, fmt: ResultFormat | None = None) -> list[list[str]]:
    """The complete rows of a TSV result file in file order (the one row reader:
    :func:`~smoothguard.evaluation.resultfile.read_complete_rows`)."""
    header = tuple(read_header(path))
    fmt = fmt or format_of(path)
    if fmt is None or header not in fmt.headers:
        raise ValueError(f"{path}: header {list(header)} is not a {fmt.kind if fmt else 'known'} result file's "
                         f"(expected {' or '.join(chr(9).join(h) for h in (fmt.headers if fmt else ()))})")
    return list(read_complete_rows(path, header)[0].values())


def summarize_attack(rows: Sequence[Sequence[str]], eps: float | None = None) -> dict[str, Any]:
    """Clean / robust accuracy and perturbation norms over the rows of an attack file
    (``success``: the adversarial point is misclassified; a clean misclassification counts
    as a success; the success rate is over the correctly classified images)."""
    n = len(rows)
    labels = [int(r[1]) for r in rows]
    clean = [int(r[2]) for r in rows]
    adv = [int(r[3]) for r in rows]
    norms = [float(r[4]) for r in rows]
    correct = [c == lab for c, lab in zip(clean, labels)]
    fooled = [ok and a != lab for ok, a, lab in zip(correct, adv, labels)]
    fooled_norms = [v for v, f in zip(norms, fooled) if f]
    n_correct = sum(correct)
    return {
        "n": n,
        "clean_accuracy": sum(correct) / n if n else math.nan,
        "robust_accuracy": sum(a == lab for a, lab in zip(adv, labels)) / n if n else math.nan,
        "success_rate_on_correct": sum(fooled) / n_correct if n_correct else math.nan,
        "mean_norm_successful": sum(fooled_norms) / len(fooled_norms) if fooled_norms else math.nan,
        "median_norm_successful": sorted(fooled_norms)[len(fooled_norms) // 2] if fooled_norms else math.nan,
        "mean_norm": sum(norms) / n if n else math.nan,
        "max_norm": max(norms) if norms else math.nan,
        "eps": eps,
        "total_seconds": sum(float(r[6]) for r in rows),
    }
