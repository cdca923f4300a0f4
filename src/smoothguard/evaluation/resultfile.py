"""Result files written row by row that resume where they stopped.

A result file is a tab-separated table with a header line (Cohen et al.'s format for
certification: ``idx label predict radius correct time``) and a JSON sidecar
``FILE.tsv.json`` holding the settings of the run. Every row is flushed as soon as it is
computed. Reopening the same file:

* keeps every complete row and cuts a trailing partial row (a killed process),
* refuses when the settings that define the results differ from the sidecar's,
* reports which indices are done, so the caller continues after them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import smoothguard
from smoothguard.contract import ContractError, check_output_path, write_text_atomic


# resume keys introduced after files were first written, with the value those files implied
KEY_DEFAULTS = {"noise": "gaussian", "sequential": "bonferroni", "conv_grad": False}


class ResultFileWarning(UserWarning):
    """Rows of a result file were dropped on resume (and will be recomputed)."""


class ResultFileError(ContractError):
    """A result file cannot be resumed (other settings, unknown origin, bad header)."""


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file (models, denoisers and inputs are recorded by it in sidecars and
    run manifests, and a resume compares it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def _atomic_write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text, "result file")


def format_value(v: Any) -> str:
    """Full precision for floats (repr round-trips), plain str otherwise."""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _field_ok(value: str) -> bool:
    """Every column of our result files is a number (labels, predictions, radii, norms,
    flags, times; ``nan`` allowed where a value is undefined)."""
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_complete_rows(
    path: str | os.PathLike,
    columns: Sequence[str],
    allowed: Iterable[int] | None = None,
) -> tuple[dict[int, list[str]], int, int]:
    """The complete, valid rows of a result file by idx, the byte length they span (header
    included) and the file size. The scan ends at the first row that is partial (no
    newline), has the wrong field count, a non-integer idx, a field that is not a number,
    an idx seen before, or (with ``allowed``) an idx outside the selection: everything
    from there on is not trusted (see :func:`first_bad_row` for the reason)."""
    rows, keep, size, _ = _scan_rows(path, columns, allowed)
    return rows, keep, size


def first_bad_row(path: str | os.PathLike, columns: Sequence[str],
                  allowed: Iterable[int] | None = None) -> tuple[int, str] | None:
    """(line number, reason) of the row where :func:`read_complete_rows` stops trusting
    the file, or None when every row is valid."""
    return _scan_rows(path, columns, allowed)[3]


def _scan_rows(path, columns, allowed):
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    try:
        header = lines[0].decode("utf-8").split("\t")
    except UnicodeDecodeError:
        header = None
    if header != list(columns):
        raise ResultFileError(f"{path}: header {header} differs from expected {list(columns)}")
    allowed_set = None if allowed is None else {int(i) for i in allowed}
    rows: dict[int, list[str]] = {}
    keep = len(lines[0]) + 1
    bad = None
    # all entries but the last are newline-terminated; the last is a partial row or b""
    for lineno, raw in enumerate(lines[1:-1], start=2):
        try:
            fields = raw.decode("utf-8").split("\t")
        except UnicodeDecodeError:
            bad = (lineno, "not UTF-8 text")
            break
        if len(fields) != len(columns):
            bad = (lineno, f"{len(fields)} fields, expected {len(columns)}")
            break
        try:
            idx = int(fields[0])
        except ValueError:
            bad = (lineno, f"idx {fields[0]!r} is not an integer")
            break
        if not all(_field_ok(f) for f in fields[1:]):
            bad = (lineno, "a field is not a number")
            break
        if idx in rows:
            bad = (lineno, f"idx {idx} appears twice")
            break
        if allowed_set is not None and idx not in allowed_set:
            bad = (lineno, f"idx {idx} is not in this run's selection of images")
            break
        rows[idx] = fields
        keep += len(raw) + 1
    if bad is None and lines[-1]:
        bad = (len(lines), "a partial last row (no newline)")
    return rows, keep, len(data), bad


def write_sidecar(path: str | os.PathLike, kind: str, columns: Sequence[str], settings: dict[str, Any],
                  key_settings: Sequence[str]) -> None:
    meta = {"kind": kind, "columns": list(columns), "settings": settings, "key_settings": list(key_settings),
            "smoothguard_version": smoothguard.__version__}
    _atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def merge_parts(
    out: str | os.PathLike,
    parts: Sequence[str | os.PathLike],
    columns: Sequence[str],
    kind: str,
    settings: dict[str, Any],
    key_settings: Sequence[str],
    expected: Sequence[int],
) -> bool:
    """Merge the part files of a sharded run into ``out`` in index order, atomically.

    Returns False (and writes nothing) while some expected index is missing from the parts.
    """
    rows: dict[int, list[str]] = {}
    for part in parts:
        if Path(part).exists():
            rows.update(read_complete_rows(part, columns)[0])
    if any(int(i) not in rows for i in expected):
        return False
    out = Path(out)
    text = "\t".join(columns) + "\n" + "".join("\t".join(rows[int(i)]) + "\n" for i in sorted(int(i) for i in expected))
    write_sidecar(out, kind, columns, settings, key_settings)
    _atomic_write_text(out, text)
    return True


class ResultWriter:
    """Append-only, resumable TSV writer.

    Args:
        path: the TSV file.
        columns: header names; ``columns[0]`` must be ``idx`` (the resume key).
        kind: what produced the file (``certify``, ``predict``, ...), stored in the sidecar.
        settings: everything about the run (stored in the sidecar).
        key_settings: names in ``settings`` that define the results; resuming with a
            different value of any of them is refused. Others (device, threads, max)
            may change between runs.
        overwrite: start a fresh file even if one exists.
        allowed: the idx values this run may write (its selection of images). On resume a
            kept row must be complete, numeric, unique and in ``allowed``; the file is cut
            at the first row that is not (with a :class:`ResultFileWarning` naming the line).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        columns: Sequence[str],
        kind: str,
        settings: dict[str, Any],
        key_settings: Iterable[str],
        overwrite: bool = False,
        allowed: Iterable[int] | None = None,
    ) -> None:
        if not columns or columns[0] != "idx":
            raise ValueError("the first column of a result file must be 'idx'")
        self.path = Path(path)
        self.columns = list(columns)
        self.kind = kind
        self.settings = dict(settings)
        self.key_settings = list(key_settings)
        self.overwrite = overwrite
        self.allowed = None if allowed is None else [int(i) for i in allowed]
        self.done: dict[int, list[str]] = {}
        self._fh = None

    def open(self) -> "ResultWriter":
        side = sidecar_path(self.path)
        # a FIFO, device or folder at either path is refused before anything is written
        check_output_path(self.path, "result file")
        check_output_path(side, "settings file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not self.overwrite:
            self._check_resumable(side)
            self._load_rows()
        else:
            _atomic_write_text(self.path, "\t".join(self.columns) + "\n")
        write_sidecar(self.path, self.kind, self.columns, self.settings, self.key_settings)
        self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def _check_resumable(self, side: Path) -> None:
        if not side.exists():
            raise ResultFileError(
                f"{self.path} exists but has no settings file {side.name}, so it cannot be resumed safely; "
                "pass --overwrite to start it again or choose another --out")
        try:
            old = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise ResultFileError(f"{side}: unreadable settings file ({exc}); pass --overwrite") from exc
        if old.get("kind") != self.kind or old.get("columns") != self.columns:
            raise ResultFileError(
                f"{self.path} was written by '{old.get('kind')}' with columns {old.get('columns')}; "
                f"this run is '{self.kind}' with columns {self.columns}. Choose another --out or pass --overwrite")
        # a key added after a file was written takes its value of that time (e.g. noise: gaussian)
        old_settings = {**KEY_DEFAULTS, **old.get("settings", {})}
        diff = [k for k in self.key_settings if old_settings.get(k) != self.settings.get(k)]
        if diff:
            detail = "; ".join(f"{k}: file {old_settings.get(k)!r}, now {self.settings.get(k)!r}" for k in diff)
            raise ResultFileError(
                f"refusing to resume {self.path}: settings differ ({detail}). "
                "Use the same settings, another --out, or --overwrite")

    def _load_rows(self) -> None:
        self.done, keep, size, bad = _scan_rows(self.path, self.columns, self.allowed)
        if keep < size:  # cut a partial or corrupt tail (a killed run, a hand edit): it is recomputed
            if bad is not None and not bad[1].startswith("a partial last row"):
                warnings.warn(f"{self.path}: line {bad[0]}: {bad[1]}; resuming from the rows before it "
                              f"({len(self.done)} kept, the rest is recomputed)", ResultFileWarning, stacklevel=3)
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)

    def write(self, row: Sequence[Any]) -> None:
        if self._fh is None:
            raise RuntimeError("ResultWriter.open() first")
        if len(row) != len(self.columns):
            raise ValueError(f"row has {len(row)} fields, expected {len(self.columns)}")
        self._fh.write("\t".join(format_value(v) for v in row) + "\n")
        self._fh.flush()
        self.done[int(row[0])] = [format_value(v) for v in row]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ResultWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
