"""The Ray executor on a local Ray (`ray.init(num_cpus=2)`, no cluster): the same episodes and
turns as one process, one progress bar, a killed worker restarted without re-running its complete
episodes, a killed driver resumed, an unreachable address refused. Skipped without Ray."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, cli, db_rows, log_problems, tree_snapshot

import personae
from personae.runner._ray import shard_folder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

STYLES = ["plain", "upset", "verbose", "reserved", "tangent", "pleasing"]
TURN = (
    "episode_id, idx, agent, role, kind, text, audience_json, hidden_json, decision_json, call_id"
)

DYING = '''
"""Scripted replies; SIGKILLs its own process once, at its AFTER-th call, if it can remove the
marker file (so exactly one worker dies, once)."""
import os, signal
from pathlib import Path
from personae.backends import ScriptedBackend, register_backend

class Dying(ScriptedBackend):
    def __init__(self, marker, after, latency_s):
        super().__init__(latency_s=latency_s)
        self.marker, self.after, self.calls = Path(marker), after, 0

    async def generate(self, request):
        self.calls += 1
        if self.calls == self.after:
            try:
                self.marker.unlink()
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return await super().generate(request)

@register_backend("dying")
def _dying(target, options):
    """Scripted replies that kill their process once."""
    return Dying(target, int(options["after"]), float(options.get("latency_s", 0)))
'''


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray for this module's tests; its GCS address."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def scenario(write_scenario: Callable[..., Path]) -> Callable[..., Path]:
    def make(backend: str = "scripted", repeats: int = 2, **extra: Any) -> Path:
        return write_scenario(
            repeats=repeats,
            backend=backend,
            graph={"kind": "dyadic", "opener": "counselor", "max_turns": 4},
            grid={"client.style": STYLES},
            **extra,
        )

    return make


def turns(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(conn.execute(f"SELECT {TURN} FROM turns").fetchall(), key=repr)
    finally:
        conn.close()


def test_two_workers_give_the_episodes_and_turns_of_one_process(
    cluster: str, scenario: Callable[..., Path], tmp_path: Path, capsys: Any
) -> None:
    path = scenario()
    alone = tmp_path / "alone.db"
    personae.run(path, db=alone)
    db = tmp_path / "ray.db"
    capsys.readouterr()
    result = personae.run(path, db=db, executor="ray", workers=2, progress=True)
    bar = capsys.readouterr().err
    assert (result.episodes, result.complete, result.turns, result.status) == (
        12,
        12,
        48,
        "complete",
    )
    assert "12/12 episodes" in bar  # one bar over both workers
    assert turns(db) == turns(alone) and log_problems(db, all_complete=True) == []
    shards = sorted(p.name for p in shard_folder(db).glob("*.db"))
    assert shards == ["1-of-2.db", "2-of-2.db"]
    assert {r["shard"] for r in db_rows(db, "SELECT shard FROM runs")} == {"1/2", "2/2"}
    again = personae.run(path, db=db, executor="ray", workers=2)  # nothing left to do
    assert (again.episodes, again.skipped) == (0, 12)
    # and the merged database resumes in one process as the whole plan
    local = personae.run(resume=db)
    assert (local.episodes, local.skipped) == (0, 12)


def test_a_killed_worker_is_restarted_and_keeps_its_complete_episodes(
    cluster: str, scenario: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "dying.py").write_text(DYING, encoding="utf-8")
    marker = tmp_path / "kill-once"
    marker.write_text("")
    path = scenario(
        backend=f"dying:{marker}?after=25&latency_s=0.01", repeats=4, imports=["dying.py"]
    )
    notes: list[str] = []
    db = tmp_path / "run.db"
    result = personae.run(path, db=db, executor="ray", workers=2, concurrency=2,
                          notify=notes.append)  # fmt: skip
    assert not marker.exists()  # one worker killed itself
    assert (result.complete, result.status) == (24, "complete")
    assert [n for n in notes if "died" in n and "restarting it" in n], notes
    assert log_problems(db, all_complete=True) == []
    alone = tmp_path / "alone.db"
    personae.run(scenario(repeats=4), db=alone)
    assert turns(db) == turns(alone)  # no turn lost or duplicated
    # the dead worker's complete episodes were kept, not run again by its replacement
    runs = db_rows(db, "SELECT run_id, shard, status FROM runs ORDER BY created_at")
    dead = [r for r in runs if r["status"] == "interrupted"]
    assert len(runs) == 3 and len(dead) == 1
    kept = db_rows(db, "SELECT 1 FROM episodes WHERE run_id = ?", dead[0]["run_id"])
    assert kept, "the killed worker had completed episodes before it died"


def _unlocked(lock: Path) -> bool:
    if not lock.exists():
        return True
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def test_a_killed_driver_resumes_with_only_the_unfinished_episodes_on_more_workers(
    cluster: str, scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = scenario(backend="scripted?latency_s=0.2", repeats=4)
    db = tmp_path / "run.db"
    argv = [sys.executable, "-m", "personae", "run", str(path), "--db", str(db), "-q",
            "--executor", "ray", "--workers", "2", "--address", cluster,
            "--concurrency", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    complete = 0
    shards = [shard_folder(db) / f"{k}-of-2.db" for k in (1, 2)]
    while time.monotonic() < deadline and driver.poll() is None and complete < 4:
        if db.exists() and all(s.exists() for s in shards):  # the driver merged once
            complete = sum(
                db_rows(s, "SELECT count(*) AS n FROM episodes WHERE status = 'complete'")[0]["n"]
                for s in shards
            )
        time.sleep(0.1)
    assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert 4 <= complete < 24
    # Ray ends a dead driver's actors; their shard locks are then free
    locks = [shard_folder(db) / f"{k}-of-2.db.lock" for k in (1, 2)]
    while not all(_unlocked(lock) for lock in locks):
        assert time.monotonic() < deadline, "the killed driver's workers are still running"
        time.sleep(0.2)
    result = personae.run(resume=db, executor="ray", workers=3)  # any number of workers
    assert result.status == "complete"
    assert result.skipped >= complete and result.skipped + result.episodes == 24
    assert log_problems(db, all_complete=True) == []
    alone = tmp_path / "alone.db"
    personae.run(scenario(repeats=4), db=alone)
    assert turns(db) == turns(alone)


def test_an_unreachable_ray_address_is_one_line_and_writes_nothing(
    scenario: Callable[..., Path], tmp_path: Path, capsys: Any
) -> None:
    path = scenario()
    before = tree_snapshot(tmp_path)
    argv = ["run", str(path), "--db", str(tmp_path / "run.db"), "-q", "--executor", "ray",
            "--address", "127.0.0.1:9"]  # fmt: skip
    code, _, stderr = cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "cannot reach the Ray cluster at '127.0.0.1:9'" in stderr and "ray start" in stderr
    assert tree_snapshot(tmp_path) == before
