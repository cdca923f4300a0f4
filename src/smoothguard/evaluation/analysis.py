"""Reading certification / prediction result files and summarizing them.

Result files are tab-separated with a header, one row per test image, in the format of
Cohen, Rosenfeld and Kolter (ICML 2019, github.com/locuslab/smoothing):

* certify: ``idx  label  predict  radius  correct  time``
* predict: ``idx  label  predict  correct  time``

``predict == -1`` is ABSTAIN and always counts as wrong. Radii are l2 radii in [0,1]
pixel units. Both our own files (full-precision radius, float seconds, optional extra
columns such as ``n_used``, and a JSON sidecar ``FILE.tsv.json`` holding the run's
settings) and Cohen's original files (radius printed to 3 significant digits; ``time``
either float seconds or ``str(datetime.timedelta)``, e.g. ``0:00:04.125342`` or
``1 day, 2:03:04.5``) are read.

Metrics (docs/algorithms.md section 1, "Metrics over a test set"):

* approximate certified accuracy at r = mean(correct and radius >= r);
* ACR (average certified radius) = mean(radius * correct);
* abstention rate = mean(predict == ABSTAIN);
* clean accuracy of the smoothed classifier = mean(correct) (certified accuracy at r = 0);
* R_max = sigma * PhiInv(alpha ** (1/n)), the largest radius the run could certify;
* the high-probability lower bound on certified accuracy (Cohen et al., Appendix D,
  Theorem 6 as printed), clipped at 0.

Accuracies are fractions in [0, 1] in the API and in CSV; the human-readable renderers
(terminal, Markdown, LaTeX) show them in percent.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from smoothguard import ABSTAIN
from smoothguard.noise import get_noise
from smoothguard.smoothing.stats import certified_accuracy_lower_bound, r_max
from smoothguard.evaluation.formats import CERTIFY, CERTIFY_COLUMNS, PREDICT, PREDICT_COLUMNS
from smoothguard.evaluation.resultfile import sidecar_path

#: Radii of the default summary table (l2, pixel units): the columns of Cohen's tables.
DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

#: Output formats of :func:`render_table` / :meth:`SummaryTable.render`.
TABLE_FORMATS: tuple[str, ...] = ("table", "markdown", "latex", "csv")

# the formats' columns (smoothguard.evaluation.formats declares them; this module reads them)
_REQUIRED = {"certify": CERTIFY.required, "predict": PREDICT.required}
_KNOWN = set(CERTIFY_COLUMNS)


class ResultsFileError(ValueError):
    """A result file (or its JSON sidecar) that cannot be read; the message names the file,
    the line number where there is one, and what was expected."""


# --------------------------------------------------------------------------- the data


@dataclass
class Results:
    """The rows of one certify or predict result file, as NumPy arrays.

    ``radius`` is None for predict files. ``time`` is seconds per image (NaN when the file
    has no time column). ``correct`` is False wherever ``predict == ABSTAIN``. ``extra``
    keeps any further columns as strings, by column name (``n_used`` is also parsed into
    ``n_used``). ``settings`` are the run's settings from the JSON sidecar (empty when
    unknown); ``sidecar`` is the whole sidecar dict or None.
    """

    kind: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    radius: np.ndarray | None = None
    time: np.ndarray | None = None
    n_used: np.ndarray | None = None
    extra: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] | None = None
    path: Path | None = None
    skipped_partial_line: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("certify", "predict"):
            raise ValueError(f"kind must be 'certify' or 'predict', got {self.kind!r}")
        self.idx = np.asarray(self.idx, dtype=np.int64)
        self.label = np.asarray(self.label, dtype=np.int64)
        self.predict = np.asarray(self.predict, dtype=np.int64)
        # ABSTAIN counts as wrong, whatever the file says.
        self.correct = np.asarray(self.correct, dtype=bool) & (self.predict != ABSTAIN)
        m = len(self.idx)
        if self.radius is not None:
            self.radius = np.asarray(self.radius, dtype=np.float64)
        elif self.kind == "certify":
            raise ValueError("a certify Results needs radii")
        self.time = np.full(m, np.nan) if self.time is None else np.asarray(self.time, dtype=np.float64)
        if self.n_used is not None:
            self.n_used = np.asarray(self.n_used, dtype=np.int64)
        for name in ("label", "predict", "correct", "radius", "time", "n_used"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (m,):
                raise ValueError(f"Results.{name} has shape {arr.shape}, expected ({m},)")

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def name(self) -> str:
        """The file name (or ``results`` for in-memory results)."""
        return self.path.name if self.path is not None else "results"

    def with_settings(self, **defaults: Any) -> "Results":
        """A copy whose settings are completed by ``defaults`` (keys already set, e.g. from
        the sidecar, are kept; None values are ignored)."""
        settings = dict(self.settings)
        for key, value in defaults.items():
            if value is not None and settings.get(key) is None:
                settings[key] = value
        return replace(self, settings=settings)


# --------------------------------------------------------------------------- reading

_TIMEDELTA = re.compile(
    r"^(?:(?P<days>[-+]?\d+)\s+days?,\s*)?(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d*)?)$"
)


def parse_time(text: str) -> float:
    """Seconds from float seconds (``4.125``) or ``str(datetime.timedelta)`` as Cohen's
    scripts write it (``0:00:04.125342``, ``0:00:04``, ``1 day, 2:03:04.5``)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _TIMEDELTA.match(text)
    if not m:
        raise ValueError(f"expected seconds (e.g. 4.125) or H:MM:SS[.ffffff] (e.g. 0:00:04.125342), got {text!r}")
    days = int(m.group("days") or 0)
    return days * 86400.0 + int(m.group("h")) * 3600.0 + int(m.group("m")) * 60.0 + float(m.group("s"))


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_correct(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true"):
        return True
    if t in ("0", "false"):
        return False
    raise ValueError(f"expected 0 or 1, got {text!r}")


def _parse_radius(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"expected a finite number >= 0, got {text!r}")
    return r


def _field(fields: list[str], pos: dict[str, int], col: str, parse) -> Any:
    try:
        return parse(fields[pos[col]])
    except ValueError as exc:
        raise ValueError(f"column {col}: {exc}") from None


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar dict of result file ``path`` (None when there is none)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsFileError(f"{side}: cannot read the JSON sidecar: {exc}") from exc
    if not isinstance(data, dict):
        raise ResultsFileError(f"{side}: expected a JSON object with keys kind, settings, smoothguard_version")
    if data.get("kind") not in (None, "certify", "predict"):
        raise ResultsFileError(f"{side}: 'kind' must be 'certify' or 'predict', got {data.get('kind')!r}")
    if not isinstance(data.get("settings", {}), dict):
        raise ResultsFileError(f"{side}: 'settings' must be a JSON object")
    return data


def read_results(path: str | Path) -> Results:
    """Read a certify or predict result file (ours or Cohen et al.'s) and its sidecar.

    The kind comes from the header (a ``radius`` column means certify). Column order is
    free; unknown columns are kept in ``Results.extra``. Blank lines and a repeated header
    (concatenated shards) are skipped. A last line without a final newline that does not
    parse (a file still being written) is skipped and its line number recorded in
    ``skipped_partial_line``; any other bad line raises :class:`ResultsFileError` with
    the file, the line number and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise ResultsFileError(f"{path}: no such file")
    if path.is_dir():
        raise ResultsFileError(f"{path}: is a folder, expected a result file (.tsv)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{path}: cannot read: {exc}") from exc
    sidecar = read_sidecar(path)

    lines = text.split("\n")
    unterminated = lines[-1] != ""  # the last line has no newline: maybe a partial write
    if not unterminated:
        lines.pop()
    # First non-blank line is the header.
    header_no = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    expected = "\t".join(CERTIFY_COLUMNS)
    if header_no is None:
        raise ResultsFileError(f"{path}: empty file, expected a header line '{expected}' "
                               f"(or '{chr(9).join(PREDICT_COLUMNS)}' for predict files)")
    header_line = lines[header_no].rstrip("\r")
    sep = "\t" if "\t" in header_line else None  # None: any whitespace (a hand-edited file)
    columns = [c.strip() for c in header_line.split(sep)]
    kind = "certify" if "radius" in columns else "predict"
    missing = [c for c in _REQUIRED[kind] if c not in columns]
    if missing:
        raise ResultsFileError(
            f"{path}, line {header_no + 1}: expected a header with tab-separated columns '{expected}' "
            f"(certify) or '{chr(9).join(PREDICT_COLUMNS)}' (predict); missing {', '.join(missing)} in {header_line!r}")
    if len(set(columns)) != len(columns):
        raise ResultsFileError(f"{path}, line {header_no + 1}: repeated column names in {header_line!r}")
    if sidecar is not None and sidecar.get("kind") not in (None, kind):
        raise ResultsFileError(f"{path}: the sidecar says kind={sidecar['kind']!r} but the header is that of a "
                               f"{kind} file ({header_line!r})")
    pos = {c: i for i, c in enumerate(columns)}
    extra_cols = [c for c in columns if c not in _KNOWN]

    idx: list[int] = []
    label: list[int] = []
    predict: list[int] = []
    radius: list[float] = []
    correct: list[bool] = []
    times: list[float] = []
    n_used: list[int] = []
    extra: dict[str, list[str]] = {c: [] for c in extra_cols}
    seen: dict[int, int] = {}
    skipped = None
    last = len(lines) - 1
    for i in range(header_no + 1, len(lines)):
        line = lines[i].rstrip("\r")
        lineno = i + 1
        if not line.strip() or line == header_line:
            continue
        fields = line.split(sep)
        try:
            if len(fields) != len(columns):
                raise ValueError(f"expected {len(columns)} fields ({', '.join(columns)}), got {len(fields)}")
            row_idx = _field(fields, pos, "idx", _parse_int)
            row = (
                _field(fields, pos, "label", _parse_int),
                _field(fields, pos, "predict", _parse_int),
                _field(fields, pos, "radius", _parse_radius) if kind == "certify" else 0.0,
                _field(fields, pos, "correct", _parse_correct),
                _field(fields, pos, "time", parse_time) if "time" in pos else math.nan,
                _field(fields, pos, "n_used", _parse_int) if "n_used" in pos else 0,
            )
            if row[1] < ABSTAIN:
                raise ValueError(f"column predict: expected a class index >= 0 or -1 (ABSTAIN), got {row[1]}")
        except ValueError as exc:
            if unterminated and i == last:
                skipped = lineno
                break
            raise ResultsFileError(f"{path}, line {lineno}: {exc}: {line!r}") from None
        if row_idx in seen:
            raise ResultsFileError(f"{path}, line {lineno}: idx {row_idx} already appeared on line {seen[row_idx]}")
        seen[row_idx] = lineno
        idx.append(row_idx)
        label.append(row[0])
        predict.append(row[1])
        radius.append(row[2])
        correct.append(row[3])
        times.append(row[4])
        n_used.append(row[5])
        for c in extra_cols:
            extra[c].append(fields[pos[c]])

    settings = dict(sidecar.get("settings") or {}) if sidecar else {}
    return Results(
        kind=kind,
        idx=np.array(idx, dtype=np.int64),
        label=np.array(label, dtype=np.int64),
        predict=np.array(predict, dtype=np.int64),
        correct=np.array(correct, dtype=bool),
        radius=np.array(radius, dtype=np.float64) if kind == "certify" else None,
        time=np.array(times, dtype=np.float64),
        n_used=np.array(n_used, dtype=np.int64) if "n_used" in pos else None,
        extra=extra,
        settings=settings,
        sidecar=sidecar,
        path=path,
        skipped_partial_line=skipped,
    )


# --------------------------------------------------------------------------- metrics


def _need_radius(results: Results, what: str) -> np.ndarray:
    if results.radius is None:
        raise ValueError(f"{results.name} is a predict file (no radius column): {what} needs a certify file; "
                         "only clean accuracy and abstention apply to predict files")
    return results.radius


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def certified_accuracy(results: Results, radius: float | Sequence[float]) -> float | np.ndarray:
    """Approximate certified accuracy: the fraction of images that are correct with
    certified radius >= ``radius`` (Cohen et al., Section 4). A sequence of radii gives
    an array. NaN for a file with no rows."""
    radii = _need_radius(results, "certified accuracy")
    r = np.asarray(radius, dtype=np.float64)
    if len(results) == 0:
        acc = np.full(r.shape, math.nan)
    else:
        acc = (results.correct[None, :] & (radii[None, :] >= r.reshape(-1, 1))).mean(axis=1).reshape(r.shape)
    return float(acc) if acc.ndim == 0 else acc


def certified_count(results: Results, radius: float) -> int:
    """How many images are correct with certified radius >= ``radius``."""
    radii = _need_radius(results, "certified accuracy")
    return int(np.count_nonzero(results.correct & (radii >= radius)))


def average_certified_radius(results: Results) -> float:
    """ACR = mean(radius * correct), wrong answers and abstentions counting 0 (l2, pixel units)."""
    radii = _need_radius(results, "ACR")
    return _mean(radii * results.correct)


def abstention_rate(results: Results) -> float:
    """Fraction of images on which the smoothed classifier abstained (predict == -1)."""
    return _mean(results.predict == ABSTAIN)


def clean_accuracy(results: Results) -> float:
    """Accuracy of the smoothed classifier (abstentions wrong): mean(correct), which for a
    certify file is the certified accuracy at radius 0."""
    return _mean(results.correct)


def mean_time(results: Results) -> float:
    """Mean seconds per image (NaN when the file has no times)."""
    t = results.time[np.isfinite(results.time)] if results.time is not None else np.array([])
    return _mean(t)


def total_samples(results: Results) -> int | None:
    """Sum of the ``n_used`` column (noise samples spent), or None when the file has none."""
    return None if results.n_used is None else int(results.n_used.sum())


def _setting(results: Results, key: str, cast) -> Any:
    value = results.settings.get(key)
    if value is None:
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"{results.name}: setting {key}={value!r} is not a valid {cast.__name__}") from None


def run_r_max(results: Results, sigma: float | None = None, n: int | None = None,
              alpha: float | None = None) -> float | None:
    """R_max = sigma * PhiInv(alpha ** (1/n)) of the run, from its settings (the arguments
    fill in settings that are missing); None when sigma, n or alpha is unknown."""
    res = results.with_settings(sigma=sigma, n=n, alpha=alpha)
    s, nn, a = _setting(res, "sigma", float), _setting(res, "n", int), _setting(res, "alpha", float)
    if s is None or nn is None or a is None:
        return None
    noise = res.settings.get("noise") or "gaussian"
    return r_max(s, nn, a) if noise == "gaussian" else get_noise(noise, s).r_max(nn, a)


def radius_norm(results: Results) -> str:
    """The norm a file's radii are certified in: its sidecar's ``norm`` (l1 for uniform and
    Laplace noise), l2 for Gaussian noise and for files without one (Cohen's)."""
    return str(results.settings.get("norm") or "l2")


def certified_accuracy_lower_bounds(results: Results, radii: Sequence[float], rho: float = 0.001,
                                    alpha: float | None = None) -> list[float] | None:
    """High-probability lower bound on the certified accuracy at each radius (Cohen et al.,
    Appendix D, Theorem 6 as printed; see
    :func:`smoothguard.smoothing.stats.certified_accuracy_lower_bound`), with confidence
    1 - rho over the test set and CERTIFY failure rate alpha (from the settings unless
    given). Clipped at 0 (a negative bound says nothing). None when alpha is unknown;
    NaNs for a file with no rows."""
    a = alpha if alpha is not None else _setting(results, "alpha", float)
    if a is None:
        return None
    m = len(results)
    if m == 0:
        return [math.nan] * len(radii)
    return [max(0.0, certified_accuracy_lower_bound(certified_count(results, r), m, a, rho)) for r in radii]


# --------------------------------------------------------------------------- legends


_GENERIC_STEMS = {"model", "checkpoint", "ckpt", "best", "last", "final", "weights", "denoiser"}


def _short_name(value: Any) -> str:
    s = str(value)
    if s.startswith("api:"):  # a query-only classifier (certify --api URL): name it by its host
        from urllib.parse import urlsplit

        rest = s[4:]
        return "api:" + (urlsplit(rest).netloc if "//" in rest else _short_name(rest))
    if "/" in s or "\\" in s or s.endswith((".pt", ".pth", ".ckpt", ".pth.tar")):
        p = Path(s.replace("\\", "/"))
        stem = p.name.split(".")[0] or p.name
        if stem.lower() in _GENERIC_STEMS and p.parent.name:
            return f"{p.parent.name}/{stem}"
        return stem
    return s


def legend(results: Results) -> str:
    """A label for a result file built from its settings, e.g. ``lenet+dncnn sigma=0.25
    n=10000``; the file name stands in for the model when the model is unknown, and the
    file name alone is used when there are no settings."""
    st = results.settings
    fallback = results.path.stem if results.path is not None else "results"
    if not st:
        return fallback
    head = _short_name(st["model"]) if st.get("model") else fallback
    if st.get("denoiser"):
        head += "+" + _short_name(st["denoiser"])
    parts = [head]
    if st.get("noise") and st["noise"] != "gaussian":
        parts.append(str(st["noise"]))
    if st.get("sigma") is not None:
        parts.append(f"sigma={st['sigma']:g}" if isinstance(st["sigma"], (int, float)) else f"sigma={st['sigma']}")
    if st.get("n") is not None:
        parts.append(f"n={st['n']}")
    if radius_norm(results) != "l2":  # radii in another norm: say so wherever the label appears
        parts.append(f"({radius_norm(results)} radii)")
    return " ".join(parts)


def legends(results_list: Sequence[Results]) -> list[str]:
    """:func:`legend` for each file; where labels repeat, the file name (or, if file names
    repeat too, the parent folder and file name) is appended in brackets."""
    labels = [legend(r) for r in results_list]
    out = list(labels)
    for i, (lab, res) in enumerate(zip(labels, results_list)):
        if labels.count(lab) < 2 or res.path is None:
            continue
        names = [r.name for r, other in zip(results_list, labels) if other == lab]
        tag = res.name if names.count(res.name) < 2 else f"{res.path.parent.name}/{res.name}"
        out[i] = tag if lab == res.path.stem else f"{lab} [{tag}]"
    return out


# --------------------------------------------------------------------------- the summary table


@dataclass(frozen=True)
class Column:
    """One column of a :class:`SummaryTable`: ``key`` names it in CSV, ``header`` in the
    human-readable formats; ``unit`` says how it is shown (``percent``: a fraction shown
    x100; ``radius``; ``seconds``; ``count``); ``best``: the maximum is marked."""

    key: str
    header: str
    unit: str
    best: bool = False


@dataclass
class SummaryRow:
    label: str
    path: str | None
    kind: str
    values: dict[str, float | None]


@dataclass
class SummaryTable:
    """Rows = result files, columns = metrics. Values are raw numbers (fractions for
    accuracies); rendering formats them. ``str(table)`` is the terminal table.

    Best values: in every column with ``best=True`` (certified accuracy at each radius,
    its lower bounds, ACR and clean accuracy) the maximum over the files is marked (ties
    all marked; nothing marked when fewer than two files have a value or all values are
    equal): ``*`` after the number in
    the terminal table, bold in Markdown and LaTeX. CSV carries no marks: it holds
    full-precision numbers only (the best is one ``max`` away).
    """

    columns: list[Column]
    rows: list[SummaryRow]
    radii: tuple[float, ...] = ()
    norms: tuple[str, ...] = ("l2",)  # the norms of the files' radii (l1 for uniform/Laplace noise)

    def best(self, key: str) -> set[int]:
        """Row positions holding the maximum of column ``key`` (empty when the column is
        not marked, fewer than two rows have a value, or all values are equal)."""
        col = next(c for c in self.columns if c.key == key)
        vals = [(i, r.values.get(key)) for i, r in enumerate(self.rows)]
        vals = [(i, v) for i, v in vals if v is not None and not math.isnan(v)]
        if not col.best or len(vals) < 2:
            return set()
        top = max(v for _, v in vals)
        if all(v >= top - 1e-12 for _, v in vals):
            return set()  # all equal: nothing stands out
        return {i for i, v in vals if v >= top - 1e-12}

    def render(self, fmt: str = "table") -> str:
        return render_table(self, fmt)

    def __str__(self) -> str:
        return render_table(self, "table")


def _fmt_r(r: float) -> str:
    return f"{r:g}"


def summary_table(results_list: Sequence[Results], radii: Sequence[float] = DEFAULT_RADII, *,
                  labels: Sequence[str] | None = None, rho: float = 0.001,
                  lower_bound: bool = False) -> SummaryTable:
    """Build the summary table of several result files.

    Columns: images, certified accuracy at each radius, ACR, abstention rate, clean
    accuracy, R_max, mean seconds per image, total noise samples (only when a file has an
    ``n_used`` column), and with ``lower_bound`` the Theorem 6 lower bound at each radius
    (confidence 1 - ``rho``). Values that do not apply (radius metrics of a predict file,
    R_max or lower bounds with unknown settings) are None.
    """
    radii = tuple(float(r) for r in radii)
    if not radii:
        raise ValueError("need at least one radius")
    if any(not math.isfinite(r) or r < 0 for r in radii):
        raise ValueError(f"radii must be finite and >= 0, got {list(radii)}")
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    results_list = list(results_list)
    if labels is None:
        labels = legends(results_list)
    elif len(labels) != len(results_list):
        raise ValueError(f"got {len(labels)} labels for {len(results_list)} result files")

    cols = [Column("images", "images", "count")]
    cols += [Column(f"cert_acc@{_fmt_r(r)}", f"r={_fmt_r(r)}", "percent", True) for r in radii]
    cols += [Column("acr", "ACR", "radius", True), Column("abstention", "abstain", "percent"),
             Column("clean_acc", "clean", "percent", True), Column("r_max", "R_max", "radius"),
             Column("time_per_image_s", "s/img", "seconds")]
    if any(r.n_used is not None for r in results_list):
        cols.append(Column("total_samples", "samples", "count"))
    if lower_bound:
        cols += [Column(f"lb@{_fmt_r(r)}", f"LB r={_fmt_r(r)}", "percent", True) for r in radii]

    rows = []
    for res, lab in zip(results_list, labels):
        v: dict[str, float | None] = {"images": float(len(res))}
        certify = res.kind == "certify"
        accs = certified_accuracy(res, radii) if certify else [None] * len(radii)
        for r, a in zip(radii, accs):
            v[f"cert_acc@{_fmt_r(r)}"] = None if a is None else float(a)
        v["acr"] = average_certified_radius(res) if certify else None
        v["abstention"] = abstention_rate(res)
        v["clean_acc"] = clean_accuracy(res)
        v["r_max"] = run_r_max(res) if certify else None
        t = mean_time(res)
        v["time_per_image_s"] = None if math.isnan(t) else t
        if any(c.key == "total_samples" for c in cols):
            ts = total_samples(res)
            v["total_samples"] = None if ts is None else float(ts)
        if lower_bound:
            lbs = certified_accuracy_lower_bounds(res, radii, rho) if certify else None
            for i, r in enumerate(radii):
                v[f"lb@{_fmt_r(r)}"] = None if lbs is None else lbs[i]
        rows.append(SummaryRow(lab, str(res.path) if res.path is not None else None, res.kind, v))
    norms = tuple(sorted({radius_norm(r) for r in results_list if r.kind == "certify"})) or ("l2",)
    return SummaryTable(cols, rows, radii, norms)


def _display(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "percent":
        return f"{100.0 * value:.1f}"
    if unit == "radius":
        return f"{value:.3f}"
    if unit == "seconds":
        return f"{value:.3g}"
    return f"{int(round(value))}"


_NOTE = ("certified accuracy at {norm} radius r, abstention, clean accuracy{lb} in %; "
         "ACR and R_max in {norm} pixel units; s/img: mean seconds per image")


def _note(table: "SummaryTable", has_lb: bool) -> str:
    if len(table.norms) == 1:
        norm = table.norms[0]
    else:  # l1 and l2 rows: compare at equal r only through the implication l2 radius r => l1 radius r
        norm = "each file's (" + ", ".join(table.norms) + "; an l2 radius r also certifies l1 radius r)"
    return _NOTE.format(lb=", LB (lower bound)" if has_lb else "", norm=norm)


def _cells(table: SummaryTable) -> list[list[tuple[str, bool]]]:
    best = {c.key: table.best(c.key) for c in table.columns}
    return [[(_display(row.values.get(c.key), c.unit), i in best[c.key]) for c in table.columns]
            for i, row in enumerate(table.rows)]


def _to_text(table: SummaryTable) -> str:
    header = ["file"] + [c.header for c in table.columns]
    body = [[row.label] + [s + ("*" if b else "") for s, b in cells]
            for row, cells in zip(table.rows, _cells(table))]
    widths = [max(len(line[j]) for line in [header] + body) for j in range(len(header))]

    def fmt(line: list[str]) -> str:
        parts = [line[0].ljust(widths[0])] + [s.rjust(w) for s, w in zip(line[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    has_lb = any(c.key.startswith("lb@") for c in table.columns)
    note = _note(table, has_lb)
    lines = [fmt(header), rule] + [fmt(b) for b in body]
    lines.append(f"({note}; * best per column)")
    return "\n".join(lines) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _to_markdown(table: SummaryTable) -> str:
    header = ["file"] + [c.header for c in table.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|"]
    for row, cells in zip(table.rows, _cells(table)):
        items = [_md_escape(row.label)] + [f"**{s}**" if b else s for s, b in cells]
        lines.append("| " + " | ".join(items) + " |")
    has_lb = any(c.key.startswith("lb@") for c in table.columns)
    lines.append("")
    note = _note(table, has_lb)
    lines.append(note[0].upper() + note[1:] + "; best per column in bold.")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters (``_`` -> ``\\_``, ``%`` -> ``\\%``, ...)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def _to_latex(table: SummaryTable) -> str:
    def head(c: Column) -> str:
        if c.key.startswith("cert_acc@"):
            return f"$r={c.header[2:]}$"
        if c.key.startswith("lb@"):
            return f"LB $r={c.header[5:]}$"
        if c.key == "r_max":
            return r"$R_{\max}$"
        return latex_escape(c.header)

    has_lb = any(c.key.startswith("lb@") for c in table.columns)
    lines = [
        "% " + _note(table, has_lb) + "; best per column in bold",
        "% requires \\usepackage{booktabs}",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(["File"] + [head(c) for c in table.columns]) + r" \\",
        r"\midrule",
    ]
    for row, cells in zip(table.rows, _cells(table)):
        items = [latex_escape(row.label)] + [(rf"\textbf{{{s}}}" if b else s) if s != "-" else "--" for s, b in cells]
        lines.append(" & ".join(items) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _to_csv(table: SummaryTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "file", "kind"] + [c.key for c in table.columns])
    for row in table.rows:
        vals = []
        for c in table.columns:
            v = row.values.get(c.key)
            if v is None or math.isnan(v):
                vals.append("")
            elif c.unit == "count":
                vals.append(str(int(round(v))))
            else:
                vals.append(repr(float(v)))
        w.writerow([row.label, row.path or "", row.kind] + vals)
    return buf.getvalue()


def render_table(table: SummaryTable, fmt: str = "table") -> str:
    """Render a :class:`SummaryTable` as ``table`` (aligned plain text, best marked ``*``),
    ``markdown`` (best in bold), ``latex`` (booktabs tabular, best in ``\\textbf``) or
    ``csv`` (full-precision fractions, no marks, empty cell for not applicable)."""
    renderers = {"table": _to_text, "markdown": _to_markdown, "latex": _to_latex, "csv": _to_csv}
    if fmt not in renderers:
        raise ValueError(f"unknown table format {fmt!r}; allowed: {', '.join(TABLE_FORMATS)}")
    return renderers[fmt](table)


def analyze_files(paths: Iterable[str | Path], radii: Sequence[float] = DEFAULT_RADII, *,
                  sigma: float | None = None, n: int | None = None, alpha: float | None = None,
                  rho: float = 0.001, lower_bound: bool = False,
                  labels: Sequence[str] | None = None) -> SummaryTable:
    """Read result files and build their summary table; ``print(analyze_files(...))`` shows
    the terminal table, ``.render("markdown")`` etc. the other formats.

    ``sigma``, ``n`` and ``alpha`` complete the settings of files whose sidecar lacks them
    (Cohen's files have no sidecar); a sidecar's values always win.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no result files given")
    results = [read_results(p).with_settings(sigma=sigma, n=n, alpha=alpha) for p in paths]
    return summary_table(results, radii, labels=labels, rho=rho, lower_bound=lower_bound)
