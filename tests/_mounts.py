"""Real small file systems for tests: a size-limited tmpfs, remountable read-only.

CI runs as root, where `chmod` does not stop writes, so read-only media and full disks are
made with real mounts. Where mounting is not permitted, the tests that need one are skipped
with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "2m") at `where` for the block; skip if not permitted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def remount(where: Path, options: str) -> None:
    """Change a mounted tmpfs's options, e.g. "ro", "rw", "size=64m"."""
    done = _mount("-o", f"remount,{options}", str(where))
    assert done.returncode == 0, done.stderr
