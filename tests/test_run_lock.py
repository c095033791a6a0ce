"""One run per database at a time: a second run is refused with who holds it, and the lock of
a run killed with SIGKILL is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import personae
from personae.cli import main
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


# -- through the runner -----------------------------------------------------------------------


def _run_command(scenario: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "personae", "run", str(scenario), "--db", str(db), "-q"]


def test_a_second_run_into_the_same_database_is_refused_and_the_first_is_intact(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_scenario(repeats=12, backend="scripted?latency_s=0.1")
    db = tmp_path / "shared.db"
    # two at a time: the first run lasts a few seconds, long enough to be found running
    slow = [*_run_command(scenario, db), "--concurrency", "2"]
    first = subprocess.Popen(slow, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "shared.db.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(SystemExit) as info:
            main(["run", str(scenario), "--db", str(db), "-q"])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2
        assert f"another run is writing to this database (pid {first.pid} on " in line
        assert first.poll() is None, "the first run should still be going"
    finally:
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    with personae.RunLog(db) as log:
        assert log.summary()["complete"] == 12
        assert log.summary()["turns"] == 12 * 6  # no episode restarted by the second run
    assert not (tmp_path / "shared.db.lock").exists()


def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = write_scenario(repeats=40, backend="scripted?latency_s=0.05")
    db = tmp_path / "killed.db"
    proc = subprocess.Popen(_run_command(scenario, db), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            db.exists()
            and sqlite3.connect(db)
            .execute("SELECT count(*) FROM sqlite_master WHERE name = 'turns'")
            .fetchone()[0]
        ):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "killed.db.lock").read_text())["pid"] == proc.pid
    result = personae.run(scenario, db=db)
    assert result.complete + result.skipped == 40 and result.failed == 0
