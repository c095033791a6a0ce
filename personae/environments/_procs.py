"""Processes seen through /proc: a process's descendants, and killing them for certain.

Every process a sandbox starts descends from its `bwrap` process: inside a PID namespace an
orphan is adopted by the namespace's init (bwrap's own), never by a host process, so walking
the parent links from /proc finds all of them, daemons included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # the command name sits in parentheses and may hold spaces or parentheses itself
    return raw[raw.rfind(")") + 2 :].split()


def process_table() -> dict[int, int]:
    """Parent pid of every live (non-zombie) process, by pid."""
    table: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields and fields[0] not in ("Z", "X"):
                table[int(name)] = int(fields[1])
    return table


def descendants(root: int, table: dict[int, int] | None = None) -> list[int]:
    """Every live process below `root` (not `root` itself), parents before children."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in sorted(children.get(todo.pop(), [])):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields is not None and fields[0] not in ("Z", "X")


def kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to each pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float = 2.0, *, reaped: bool = False) -> list[int]:
    """Wait up to `timeout` seconds for `pids` to end (`reaped`: and to be reaped by their
    parent, zombies gone too); return the ones still there."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left:
        left = [p for p in left if (os.path.exists(f"/proc/{p}") if reaped else alive(p))]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    return left
