"""The SQLite turn log: schema, version checks, the batched writer, append-only turns."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import db_rows

from personae.errors import UserError
from personae.store import (
    SCHEMA_VERSION,
    RunLog,
    StoreFailure,
    TurnLogWriter,
    check_database,
    episode_key,
    open_database,
)


def _seed_run(path: Path, episodes: tuple[str, ...] = ("ep1",)) -> None:
    """A fresh database with one run and the given episodes."""
    db = open_database(path, create=True)
    with db.conn:
        db.conn.execute("INSERT INTO runs (run_id, scenario, status) VALUES ('r1', 's', 'running')")
        for i, ep in enumerate(episodes):
            db.conn.execute(
                "INSERT INTO episodes (episode_id, run_id, idx, status)"
                " VALUES (?, 'r1', ?, 'pending')",
                (ep, i),
            )
    db.conn.close()


def _turn(episode_id: str, idx: int, text: str = "hello") -> dict[str, object]:
    return {"episode_id": episode_id, "idx": idx, "agent": "a", "role": "client", "text": text}


# -- schema ---------------------------------------------------------------------------------


def test_new_database_has_tables_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    db = open_database(path, create=True)
    try:
        tables = set(db.table_names())
        assert {"runs", "episodes", "turns", "llm_calls", "meta"} <= tables
        assert db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        db.conn.close()
    # WAL is a property of the file: a brand-new connection sees it too.
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        fk_targets = {
            table: {row[2] for row in conn.execute(f"PRAGMA foreign_key_list({table})")}
            for table in ("episodes", "turns", "llm_calls")
        }
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()
    assert fk_targets == {"episodes": {"runs"}, "turns": {"episodes"}, "llm_calls": {"episodes"}}
    assert meta["app"] == "personae"
    assert int(meta["schema_version"]) == SCHEMA_VERSION
    check_database(path)  # a fresh database passes its own check
    RunLog(path).close()


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    open_database(path, create=True).conn.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    conn.close()
    before = path.read_bytes()

    with pytest.raises(UserError, match="newer") as info:
        RunLog(path)
    assert str(path) in str(info.value)
    with pytest.raises(UserError, match="newer"):
        check_database(path)
    with pytest.raises(UserError, match="newer"):
        open_database(path, create=True)
    assert path.read_bytes() == before


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('mine')")
    conn.close()
    before = path.read_bytes()
    for attempt in (lambda: RunLog(path), lambda: check_database(path)):
        with pytest.raises(UserError, match="not a personae run database") as info:
            attempt()
        assert str(path) in str(info.value)
    with pytest.raises(UserError, match="not a personae run database"):
        open_database(path, create=True)
    assert path.read_bytes() == before


def test_sqlite_file_with_foreign_meta_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other_app.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('app', 'someone-else'), ('schema_version', '1')")
    conn.close()
    with pytest.raises(UserError, match="not a personae run database"):
        RunLog(path)


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 50)
    before = path.read_bytes()
    with pytest.raises(UserError, match="not a personae run database"):
        RunLog(path)
    with pytest.raises(UserError, match="not a personae run database"):
        open_database(path, create=True)
    assert path.read_bytes() == before


def test_missing_database_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(UserError, match="not found"):
        RunLog(path)
    with pytest.raises(UserError):
        open_database(path, create=False)
    assert not path.exists()


@pytest.mark.parametrize("name", ["exp #3.db", "what?.db"])
def test_database_path_with_uri_characters_is_readable(tmp_path: Path, name: str) -> None:
    # '#' and '?' are legal in file names; a run database written there must open again
    path = tmp_path / name
    open_database(path, create=True).conn.close()
    check_database(path)
    with RunLog(path) as log:
        assert log.runs() == []
    created = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(name))
    assert created == []  # no stray files next to it


# -- the writer -----------------------------------------------------------------------------


async def test_writer_skips_bad_rows_but_keeps_the_rest_of_the_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "run.db"
    _seed_run(path)
    caplog.set_level(logging.ERROR)
    writer = TurnLogWriter(path)
    batches: list[int] = []
    real_write = writer._write

    def spy(batch: list) -> None:  # type: ignore[type-arg]
        batches.append(len(batch))
        real_write(batch)

    writer._write = spy  # type: ignore[method-assign]
    async with writer:
        # queued without awaiting in between, so the writer drains them as one batch
        writer.insert("turns", _turn("ep1", 0, "first"))
        writer.insert("turns", _turn("ep1", 0, "duplicate index"))  # unique (episode_id, idx)
        writer.insert("turns", _turn("no-such-episode", 0, "orphan"))  # foreign key
        writer.insert("turns", _turn("ep1", 1, "second"))
        await writer.flush()
        assert batches == [4]  # one batch holding good and bad rows
        assert writer.failed_rows == 2
        assert writer.written_rows == 2
        # the writer is still alive after the bad batch
        writer.insert("turns", _turn("ep1", 2, "third"))
        await writer.flush()
        assert writer.written_rows == 3
    assert writer.failed_rows == 2
    texts = [r["text"] for r in db_rows(path, "SELECT text FROM turns ORDER BY idx")]
    assert texts == ["first", "second", "third"]
    dropped = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(dropped) == 2
    assert all("turns" in m for m in dropped)


async def test_writer_writes_everything_queued_before_close(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    _seed_run(path, episodes=("a", "b"))
    async with TurnLogWriter(path, max_batch=7) as writer:
        for i in range(50):
            writer.insert("turns", _turn("a" if i % 2 else "b", i // 2, f"line {i}"))
        writer.upsert("episodes", {"episode_id": "a", "status": "complete", "n_turns": 25})
    assert writer.failed_rows == 0
    assert db_rows(path, "SELECT count(*) AS n FROM turns")[0]["n"] == 50
    row = db_rows(path, "SELECT status, n_turns, run_id FROM episodes WHERE episode_id = 'a'")[0]
    # upsert updates the given columns and leaves the others alone
    assert row == {"status": "complete", "n_turns": 25, "run_id": "r1"}


async def test_turns_are_append_only(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    _seed_run(path)
    async with TurnLogWriter(path) as writer:
        writer.insert("turns", _turn("ep1", 0, "original"))
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"), conn:
            conn.execute("UPDATE turns SET text = 'rewritten' WHERE idx = 0")
    finally:
        conn.close()
    assert db_rows(path, "SELECT text FROM turns")[0]["text"] == "original"


class _FullDisk:
    """A connection that behaves like the real one until `full` is set, then fails every insert
    the way SQLite does on a full disk (SQLITE_FULL)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "full", False)

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "full":
            object.__setattr__(self, name, value)
        else:
            setattr(self._conn, name, value)

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.full and sql.startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)  # type: ignore[arg-type]


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> list[_FullDisk]:
    """Every writer connection opened in the test, each able to run out of disk."""
    import personae.store._writer as writer_module

    made: list[_FullDisk] = []
    real = writer_module.connect

    def connect(path: Path) -> _FullDisk:
        made.append(_FullDisk(real(path)))
        return made[-1]

    monkeypatch.setattr(writer_module, "connect", connect)
    return made


async def test_queued_rows_are_snapshots_not_references(tmp_path: Path) -> None:
    # The runner queues an episode row and then updates the same dict when the episode ends;
    # the queued "running" row must not turn into "complete" ahead of the episode's turns.
    path = tmp_path / "run.db"
    _seed_run(path)
    async with TurnLogWriter(path) as writer:
        row: dict[str, object] = {"episode_id": "ep1", "status": "running"}
        writer.upsert("episodes", row)
        row.update(status="complete", n_turns=1)
        await writer.flush()
        assert db_rows(path, "SELECT status, n_turns FROM episodes") == [
            {"status": "running", "n_turns": None}
        ]
        writer.insert("turns", _turn("ep1", 0))
        writer.upsert("episodes", row)
    assert db_rows(path, "SELECT status, n_turns FROM episodes") == [
        {"status": "complete", "n_turns": 1}
    ]


@pytest.mark.parametrize("same_batch", [True, False])
async def test_an_episode_that_lost_a_row_is_stored_failed_not_complete(
    tmp_path: Path, same_batch: bool
) -> None:
    path = tmp_path / "run.db"
    _seed_run(path, episodes=("ep1", "ep2"))
    async with TurnLogWriter(path) as writer:
        writer.insert("turns", _turn("ep1", 0, "kept"))
        writer.insert("turns", _turn("ep1", 0, "clash"))  # unique (episode_id, idx): dropped
        writer.insert("turns", _turn("ep2", 0, "fine"))
        if not same_batch:
            await writer.flush()
        for ep in ("ep1", "ep2"):
            writer.upsert("episodes", {"episode_id": ep, "status": "complete", "n_turns": 1})
    assert writer.failure is None  # a bad row is not a failure of the database
    rows = {r["episode_id"]: r for r in db_rows(path, "SELECT * FROM episodes")}
    assert rows["ep2"]["status"] == "complete"
    assert rows["ep1"]["status"] == "failed"
    assert "turns row" in rows["ep1"]["error"] and "UNIQUE" in rows["ep1"]["error"]
    assert set(writer.lost_episodes) == {"ep1"}


async def test_disk_full_stops_the_writer_and_says_what_was_not_saved(
    tmp_path: Path, full_disk: list[_FullDisk]
) -> None:
    path = tmp_path / "run.db"
    _seed_run(path, episodes=("ep1", "ep2", "ep3"))
    writer = TurnLogWriter(path)
    with pytest.raises(StoreFailure) as at_close:  # nobody may miss it
        async with writer:
            writer.insert("turns", _turn("ep1", 0, "saved"))
            await writer.flush()
            full_disk[0].full = True
            writer.insert("turns", _turn("ep1", 1, "lost"))
            writer.insert("turns", _turn("ep2", 0, "lost too"))
            with pytest.raises(StoreFailure) as info:
                await writer.flush()
            failure = info.value
            assert failure.reason == "disk full"
            assert failure.episodes == ["ep1", "ep2"]
            line = failure.line()
            assert line.startswith(f"{path}: disk full: 2 episodes not saved")
            assert "free space" in line and f"--resume {path}" in line
            assert writer.failure is not None
            with pytest.raises(StoreFailure):
                await writer.room()  # producers learn it at their next turn
            # Space comes back, but nothing more may land: ep1's "complete" would hide a lost turn.
            full_disk[0].full = False
            writer.upsert("episodes", {"episode_id": "ep1", "status": "complete", "n_turns": 2})
            writer.insert("turns", _turn("ep3", 0, "after the failure"))
    assert at_close.value.episodes == ["ep1", "ep2", "ep3"]
    assert db_rows(path, "SELECT text FROM turns") == [{"text": "saved"}]
    assert {r["status"] for r in db_rows(path, "SELECT status FROM episodes")} == {"pending"}


async def test_close_reports_a_failure_nobody_flushed(
    tmp_path: Path, full_disk: list[_FullDisk]
) -> None:
    path = tmp_path / "run.db"
    _seed_run(path)
    with pytest.raises(StoreFailure, match="disk full: 1 episode not saved"):
        async with TurnLogWriter(path) as writer:
            full_disk[0].full = True
            writer.insert("turns", _turn("ep1", 0))


async def test_a_value_sqlite_cannot_hold_fails_the_writer_loudly(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    _seed_run(path)
    async with TurnLogWriter(path) as writer:
        writer.insert("turns", _turn("ep1", 0, "before"))
        await writer.flush()
        writer.insert("llm_calls", {"call_id": "c", "episode_id": "ep1", "seed": 2**63})
        writer.insert("turns", _turn("ep1", 1, "behind the bad value"))
        with pytest.raises(StoreFailure, match="OverflowError") as info:
            await writer.flush()
        assert info.value.episodes == ["ep1"]
        with pytest.raises(StoreFailure):
            await writer.close()  # raised once more for whoever closes; then it is reported
    assert db_rows(path, "SELECT text FROM turns") == [{"text": "before"}]


async def test_room_is_immediate_under_the_bound_and_waits_above_it(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    _seed_run(path)
    async with TurnLogWriter(path, max_pending=10) as writer:
        for i in range(5):
            writer.insert("turns", _turn("ep1", i))
        await writer.room()  # under the bound: returns without letting the writer run
        assert db_rows(path, "SELECT count(*) AS n FROM turns") == [{"n": 0}]
        for i in range(5, 50):
            writer.insert("turns", _turn("ep1", i))
        await writer.room()  # over it: returns once the queue is back under the bound
        assert db_rows(path, "SELECT count(*) AS n FROM turns")[0]["n"] >= 40
    assert db_rows(path, "SELECT count(*) AS n FROM turns") == [{"n": 50}]


async def test_rows_are_written_in_the_order_queued(tmp_path: Path) -> None:
    # Different tables and column sets interleave; the database must hold them as queued
    # (an episode row before its turns, the last upsert of a row winning).
    path = tmp_path / "run.db"
    _seed_run(path, episodes=())
    async with TurnLogWriter(path, max_batch=3) as writer:
        for ep in range(4):
            writer.upsert("episodes", {"episode_id": f"e{ep}", "run_id": "r1", "idx": ep})
            writer.upsert("episodes", {"episode_id": f"e{ep}", "status": "running"})
            for t in range(3):
                writer.insert("turns", _turn(f"e{ep}", t, f"{ep}.{t}"))
            writer.upsert("episodes", {"episode_id": f"e{ep}", "status": "complete"})
    assert writer.failed_rows == 0
    statuses = db_rows(path, "SELECT DISTINCT status FROM episodes")
    assert statuses == [{"status": "complete"}]
    texts = [r["text"] for r in db_rows(path, "SELECT text FROM turns ORDER BY id")]
    assert texts == [f"{ep}.{t}" for ep in range(4) for t in range(3)]


# -- episode ids ----------------------------------------------------------------------------


def test_episode_key_is_stable_and_depends_on_every_input() -> None:
    condition = {
        "client": {"persona": "margaret_grief", "style": "plain"},
        "counselor": {"persona": "cbt"},
    }
    key = episode_key("counseling_cbt", condition, 7, 0)
    # stable: same inputs (dict order irrelevant) give the same id
    reordered = {
        "counselor": {"persona": "cbt"},
        "client": {"style": "plain", "persona": "margaret_grief"},
    }
    assert episode_key("counseling_cbt", reordered, 7, 0) == key
    assert len(key) == 16 and int(key, 16) >= 0
    variants = [
        episode_key("counseling_cbt2", condition, 7, 0),
        episode_key(
            "counseling_cbt",
            {**condition, "client": {"persona": "margaret_grief", "style": "upset"}},
            7,
            0,
        ),
        episode_key(
            "counseling_cbt",
            {**condition, "client": {"persona": "kenji_retirement", "style": "plain"}},
            7,
            0,
        ),
        episode_key("counseling_cbt", condition, 8, 0),
        episode_key("counseling_cbt", condition, 7, 1),
    ]
    assert key not in variants
    assert len(set(variants)) == len(variants)


def test_schema_creation_is_one_transaction(tmp_path: Path, monkeypatch: Any) -> None:
    """A creation that dies half-way leaves no half schema behind, and the next run simply
    creates the database (as after a kill -9 during creation)."""
    import personae.store._schema as schema

    def boom(db: Any) -> None:
        raise RuntimeError("killed half-way")

    db = tmp_path / "half.db"
    with monkeypatch.context() as patch:
        patch.setattr(schema, "_key_interventions", boom)
        with pytest.raises(RuntimeError):
            open_database(db, create=True)
    if db.exists():
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        conn.close()
    open_database(db, create=True).conn.close()  # nothing to clean up by hand
    check_database(db)
