"""One run per database at a time: a second run is refused with who holds it, and the lock of
a run killed with SIGKILL is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from personae.errors import UserError
from personae.store import RunLock

HOLD = """
import sys, time
from pathlib import Path
from personae.store import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(db: Path) -> subprocess.Popen[str]:
    """Another process holding the lock of `db` (until it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    other = _holder(db)
    try:
        with pytest.raises(UserError) as info:
            RunLock(db).acquire()
        line = info.value.line()
        assert line.startswith(f"{db}: another run is writing to this database (pid {other.pid}")
        assert socket.gethostname() in line and "another --db" in line
    finally:
        other.kill()
        other.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    other = _holder(db)
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    lock_file = tmp_path / "run.db.lock"
    assert json.loads(lock_file.read_text())["pid"] == other.pid  # left behind by the kill
    with RunLock(db):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()  # released: removed


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with RunLock(db), pytest.raises(UserError, match=f"pid {os.getpid()}"):
        RunLock(db).acquire()
    with RunLock(db):  # released above: free again
        pass
