"""Reader and writer for the IDX format of MNIST and Fashion-MNIST (gzipped or plain)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from smoothguard.contract import ContractError, atomic_output

# IDX type codes (http://yann.lecun.com/exdb/mnist/ format description).
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


class IDXError(ContractError):
    """A file is not a valid IDX file (a :class:`ContractError`, hence a ValueError)."""


_MAX_BYTES = np.iinfo(np.int64).max  # a header asking for more overflows every size type


def _open(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_exactly(fh, n: int) -> bytes:
    """Up to n bytes (fewer only at the end of the file)."""
    parts, left = [], n
    while left > 0:
        chunk = fh.read(min(left, 1 << 24))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array.

    Raises :class:`IDXError` naming the file when the header or size is wrong, including
    a header whose dimensions multiply to more data than the file holds or than any
    size type can count; the data is never read past what the header declares (a
    gzip file that inflates further is refused without inflating it all).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise IDXError(f"{path}: not a regular file; expected an IDX file")
        plain_size = None if _is_gzip(path) else path.stat().st_size
        with _open(path) as fh:
            head = _read_exactly(fh, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise IDXError(f"{path}: not an IDX file (bad magic number)")
            code, ndim = head[2], head[3]
            if code not in _DTYPES:
                raise IDXError(f"{path}: unknown IDX data type code 0x{code:02x}; allowed: "
                               + ", ".join(f"0x{c:02x}" for c in _DTYPES))
            dims = _read_exactly(fh, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise IDXError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
            shape = struct.unpack(">" + "I" * ndim, dims)
            dtype = _DTYPES[code]
            expected = math.prod(shape) * dtype.itemsize  # exact: Python integers do not overflow
            header = 4 + 4 * ndim
            if expected > _MAX_BYTES or (plain_size is not None and expected != plain_size - header):
                held = "" if plain_size is None else f" but the file holds {plain_size - header}"
                raise IDXError(f"{path}: IDX header says shape {tuple(shape)} ({expected} bytes of data){held}; "
                               "the header is corrupt or the file truncated")
            data = _read_exactly(fh, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(data) != expected:
        raise IDXError(
            f"{path}: IDX header says shape {tuple(shape)} ({expected} bytes of data) "
            f"but the file holds {'more' if len(data) > expected else len(data)} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8/int8 array as an IDX file (gzip when the name ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise ValueError(f"write_idx supports uint8 and int8 arrays, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    payload = header + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    opener = gzip.open if compress else open
    with atomic_output(path, "IDX file") as tmp:
        with opener(tmp, "wb") as fh:
            fh.write(payload)
