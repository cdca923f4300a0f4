"""What a result file records about the model it was computed with (and a resume compares)."""

from __future__ import annotations

from pathlib import Path

from smoothguard.evaluation.resultfile import file_sha256


def model_settings(path: str | None, factory: str | None = None, weights: str | None = None) -> tuple[str, str | None]:
    """(name, sha256) recorded for the model (and compared on resume): the checkpoint file,
    or the factory reference and its weights file (no weights: no hash to compare)."""
    from smoothguard.models.checkpoint import default_model_path

    if factory is not None:
        name = f"factory:{factory}" + (f" weights:{Path(weights).resolve()}" if weights else "")
        return name, file_sha256(weights) if weights else None
    p = Path(path) if path else default_model_path()
    return (str(p.resolve()) if path else "embedded:" + p.name), file_sha256(p)
