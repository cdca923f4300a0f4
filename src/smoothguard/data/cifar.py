"""Reader for the CIFAR-10 "python version" pickle batches.

The batches are pickles of plain dicts of bytes, lists and NumPy arrays. They are read
with a restricted unpickler that only admits the NumPy reconstruction helpers, so a
tampered batch file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected a dict)")
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
    data = _integers(obj["data"], path, "data", 0, 255)
    labels = _integers(obj["labels"], path, "labels", 0, len(CLASS_NAMES) - 1)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: CIFAR-10 batch has data of shape {data.shape} and labels of shape {labels.shape}; "
                         "expected (N, 3072) and (N,)")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def _integers(value, path: Path, key: str, lo: int, hi: int) -> np.ndarray:
    """``value`` as an int64 array whose entries all lie in [lo, hi] (never wrapped
    around: a label -1 or 300 is refused, not turned into 255 or 44)."""
    try:
        arr = np.asarray(value)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):  # an empty list reads as float64
            raise TypeError(f"dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: CIFAR-10 batch '{key}' must hold integers in [{lo}, {hi}] ({exc})") from None
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        bad = arr[(arr < lo) | (arr > hi)]
        raise ValueError(f"{path}: CIFAR-10 batch '{key}' has {bad.size} value(s) outside [{lo}, {hi}], "
                         f"e.g. {int(bad[0])}; CIFAR-10 {key} must lie in [{lo}, {hi}]")
    return arr


def read_cifar10(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 images (N, 3, 32, 32), int64 labels) for split 'train' or 'test'."""
    root = Path(root)
    files = TRAIN_FILES if split == "train" else TEST_FILES
    parts = [_load_batch(root / f) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
