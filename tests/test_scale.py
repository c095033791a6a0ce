"""Many episodes in flight, crash-safe resume, fault handling and the response cache."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import base_scenario, log_problems

import personae
from personae.backends import (
    Backend,
    GenerationRequest,
    GenerationResult,
    ScriptedBackend,
    register_backend,
)


def _turn_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM turns").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def test_sigkill_at_random_moments_then_resume_loses_and_duplicates_nothing(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = write_scenario(
        base_scenario(
            repeats=40,
            graph={"kind": "dyadic", "opener": "counselor", "max_turns": 8},
            backend="scripted?latency_s=0.05",
        )
    )
    db = tmp_path / "killed.db"
    command = [
        sys.executable,
        "-m",
        "personae",
        "run",
        str(scenario),
        "--db",
        str(db),
        "-q",
        "--concurrency",
        "6",
    ]
    rng = random.Random(1234)
    kills = 0
    for _ in range(5):
        before = _turn_count(db)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # kill only once this process has written turns, so every kill lands mid-run
        while proc.poll() is None and _turn_count(db) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, "the run should have been killed mid-way several times"
    assert db.exists()
    finished = subprocess.run(
        [sys.executable, "-m", "personae", "run", "--resume", str(db), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert log_problems(db, all_complete=True) == []
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM episodes").fetchone()[0] == 40
    assert conn.execute("SELECT count(*) FROM turns").fetchone()[0] == 40 * 8


def test_injected_failures_are_retried_and_failed_episodes_recorded(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = write_scenario(repeats=20, backend="scripted?fail_rate=0.2")
    db = tmp_path / "faults.db"
    result = personae.run(scenario, db=db)
    assert result.episodes == 20 and result.complete + result.failed == 20
    assert result.complete >= 14  # 3 attempts per call: ~1% of calls fail for good
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT max(attempts) FROM llm_calls").fetchone()[0] > 1
    retried = conn.execute("SELECT count(*) FROM llm_calls WHERE attempts > 1").fetchone()[0]
    calls = conn.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    assert 0.1 < retried / calls < 0.35  # ~20 % of first attempts fail
    for status, error, end in conn.execute("SELECT status, error, end_reason FROM episodes"):
        assert status in ("complete", "failed")
        if status == "failed":
            assert end == "error" and "injected failure" in error


def test_a_backend_that_always_fails_fails_every_episode_but_not_the_run(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    result = personae.run(
        write_scenario(repeats=3, backend="scripted?fail_rate=1.0"), db=tmp_path / "x.db"
    )
    assert (result.complete, result.failed) == (0, 3)


class _Counting(Backend):
    """Scripted replies after a short sleep, recording the most requests in flight at once."""

    backend_id = "counting"
    render_mode = "transcript"
    parallelism = 16
    peak = 0
    _now = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        type(self)._now += 1
        type(self).peak = max(type(self).peak, type(self)._now)
        await asyncio.sleep(0.01)
        type(self)._now -= 1
        return GenerationResult(text="Fine.", completion_tokens=1)


@register_backend("counting")
def _counting(target: str | None, options: dict[str, Any]) -> Backend:
    return _Counting()


def test_episodes_run_concurrently_up_to_the_limit(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = write_scenario(repeats=40, backend="counting")
    _Counting.peak = 0
    personae.run(scenario, db=tmp_path / "a.db", concurrency=12)
    assert _Counting.peak == 12
    _Counting.peak = 0
    personae.run(scenario, db=tmp_path / "b.db")  # default: the backend's parallelism
    assert _Counting.peak == 16


def test_cache_serves_identical_requests_in_a_later_run(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = write_scenario(repeats=3)
    first = personae.run(scenario, db=tmp_path / "one.db", cache=True)
    second = personae.run(scenario, db=tmp_path / "two.db", cache=True)
    assert first.cache_hits == 0
    calls = sqlite3.connect(tmp_path / "two.db").execute("SELECT count(*) FROM llm_calls")
    assert second.cache_hits == calls.fetchone()[0] > 0
    texts = [
        sqlite3.connect(tmp_path / name)
        .execute("SELECT episode_id, idx, text FROM turns ORDER BY episode_id, idx")
        .fetchall()
        for name in ("one.db", "two.db")
    ]
    assert texts[0] == texts[1]
    # a different seed changes every request, so nothing is served from the cache
    third = personae.run(scenario, db=tmp_path / "three.db", cache=True, seed=99)
    assert third.cache_hits == 0


def test_a_backend_that_stops_answering_is_named_while_the_run_waits(
    write_scenario: Callable[..., Path], tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """A call that has waited past the threshold shows up as a note ("... is not answering")
    while the run goes on (without a progress bar: one line on stderr per wait)."""
    import personae._progress as progress

    monkeypatch.setattr(progress, "STALL_S", 0.3)
    slow = ScriptedBackend(latency_s=1.2)
    result = personae.run(write_scenario(repeats=1), db=tmp_path / "slow.db", backend=slow)
    assert result.failed == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    # each slow call is named once (the note is not repeated while the same wait goes on)
    assert 1 <= len(notes) <= result.turns
    assert all("scripted is not answering: no reply for" in n for n in notes)
    assert all(n.endswith("1 calls waiting") for n in notes)
