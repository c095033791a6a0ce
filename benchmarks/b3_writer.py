"""B3 writer: turns/s the turn log sustains with batched writes, what a turn costs the episode
that produces it (producers only enqueue), and how far committed rows trail the produced ones
while the event loop is CPU-bound (a fast backend), which is what a kill -9 loses.

Side by side in one run: the batched `TurnLogWriter` vs. a naive writer that commits every row
in its own transaction (what a logger without batching does); and for the lag, the
`TurnLogWriter` (batches written on the event-loop thread) vs. a writer thread that executes
each row (the previous design: each row needs the GIL handed back by the busy loop). The lag is
worst on an otherwise idle machine; on a loaded one the OS interleaves the threads more.

    .venv/bin/python benchmarks/b3_writer.py [--turns 20000] [--lag-seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from _common import report

from personae.store import TurnLogWriter, open_database
from personae.store._schema import connect

PROMPT = "Transcript of a counseling session. " * 60  # ~2 KB, like a mid-episode prompt


def _rows(turns: int) -> list[tuple[str, dict[str, object]]]:
    rows: list[tuple[str, dict[str, object]]] = []
    for t in range(turns):
        episode, turn = f"e{t // 10}", t % 10
        call = f"{episode}-{turn:04d}"
        rows.append(
            (
                "llm_calls",
                {
                    "call_id": call,
                    "episode_id": episode,
                    "turn_idx": turn,
                    "prompt": PROMPT,
                    "output": "A reply.",
                    "seed": t,
                    "prompt_tokens": 500,
                    "completion_tokens": 20,
                },
            )
        )
        rows.append(
            (
                "turns",
                {
                    "episode_id": episode,
                    "idx": turn,
                    "agent": "client",
                    "role": "client",
                    "text": "A reply.",
                    "call_id": call,
                },
            )
        )
    return rows


def _prepare(path: Path, turns: int) -> None:
    db = open_database(path, create=True)
    db["runs"].insert({"run_id": "r", "scenario": "bench"})
    db["episodes"].insert_all(
        {"episode_id": f"e{e}", "run_id": "r", "idx": e} for e in range((turns + 9) // 10)
    )
    db.conn.commit()
    db.conn.close()


async def _batched(path: Path, rows: list[tuple[str, dict[str, object]]]) -> tuple[float, float]:
    async with TurnLogWriter(path) as writer:
        start = time.perf_counter()
        enqueue = 0.0
        for i in range(0, len(rows), 2):  # one turn = its call + its turn row
            t0 = time.perf_counter()
            writer.insert(*rows[i])
            writer.insert(*rows[i + 1])
            enqueue += time.perf_counter() - t0
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the writer run, as episodes do between turns
        await writer.flush()
        total = time.perf_counter() - start
    return total, enqueue


def _naive(path: Path, rows: list[tuple[str, dict[str, object]]]) -> float:
    conn = connect(path)
    start = time.perf_counter()
    for table, row in rows:
        cols = list(row)
        with conn:
            conn.execute(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [row[c] for c in cols],
            )
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


class _Writer(Protocol):
    def insert(self, table: str, row: dict[str, Any]) -> None: ...
    async def room(self) -> None: ...


class _ThreadWriter:
    """The previous design, for comparison: a thread drains the queue, one execute per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1)

    async def __aenter__(self) -> _ThreadWriter:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._pool, connect, self.path)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queue.put_nowait(None)
        await self._task
        self._pool.shutdown()

    def insert(self, table: str, row: dict[str, Any]) -> None:
        self._queue.put_nowait((table, dict(row)))

    async def room(self) -> None:
        return None  # unbounded, as it was

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            rows = [op for op in batch if op is not None]
            await loop.run_in_executor(self._pool, self._write, rows)
            if len(rows) < len(batch):
                return

    def _write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        with self._conn:
            for table, row in rows:
                cols = list(row)
                self._conn.execute(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                    f"({', '.join('?' * len(cols))})",
                    [row[c] for c in cols],
                )


async def _lag(path: Path, writer: Any, seconds: float) -> dict[str, float]:
    """Max and mean age of the oldest uncommitted turn while 64 CPU-bound episodes produce."""
    reader = sqlite3.connect(path)
    produced_at: list[float] = []
    lags: list[float] = []
    stop = time.perf_counter() + seconds

    async def episode(e: int, w: _Writer) -> None:
        t = 0
        while time.perf_counter() < stop:
            busy = time.perf_counter() + 0.0003  # a fast backend's turn: ~0.3 ms of loop CPU
            while time.perf_counter() < busy:
                pass
            episode_id, call = f"e{e % 1000}", f"e{e}-{t:05d}"
            w.insert(
                "llm_calls",
                {
                    "call_id": call,
                    "episode_id": episode_id,
                    "turn_idx": t,
                    "prompt": PROMPT,
                    "output": "A reply.",
                    "seed": t,
                },
            )
            w.insert(
                "turns",
                {
                    "episode_id": episode_id,
                    "idx": t + 100_000 * (e // 1000),
                    "agent": "client",
                    "role": "client",
                    "text": "A reply.",
                    "call_id": call,
                },
            )
            produced_at.append(time.perf_counter())
            t += 1
            await w.room()
            await asyncio.sleep(0)

    async def probe() -> None:
        while time.perf_counter() < stop:
            committed = reader.execute("SELECT coalesce(max(id), 0) FROM turns").fetchone()[0]
            lags.append(
                time.perf_counter() - produced_at[committed]
                if committed < len(produced_at)
                else 0.0
            )
            await asyncio.sleep(0.05)

    start = time.perf_counter()
    async with writer as w:
        await asyncio.gather(probe(), *(episode(e, w) for e in range(64)))
        produced = time.perf_counter() - start
    drained = time.perf_counter() - start
    reader.close()
    # rows still queued when production stopped trail by at least the time to drain them
    worst = max([*lags, drained - produced])
    return {
        "turns": len(produced_at),
        "turns/s produced": len(produced_at) / produced,
        "max lag s": worst,
        "mean lag s": sum(lags) / max(len(lags), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--lag-seconds", type=float, default=6.0)
    args = parser.parse_args()
    rows = _rows(args.turns)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "batched.db", Path(tmp) / "naive.db"
        _prepare(a, args.turns)
        _prepare(b, args.turns)
        total, enqueue = asyncio.run(_batched(a, rows))
        naive = _naive(b, rows)
    n = args.turns
    table: list[dict[str, Any]] = [
        {
            "writer": "batched TurnLogWriter",
            "turns/s": n / total,
            "ms/turn": total / n * 1e3,
            "ms/turn to enqueue": enqueue / n * 1e3,
        },
        {
            "writer": "one transaction per row",
            "turns/s": n / naive,
            "ms/turn": naive / n * 1e3,
            "ms/turn to enqueue": naive / n * 1e3,
        },
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (
            ("lag: TurnLogWriter (on the loop)", TurnLogWriter),
            ("lag: writer thread, execute per row", _ThreadWriter),
        ):
            path = Path(tmp) / f"lag-{len(table)}.db"
            _prepare(path, 1000 * 10)
            lag = asyncio.run(_lag(path, make(path), args.lag_seconds))
            table.append({"writer": name, "turns/s": lag["turns/s produced"], **lag})
    new, old = table[2]["max lag s"], table[3]["max lag s"]
    report(
        "b3_writer",
        f"B3 writer ({n:,} turns, each a turn row + an llm_calls row with a "
        "2 KB prompt; lag rows: 64 CPU-bound episodes, 0.3 ms of loop CPU per turn, "
        f"{args.lag_seconds:g} s)",
        ["writer", "turns/s", "ms/turn", "ms/turn to enqueue", "max lag s", "mean lag s"],
        table,
        {
            "batched / naive throughput": naive / total,
            "writer thread / TurnLogWriter max commit lag": old / max(new, 1e-9),
            "ms/turn": "the batched writer writes on the event-loop thread, so this is what "
            "the loop pays per turn (enqueueing is part of it)",
            "max lag s": "age of the oldest produced turn not yet committed (what a kill -9 "
            "would lose); worst on an otherwise idle machine",
        },
    )


if __name__ == "__main__":
    main()
