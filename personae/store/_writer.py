"""The single writer: one task owns the connection and writes the queued rows in batches.

Contract:

- `insert`/`upsert` take a snapshot of the row (later changes to the caller's dict are not
  seen) and return at once; they never touch SQLite. Rows are written in the order they were
  queued, a batch per transaction, so the database always holds a prefix of what was queued.
- Batches are written on the event-loop thread: the writer wakes when rows arrive, lets them
  gather for at most `interval` seconds and writes them. Committed rows therefore trail the
  queued ones by about `interval` plus one loop iteration, however busy the loop is (a writer
  thread would be starved of the GIL by a CPU-bound loop).
- The queue is bounded: at most `max_pending` rows wait in memory. `await room()` returns at
  once below the bound and otherwise waits for the writer; producers await it once per turn.
- A bad row (constraint violation, unbindable value) is logged and skipped while the rest of
  its batch is kept, and its episode is remembered: a later `status='complete'` upsert of that
  episode is stored as `status='failed'`, naming the lost row, so no episode is ever `complete`
  with rows missing.
- A failure of the database itself (disk full, I/O error, read-only, locked past the busy
  timeout) or any exception that is not an `sqlite3.Error` is fatal: nothing more is written
  (so no `complete` row can land after lost turns), `failure` holds a `StoreFailure` naming the
  cause and the episodes whose rows were not saved, and `room()`, `flush()` and `close()` raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from personae.store._failures import ROW_ERRORS, StoreFailure, describe
from personae.store._schema import connect, primary_key

log = logging.getLogger(__name__)

#: A queued write: kind, table, snapshot of the row.
_Op = tuple[Literal["insert", "upsert"], str, dict[str, Any]]


class TurnLogWriter:
    """Batched, ordered, loss-aware writes to a turn-log database.

    Use as `async with TurnLogWriter(path) as writer:`; every row queued before the block exits
    is written (or, after a fatal failure, counted in `failure`).

    Args:
        path: The database (already created with `open_database`).
        max_batch: Most rows in one transaction.
        max_pending: Bound on queued rows; above it `room()` waits for the writer. At ~2 KB per
            `llm_calls` row the default holds about 20 MB.
        interval: Most seconds queued rows wait for more to join their batch.
        resume_command: What the user runs after fixing a fatal failure (shown in its message);
            default `personae run --resume PATH`.

    Attributes:
        written_rows: Rows committed.
        failed_rows: Rows not written (skipped bad rows, and rows lost to a fatal failure).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        interval: float = 0.1,
        resume_command: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.interval = interval
        self.resume_command = resume_command or f"personae run --resume {self.path}"
        self.written_rows = 0
        self.failed_rows = 0
        self._pending: deque[_Op] = deque()
        self._queued = 0  # rows ever queued
        self._done = 0  # rows written, skipped or lost: flush() waits on this
        self._lost: dict[str, str] = {}  # episode id -> what was lost (bad rows)
        self._fatal: tuple[str, str] | None = None
        self._unsaved: set[str] = set()  # episodes with rows lost to the fatal failure
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._urgent = False
        self._stopping = False
        self._closed = False
        self._reported = False
        self._unsaved_rows = 0
        self._sql: dict[tuple[str, str, tuple[str, ...]], str] = {}
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TurnLogWriter:
        self._conn = connect(self.path)
        self._conn.isolation_level = None  # explicit BEGIN/COMMIT: one transaction per batch
        self._task = asyncio.create_task(self._run(), name="turnlog-writer")
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            await self.close()
        except StoreFailure as failure:
            if exc is None:
                raise
            if not isinstance(exc, StoreFailure):  # don't hide it behind the other error
                log.error("turn log: %s (while handling %r)", failure.line(), exc)

    # -- producer side (hot path: no SQLite, no awaiting) ----------------------------------

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Queue an insert of a snapshot of `row` into `table`."""
        self._queue(("insert", table, dict(row)))

    def upsert(self, table: str, row: dict[str, Any]) -> None:
        """Queue an insert-or-update of a snapshot of `row` (by the table's primary key)."""
        self._queue(("upsert", table, dict(row)))

    def _queue(self, op: _Op) -> None:
        if self._closed:
            raise RuntimeError(f"the turn-log writer of {self.path} is closed")
        if self._fatal is not None:
            self._count_unsaved([op])
            return
        pending = self._pending
        pending.append(op)
        self._queued += 1
        if len(pending) == 1 or len(pending) >= self.max_batch:
            self._wake.set()

    @property
    def failure(self) -> StoreFailure | None:
        """The fatal write failure, if one happened (with the episodes not saved so far)."""
        if self._fatal is None:
            return None
        reason, remedy = self._fatal
        return StoreFailure(
            reason,
            self.path,
            sorted(self._unsaved),
            self._unsaved_rows,
            fix=f"{remedy}, then resume with: {self.resume_command} (complete episodes are "
            "skipped)",
        )

    @property
    def lost_episodes(self) -> Mapping[str, str]:
        """Episodes that lost a bad row (id -> what was lost); they cannot end `complete`."""
        return self._lost

    async def room(self) -> None:
        """Return at once unless more than `max_pending` rows are queued; then wait.

        Raises:
            StoreFailure: the writer has failed; nothing more will be saved.
        """
        if self._fatal is None and len(self._pending) <= self.max_pending:
            return
        while (
            self._fatal is None
            and len(self._pending) > self.max_pending
            and self._task is not None
            and not self._task.done()
        ):
            self._urgent = True
            self._wake.set()
            await self._progress.wait()
        if (failure := self.failure) is not None:
            raise failure

    async def flush(self) -> None:
        """Wait until everything queued so far is written.

        Raises:
            StoreFailure: the writer has failed; rows were not saved.
        """
        target = self._queued
        while self._done < target and self._task is not None and not self._task.done():
            self._urgent = True
            self._wake.set()
            await self._progress.wait()
        if (failure := self.failure) is not None:
            raise failure

    async def close(self) -> None:
        """Write what is pending, stop the task and close the connection.

        Raises:
            StoreFailure: the writer failed at some point; its message says what was lost.
        """
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if (failure := self.failure) is not None and not self._reported:
            self._reported = True  # closing again (e.g. `async with` after close()) is quiet
            raise failure

    # -- the writer task ---------------------------------------------------------------------

    def _pulse(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            self._pulse()  # nobody waits forever on a writer that has stopped

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._stopping:
                    self._closed = True  # from here on a row queued would never be written
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not (self._stopping or self._urgent or len(self._pending) >= self.max_batch):
                # let a batch gather; bounded so that commits trail the producers by ~interval
                self._wake.clear()
                timer = loop.call_later(self.interval, self._wake.set)
                await self._wake.wait()
                timer.cancel()
            self._urgent = False
            left = len(self._pending)  # this round writes what is queued now
            while left > 0 and self._fatal is None:
                size = min(left, self.max_batch)
                batch = [self._pending.popleft() for _ in range(size)]
                left -= size
                try:
                    self._write(batch)
                except Exception as exc:  # fatal: stop writing, keep the prefix intact
                    self._fail(exc, batch)
                except BaseException:  # interrupted: the batch was rolled back, keep it queued
                    self._pending.extendleft(reversed(batch))
                    raise
                self._done += size
                self._pulse()
                if left:
                    await asyncio.sleep(0)  # let producers run between big batches

    def _fail(self, exc: BaseException, batch: list[_Op]) -> None:
        self._fatal = describe(exc)
        lost = [*batch, *self._pending]
        self._pending.clear()
        self._done += len(lost) - len(batch)  # the batch itself is counted by the caller
        self._count_unsaved(lost)
        # the caller gets the StoreFailure (one line for the user); the traceback is for debugging
        log.debug(
            "turn log %s: %s; stopped writing, %d rows not saved",
            self.path,
            self._fatal[0],
            len(lost),
            exc_info=exc,
        )

    def _count_unsaved(self, ops: list[_Op]) -> None:
        self.failed_rows += len(ops)
        self._unsaved_rows += len(ops)
        for _, _, row in ops:
            episode_id = row.get("episode_id")
            if isinstance(episode_id, str):
                self._unsaved.add(episode_id)

    def _write(self, batch: list[_Op]) -> None:
        """Write `batch` in one transaction; on a bad row, redo it row by row (skipping it)."""
        conn = self._conn
        assert conn is not None, "use the writer as 'async with TurnLogWriter(path)'"
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in batch:
                    self._execute(conn, op)
            except ROW_ERRORS:
                conn.execute("ROLLBACK")
                self._write_row_by_row(conn, batch)
                return
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                    conn.execute("ROLLBACK")
            raise
        self.written_rows += len(batch)

    def _write_row_by_row(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        written = 0
        for op in batch:
            conn.execute("SAVEPOINT one_row")
            try:
                self._execute(conn, op)
                written += 1
            except ROW_ERRORS as exc:
                conn.execute("ROLLBACK TO one_row")
                self._skip(op, exc)
            conn.execute("RELEASE one_row")
        conn.execute("COMMIT")
        self.written_rows += written

    def _skip(self, op: _Op, exc: sqlite3.Error) -> None:
        _, table, row = op
        self.failed_rows += 1
        log.error("turn log: dropped a %s row (%s): %r", table, exc, row)
        episode_id = row.get("episode_id")
        if isinstance(episode_id, str):
            self._lost.setdefault(
                episode_id,
                f"the turn log could not store a {table} row of this episode "
                f"({type(exc).__name__}: {exc}); rerun into this database to redo it",
            )

    def _execute(self, conn: sqlite3.Connection, op: _Op) -> None:
        kind, table, row = op
        if self._lost and table == "episodes" and row.get("status") == "complete":
            lost = self._lost.get(str(row.get("episode_id")))
            if lost is not None:  # never `complete` with a row missing
                row = {**row, "status": "failed", "error": lost}
        cols = tuple(row)
        key = (kind, table, cols)
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = _statement(kind, table, cols)
        conn.execute(sql, tuple(row.values()))


def _statement(kind: str, table: str, cols: tuple[str, ...]) -> str:
    names = ", ".join(f"[{c}]" for c in cols)
    marks = ", ".join("?" for _ in cols)
    sql = f"INSERT INTO [{table}] ({names}) VALUES ({marks})"
    if kind == "upsert":
        pk = primary_key(table)
        updates = ", ".join(f"[{c}]=excluded.[{c}]" for c in cols if c != pk)
        sql += f" ON CONFLICT([{pk}]) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
    return sql
