"""smoothguard.utils.retain_freed_memory: glibc keeps freed memory for the next batch.

The change is process-wide and cannot be undone, so every check that applies it runs in
a fresh interpreter."""

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smoothguard import utils

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
PAGES = 12 * 2**20 * 4 // 4096  # pages of one 48 MiB float32 tensor (above glibc's largest mmap threshold)

CHURN = textwrap.dedent("""
    import resource, sys
    from concurrent.futures import ThreadPoolExecutor
    import torch
    from smoothguard.utils import retain_freed_memory, retaining_freed_memory

    if sys.argv[1] == "1":
        assert retain_freed_memory() and retaining_freed_memory()
    else:
        assert not retaining_freed_memory()

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def churn():  # a fresh 48 MiB tensor, written, read and freed: what a big activation does
        t = torch.ones(12 * 2**20)
        return float(t[::4096].sum())

    def per_call(run):
        # glibc's aligned allocations cannot reuse a freed block of exactly their size, so the
        # heap first grows by a few blocks (measured: 6 with 48 MiB ones) before the freed
        # ones coalesce and are reused
        for _ in range(12):
            run()
        f0 = faults()
        for _ in range(5):
            run()
        return (faults() - f0) / 5

    with ThreadPoolExecutor(1) as pool:  # a forward worker thread of the sampler's pipeline
        print(per_call(churn), per_call(lambda: pool.submit(churn).result()))
""")


def _faults(retain: bool) -> tuple[float, float]:
    proc = subprocess.run([sys.executable, "-c", CHURN, "1" if retain else "0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    main, worker = map(float, proc.stdout.split())
    return main, worker


def _thp_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_retained_memory_is_not_page_faulted_in_again():
    main, worker = _faults(retain=True)
    # freed blocks come back from the heap: a few pages of bookkeeping, not the tensor's
    assert main <= 0.05 * PAGES and worker <= 0.05 * PAGES, (main, worker, PAGES)
    if not _thp_always():  # the default, for contrast: every big tensor is mapped and faulted in afresh
        base_main, base_worker = _faults(retain=False)
        assert base_main >= 0.5 * PAGES and base_worker >= 0.5 * PAGES, (base_main, base_worker, PAGES)


@pytest.mark.parametrize("bad", [-1, 2**31, 1.5, "1G", None])
def test_bad_limit_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"limit_bytes must be an int in \[0, 2\*\*31\)"):
        utils.retain_freed_memory(bad)


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(utils.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(utils.ctypes, "CDLL", lambda *a: pytest.fail("must not load a C library"))
    before = utils.retaining_freed_memory()
    assert utils.retain_freed_memory() is False
    assert utils.retaining_freed_memory() is before


CLI = ("from smoothguard.cli import main; from smoothguard.utils import retaining_freed_memory as r; "
       "rc = main(['info', '--threads', '1']); print('RESULT', rc, r())")


def _cli(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SMOOTHGUARD_RETAIN_MEMORY"}
    if env_value is not None:
        env["SMOOTHGUARD_RETAIN_MEMORY"] = env_value
    return subprocess.run([sys.executable, "-c", CLI], capture_output=True, text=True, env=env)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
@pytest.mark.parametrize("value, retained", [(None, True), ("1", True), ("0", False)])
def test_cli_retains_freed_memory_unless_told_not_to(value, retained):
    proc = _cli(value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"RESULT 0 {retained}"


def test_cli_rejects_a_bad_setting_naming_the_allowed_values():
    proc = _cli("yes")
    assert proc.returncode == 0, proc.stderr  # the interpreter ran; main returned the CLI's exit code
    assert proc.stdout.splitlines()[-1] == "RESULT 2 False"
    assert "SMOOTHGUARD_RETAIN_MEMORY must be 0 or 1, got 'yes'" in proc.stderr
