"""The single writer: one task owns the connection and writes batches in one transaction.

Producers call `insert`/`upsert` (never blocking on SQLite); a background task drains the queue,
writes everything pending inside one transaction on a dedicated thread, and, if a batch fails,
retries its rows one by one so that one bad row is logged and skipped instead of losing the batch
or killing the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personae.store._schema import connect, primary_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Op:
    kind: Literal["insert", "upsert"]
    table: str
    row: dict[str, Any]


class TurnLogWriter:
    """Batched, crash-tolerant writes to a turn-log database.

    Use as `async with TurnLogWriter(path) as writer:`; every row queued before the block exits
    is written. `failed_rows` counts rows that could not be written (each is logged).
    """

    def __init__(self, path: Path, *, max_batch: int = 1000) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.failed_rows = 0
        self.written_rows = 0
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="turnlog")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TurnLogWriter:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._pool, connect, self.path)
        self._task = asyncio.create_task(self._run(), name="turnlog-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Queue an insert of `row` into `table`."""
        self._queue.put_nowait(_Op("insert", table, row))

    def upsert(self, table: str, row: dict[str, Any]) -> None:
        """Queue an insert-or-update of `row` (by the table's primary key)."""
        self._queue.put_nowait(_Op("upsert", table, row))

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        await self._queue.join()

    async def close(self) -> None:
        """Write what is pending, stop the task and close the connection."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._pool, self._conn.close)
            self._conn = None
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            batch: list[_Op] = []
            taken = 1
            if first is None:
                stop = True
            else:
                batch.append(first)
            while not stop and len(batch) < self.max_batch and not self._queue.empty():
                op = self._queue.get_nowait()
                taken += 1
                if op is None:
                    stop = True
                else:
                    batch.append(op)
            try:
                if batch:
                    await loop.run_in_executor(self._pool, self._write, batch)
            except Exception:  # the writer must never die: log and keep going
                log.exception("turn-log writer failed on a batch of %d rows", len(batch))
                self.failed_rows += len(batch)
            finally:
                for _ in range(taken):
                    self._queue.task_done()

    def _write(self, batch: list[_Op]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            with conn:
                for op in batch:
                    _execute(conn, op)
            self.written_rows += len(batch)
        except sqlite3.Error:
            for op in batch:
                try:
                    with conn:
                        _execute(conn, op)
                    self.written_rows += 1
                except sqlite3.Error as exc:
                    self.failed_rows += 1
                    log.error("turn log: dropped a %s row (%s): %r", op.table, exc, op.row)


def _execute(conn: sqlite3.Connection, op: _Op) -> None:
    cols = list(op.row)
    names = ", ".join(f"[{c}]" for c in cols)
    marks = ", ".join("?" for _ in cols)
    sql = f"INSERT INTO [{op.table}] ({names}) VALUES ({marks})"
    if op.kind == "upsert":
        pk = primary_key(op.table)
        updates = ", ".join(f"[{c}]=excluded.[{c}]" for c in cols if c != pk)
        sql += (
            f" ON CONFLICT([{pk}]) DO UPDATE SET {updates}"
            if updates
            else " ON CONFLICT DO NOTHING"
        )
    conn.execute(sql, [op.row[c] for c in cols])
