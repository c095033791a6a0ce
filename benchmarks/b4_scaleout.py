"""B4 scale-out: turns/s with 1 and 2 workers on the zero-latency scripted workload, and the cost
of merging shard databases.

Side by side, in one run, per round: the whole plan in one `personae run` process; the plan as
two shards (`--shard 1/2`, `--shard 2/2`) in two processes at once, then `personae merge`; and,
with Ray installed, the Ray executor with 1 and with 2 workers. Every turn is persisted in every
case. Rates are turns over wall-clock seconds, both end to end (interpreter start and imports
included: what a user waits for) and within the run (from the runs' own timings; for Ray, the
workers' runs, which start once the actors are up). Scaling efficiency = rate with 2
workers / (2 x rate with 1).

    .venv/bin/python benchmarks/b4_scaleout.py [--episodes 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, report, write_scenario

from personae.store import merge_databases

TURNS = 10
CONCURRENCY = 64


def _personae(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "personae", *argv, "-q", "--concurrency", str(CONCURRENCY)]
    return subprocess.Popen(command, env=env, text=True, stdout=subprocess.DEVNULL)


def _in_run(db: Path) -> tuple[int, float]:
    """(turns, elapsed s) of the runs in `db`, from their own summaries."""
    conn = sqlite3.connect(db)
    try:
        turns = conn.execute("SELECT count(*) FROM turns").fetchone()[0]
        elapsed = [
            json.loads(r[0])["elapsed_s"] for r in conn.execute("SELECT summary_json FROM runs")
        ]
    finally:
        conn.close()
    return int(turns), max(elapsed)


def _processes(scenario: Path, folder: Path, workers: int) -> dict[str, Any]:
    """`workers` shard processes at once (1: the plain run), then their merge."""
    dbs = [folder / f"w{workers}-{k}.db" for k in range(1, workers + 1)]
    start = time.perf_counter()
    shard = (lambda k: ["--shard", f"{k}/{workers}"]) if workers > 1 else (lambda k: [])
    procs = [_personae("run", str(scenario), "--db", str(db), *shard(k)) for k, db in
             enumerate(dbs, 1)]  # fmt: skip
    for proc in procs:
        assert proc.wait() == 0
    wall = time.perf_counter() - start
    parts = [_in_run(db) for db in dbs]
    turns = sum(t for t, _ in parts)
    row: dict[str, Any] = {
        "turns": turns,
        "turns/s end to end": turns / wall,
        "turns/s in run": turns / max(e for _, e in parts),
    }
    if workers > 1:
        out = folder / f"w{workers}-merged.db"
        started = time.perf_counter()
        merged = merge_databases(out, dbs)
        row["merge s"] = time.perf_counter() - started
        assert merged.turns == turns and not merged.conflicts
        started = time.perf_counter()
        merge_databases(out, dbs)
        row["merge again s"] = time.perf_counter() - started
    return row


def _ray(scenario: Path, folder: Path, workers: int) -> dict[str, Any]:
    """The Ray executor with `workers` workers, from the command line."""
    db = folder / f"ray{workers}.db"
    start = time.perf_counter()
    proc = _personae("run", str(scenario), "--db", str(db), "--executor", "ray",
                     "--workers", str(workers))  # fmt: skip
    assert proc.wait() == 0
    wall = time.perf_counter() - start
    turns, elapsed = _in_run(db)  # the merged database holds the workers' runs
    return {"turns": turns, "turns/s end to end": turns / wall, "turns/s in run": turns / elapsed}


def _have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="only the shard processes")
    args = parser.parse_args()
    setups: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
        "1 process": lambda s, f: _processes(s, f, 1),
        "2 shard processes + merge": lambda s, f: _processes(s, f, 2),
    }
    if _have_ray() and not args.no_ray:
        setups["ray, 1 worker"] = lambda s, f: _ray(s, f, 1)
        setups["ray, 2 workers"] = lambda s, f: _ray(s, f, 2)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        scenario = write_scenario(Path(tmp), repeats=args.episodes, max_turns=TURNS,
                                  backend="scripted")  # fmt: skip
        for round_ in range(args.rounds):  # alternating, so drifts in machine load hit all alike
            for name, setup in setups.items():
                folder = Path(tmp) / f"r{round_}-{name.replace(' ', '_').replace(',', '')}"
                folder.mkdir()
                results[name].append(setup(scenario, folder))
            load.append(os.getloadavg()[0])
    rows: list[dict[str, Any]] = []
    for name, runs in results.items():
        row: dict[str, Any] = {"setup": name, "turns": runs[0]["turns"]}
        for key in ("turns/s end to end", "turns/s in run", "merge s", "merge again s"):
            if key in runs[0]:
                row[key] = statistics.median(r[key] for r in runs)
        rows.append(row)
    by = {r["setup"]: r for r in rows}
    notes: dict[str, Any] = {
        "workload": f"{args.episodes} scripted {TURNS}-turn episodes (zero latency), every turn "
        f"persisted, {CONCURRENCY} episodes in flight per process; median of {args.rounds} rounds",
        "load average (1 min) before and after each round": " ".join(f"{x:.1f}" for x in load),
    }
    pairs = [("1 process", "2 shard processes + merge", "shards")]
    if "ray, 1 worker" in by:
        pairs.append(("ray, 1 worker", "ray, 2 workers", "ray"))
    for one, two, label in pairs:
        for key in ("turns/s end to end", "turns/s in run"):
            notes[f"scaling efficiency, {label}, {key.removeprefix('turns/s ')}"] = by[two][key] / (
                2 * by[one][key]
            )
    shards = by["2 shard processes + merge"]
    notes["merge s per 10k turns"] = shards["merge s"] / shards["turns"] * 10_000
    notes["merge again (no-op) s per 10k turns"] = (
        shards["merge again s"] / shards["turns"] * 10_000
    )
    columns = ["setup", "turns", "turns/s end to end", "turns/s in run", "merge s", "merge again s"]
    report("b4_scaleout", f"B4 scale-out on {os.cpu_count()} cores (scripted, zero latency)",
           columns, rows, notes)  # fmt: skip


if __name__ == "__main__":
    main()
