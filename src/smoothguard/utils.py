"""Small helpers shared across the package: devices, seeds, generators, the allocator."""

from __future__ import annotations

import ctypes
import hashlib
import platform
import random
import sys

import numpy as np
import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a parameterless model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None picks CUDA when available, else CPU; otherwise validates the name."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX). Without it PyTorch
    emulates bf16 on the CPU, which is slower than fp32 (about 5x on the AVX2 machine of
    BENCHMARKS.md)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_retaining = False


def retain_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Make glibc's ``malloc`` keep the memory that torch frees for its next allocations
    instead of handing it back to the operating system (up to ``limit_bytes`` of free
    space at the top of the heap). Returns True where it applied (Linux with glibc), False
    elsewhere, where it does nothing.

    Why: by default glibc serves each allocation above its mmap threshold (at most 32 MiB)
    with fresh pages from ``mmap`` and unmaps them when the tensor is freed, so every
    forward pass of a big batch page-faults its activations in again. On the AVX-512
    machine of BENCHMARKS.md, Madry CNN's first convolution at batch 400 (a 40 MB
    output) took 17 ms this way and 3.8 ms with the memory kept, and a plain NCHW
    certification loop of that model ran 1.28x faster (smoothguard's own sampler, which
    faults far less, 1.01x). The price: the process keeps its peak memory. The change is
    process-wide and cannot be undone (glibc has no way back to its adaptive
    thresholds), so the library never makes it on its own; the ``smoothguard`` command
    line does, unless ``SMOOTHGUARD_RETAIN_MEMORY=0``.
    """
    global _retaining
    if not (isinstance(limit_bytes, int) and 0 <= limit_bytes < 2**31):
        raise ValueError(f"limit_bytes must be an int in [0, 2**31), got {limit_bytes!r}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap for big blocks (they come from the heap and go back to it), no trimming of
    # the heap's top below limit_bytes, and one arena for all threads (a thread's own arena
    # unmaps a heap that becomes empty); mallopt returns 1 on success
    ok = all(mallopt(param, value) == 1 for param, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, limit_bytes), (_M_ARENA_MAX, 1)))
    _retaining = _retaining or ok
    return ok


def retaining_freed_memory() -> bool:
    """Whether :func:`retain_freed_memory` has been applied in this process."""
    return _retaining


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across runs and platforms)."""
    h = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device``, seeded when ``seed`` is given (else from entropy)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed) & ((1 << 63) - 1))
    return gen


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (for code that uses them)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
