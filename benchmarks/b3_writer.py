"""B3 writer: turns/s the turn log sustains with batched writes, and what a turn costs the
episode that produces it (the writer is off the hot path: producers only enqueue).

Side by side in one run: the batched `TurnLogWriter` vs. a naive writer that commits every row
in its own transaction (what a logger without batching does).

    .venv/bin/python benchmarks/b3_writer.py [--turns 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import report

from personae.store import TurnLogWriter, open_database
from personae.store._schema import connect

PROMPT = "Transcript of a counseling session. " * 60  # ~2 KB, like a mid-episode prompt


def _rows(turns: int) -> list[tuple[str, dict[str, object]]]:
    rows: list[tuple[str, dict[str, object]]] = []
    for t in range(turns):
        episode, turn = f"e{t // 10}", t % 10
        call = f"{episode}-{turn:04d}"
        rows.append(("llm_calls", {"call_id": call, "episode_id": episode, "turn_idx": turn,
                                   "prompt": PROMPT, "output": "A reply.", "seed": t,
                                   "prompt_tokens": 500, "completion_tokens": 20}))
        rows.append(("turns", {"episode_id": episode, "idx": turn, "agent": "client",
                               "role": "client", "text": "A reply.", "call_id": call}))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    args = parser.parse_args()
    rows = _rows(args.turns)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "batched.db", Path(tmp) / "naive.db"
        _prepare(a, args.turns)
        _prepare(b, args.turns)
        total, enqueue = asyncio.run(_batched(a, rows))
        naive = _naive(b, rows)
    n = args.turns
    table = [
        {"writer": "batched TurnLogWriter", "turns/s": n / total,
         "ms/turn (sustained)": total / n * 1e3, "ms/turn on the episode": enqueue / n * 1e3},
        {"writer": "one transaction per row", "turns/s": n / naive,
         "ms/turn (sustained)": naive / n * 1e3, "ms/turn on the episode": naive / n * 1e3},
    ]
    report("b3_writer", f"B3 writer ({n:,} turns, each a turn row + an llm_calls row with a "
           "2 KB prompt)", list(table[0]), table, {"batched / naive throughput": naive / total})


if __name__ == "__main__":
    main()
