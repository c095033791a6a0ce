"""Durability under load and faults: commits keep up with a CPU-bound run, a full disk stops
the run with one line and loses nothing a rerun cannot redo, and a kill -9 half-way through a
CPU-bound run loses only the episodes in flight and about a second of work."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _mounts import remount, tmpfs
from conftest import base_scenario, log_problems

import personae
from personae.cli import main
from personae.store import StoreFailure, TurnLogWriter, open_database


def _statuses(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT status, count(*) FROM episodes GROUP BY status"))
    finally:
        conn.close()


# -- commit lag ------------------------------------------------------------------------------


@pytest.fixture
def long_gil_switch() -> Iterator[None]:
    # A writer that must get the GIL handed over per row falls behind a CPU-bound loop by a
    # switch interval per handover; a long interval makes that visible on any machine.
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    yield
    sys.setswitchinterval(old)


async def test_commits_trail_a_cpu_bound_producer_by_under_a_second(
    tmp_path: Path, long_gil_switch: None
) -> None:
    path = tmp_path / "lag.db"
    db = open_database(path, create=True)
    with db.conn:
        db.conn.execute("INSERT INTO runs (run_id) VALUES ('r')")
        db.conn.executemany(
            "INSERT INTO episodes (episode_id, run_id, idx) VALUES (?, 'r', ?)",
            [(f"e{i}", i) for i in range(64)],
        )
    db.conn.close()
    reader = sqlite3.connect(path)
    produced_at: list[float] = []  # when the n-th turn row was queued
    lags: list[float] = []
    prompt = "Transcript so far. " * 100
    stop = time.perf_counter() + 3.0

    async def episode(e: int, writer: TurnLogWriter) -> None:
        t = 0
        while time.perf_counter() < stop:
            busy = time.perf_counter() + 0.0003  # the CPU a fast backend's turn costs the loop
            while time.perf_counter() < busy:
                pass
            call = f"e{e}-{t}"
            writer.insert("llm_calls", {"call_id": call, "episode_id": f"e{e}", "prompt": prompt})
            writer.insert("turns", {"episode_id": f"e{e}", "idx": t, "text": "ok", "call_id": call})
            produced_at.append(time.perf_counter())
            t += 1
            await writer.room()
            await asyncio.sleep(0)

    async def probe() -> None:
        while time.perf_counter() < stop:
            committed = reader.execute("SELECT coalesce(max(id), 0) FROM turns").fetchone()[0]
            if committed < len(produced_at):  # the oldest row not yet committed, and its age
                lags.append(time.perf_counter() - produced_at[committed])
            await asyncio.sleep(0.05)

    async with TurnLogWriter(path) as writer:
        await asyncio.gather(probe(), *(episode(e, writer) for e in range(64)))
    reader.close()
    assert len(produced_at) > 1000 and len(lags) > 10
    assert max(lags) < 1.5, f"committed rows trailed by up to {max(lags):.2f} s"


# -- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_stops_the_run_with_one_line_and_a_rerun_recovers_every_episode(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = write_scenario(repeats=120)
    with tmpfs(tmp_path / "small", "640k") as disk:
        db = disk / "run.db"
        proc = subprocess.run(
            [sys.executable, "-m", "personae", "run", str(scenario), "--db", str(db), "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()  # one line: no traceback, no log noise
        assert line.startswith(f"error: {db}: disk full: ") and "episodes not saved" in line
        assert f"free space, then resume with: personae run --resume {db}" in line
        assert "episodes," not in proc.stdout  # no success summary
        assert log_problems(db) == []  # nothing 'complete' with rows missing
        saved = _statuses(db).get("complete", 0)
        assert saved < 120
        retry = subprocess.run(proc.args, capture_output=True, text=True, check=False)
        assert retry.returncode == 2 and retry.stderr.count("\n") == 1, retry.stderr
        assert "disk full" in retry.stderr  # still full: the same one line, from the start
        with pytest.raises(StoreFailure) as info:  # the same through the Python API
            personae.run(scenario, db=db)
        assert info.value.reason == "disk full"
        remount(disk, "size=64m")  # space freed
        again = personae.run(scenario, db=db)
        assert again.failed == 0 and again.skipped + again.complete == 120
        assert again.skipped >= saved
        assert log_problems(db) == []
        assert _statuses(db) == {"complete": 120}


def test_a_disk_too_full_to_create_the_database_leaves_nothing(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_scenario(repeats=2)
    with tmpfs(tmp_path / "tiny", "12k") as disk:
        filler = disk / "filler"
        with filler.open("wb") as out, pytest.raises(OSError):
            out.write(b"x" * 1_000_000)
        before = sorted(p.name for p in disk.iterdir())
        db = disk / "logs" / "run.db"
        with pytest.raises(SystemExit) as info:
            main(["run", str(scenario), "--db", str(db), "-q"])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2
        assert line.startswith(f"error: {db}: cannot create the database: disk full"), line
        assert sorted(p.name for p in disk.iterdir()) == before


class _FillingDisk:
    """A writer connection whose disk fills up after `room` inserts (SQLITE_FULL after that)."""

    room = 150

    def __init__(self, conn: sqlite3.Connection) -> None:
        object.__setattr__(self, "_conn", conn)

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._conn, name, value)

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql.startswith("INSERT"):
            if type(self).room <= 0:
                raise sqlite3.OperationalError("database or disk is full")
            type(self).room -= 1
        return self._conn.execute(sql, *args)  # type: ignore[arg-type]


def test_an_injected_disk_full_is_one_line_exit_2_and_a_rerun_recovers(
    write_scenario: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import personae.store._writer as writer_module

    real = writer_module.connect
    monkeypatch.setattr(writer_module, "connect", lambda path: _FillingDisk(real(path)))
    monkeypatch.setattr(_FillingDisk, "room", 150)  # the run row, 40 episode rows, some turns
    scenario = write_scenario(repeats=40)
    db = tmp_path / "run.db"
    with pytest.raises(SystemExit) as info:
        main(["run", str(scenario), "--db", str(db), "-q"])
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert info.value.code == 2 and "Traceback" not in captured.out + captured.err
    assert line.startswith(f"error: {db}: disk full: ")
    assert "episodes not saved" in line and f"personae run --resume {db}" in line
    assert "episodes," not in captured.out  # no success summary
    assert log_problems(db) == []
    assert _statuses(db).get("complete", 0) < 40
    monkeypatch.setattr(writer_module, "connect", real)
    again = personae.run(scenario, db=db)
    assert again.failed == 0 and again.skipped + again.complete == 40
    assert _statuses(db) == {"complete": 40} and log_problems(db) == []


# -- kill -9 half-way through a CPU-bound run ------------------------------------------------

#: `personae run`, printing each finished episode (what the progress bar counts) as it happens.
#: The long GIL switch interval stands in for an idle machine, the worst case for a writer that
#: needs the GIL handed over by the CPU-bound event loop (on a busy machine the OS interleaves).
_REPORTING_RUN = """
import sys, time
import personae._progress as progress
from personae.cli import main

sys.setswitchinterval(0.05)

done = progress.RunProgress.episode_done
def report(self, failed):
    done(self, failed)
    n = self._bar.tasks[0].completed
    if n % 25 == 0:  # not every one: each write to stdout lets other threads take the GIL
        print(n, time.monotonic(), flush=True)
progress.RunProgress.episode_done = report
main(sys.argv[1:])
"""


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_sigkill_during_a_cpu_bound_run_loses_only_the_last_second(
    write_scenario: Callable[..., Path], tmp_path: Path, fraction: float
) -> None:
    """kill -9 at 20, 50 and 80 % of a CPU-bound run: at most about a second of finished
    episodes is lost, the log is consistent, and a resume completes every episode."""
    episodes, concurrency = 400, 64
    scenario = write_scenario(
        base_scenario(
            repeats=episodes,
            graph={"kind": "dyadic", "opener": "counselor", "max_turns": 10},
            backend="scripted",  # no latency: the run is CPU-bound
        )
    )
    db = tmp_path / "killed.db"
    args = ["run", str(scenario), "--db", str(db), "-q", "--concurrency", str(concurrency)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _REPORTING_RUN, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first: tuple[int, float] | None = None
    for line in proc.stdout:
        if line.startswith("database:"):  # printed when the run starts
            continue
        count, at = int(line.split()[0]), float(line.split()[1])
        first = first or (count, at)
        if count >= episodes * fraction:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before {fraction:.0%}"
    assert first is not None and count < episodes
    rate = (count - first[0]) / max(killed_at - first[1], 1e-3)  # episodes finished per second
    assert log_problems(db) == []
    saved = _statuses(db).get("complete", 0)
    # what had finished but was not committed: about a second of work at most
    assert count - saved <= rate * 1.5, (
        f"{count} episodes done at the kill, {saved} saved ({rate:.0f} episodes/s)"
    )
    resumed = subprocess.run(
        [sys.executable, "-m", "personae", "run", "--resume", str(db), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _statuses(db) == {"complete": episodes} and log_problems(db) == []
