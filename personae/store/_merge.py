"""Merging run databases: shard databases of one plan into one database (`personae merge`).

Contract:

- Every input is checked before anything is written: a personae database of this schema
  version, holding runs of one scenario (same study kind, name and spec, the backend and the
  episode cap aside — shards may run on different servers), the same as the output's if it
  exists; the output is none of the inputs. A bad input is a `UserError` and nothing is written.
- Each input is merged in one transaction (under the output's run lock): its runs, then every
  episode the output lacks, with its turns, model calls, judgments, interventions, environment
  steps and human labels (an input made before a table existed simply has none of its rows).
  An unfinished episode of the output is replaced by a complete one. An episode complete on both
  sides with the same turns is skipped (rows the output lacks, e.g. later judgments or labels,
  are added); with different turns it is a conflict: reported, and the output's version is
  kept. Merging again is therefore a no-op, and merging shards in any order gives the same
  episodes and turns.
- The output then passes `PRAGMA integrity_check` and `foreign_key_check`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personae.errors import UserError
from personae.store._failures import describe
from personae.store._lock import RunLock
from personae.store._schema import (
    _TABLES,
    SCHEMA_VERSION,
    check_database,
    connect,
    open_database,
    readonly_uri,
)

#: Tables whose rows belong to one episode, copied with it.
_EPISODE_TABLES = (
    "turns",
    "llm_calls",
    "judgments",
    "interventions",
    "env_steps",
    "human_labels",
)
#: Run settings that may differ between the shards of one plan.
_RUN_SETTINGS = ("backend", "backend_options", "episodes")
#: Columns that say when or where a row was made, not what it holds (turns: not compared).
_CIRCUMSTANCE = ("id", "created_at")


@dataclass(frozen=True)
class Conflict:
    """An episode complete in the output and in a shard, with different turns."""

    episode_id: str
    shard: Path
    turn: int | None  # the first turn index that differs (None: one side has more turns)

    def line(self, out: Path) -> str:
        where = f"first at turn {self.turn}" if self.turn is not None else "different lengths"
        return (
            f"conflict: episode {self.episode_id} is complete in {out} and in {self.shard} "
            f"with different turns ({where}); {out}'s kept"
        )


@dataclass
class ShardMerge:
    """What merging one input did."""

    path: Path
    added: int = 0  # episodes the output lacked
    replaced: int = 0  # unfinished episodes of the output replaced by complete ones
    identical: int = 0  # complete on both sides with the same turns: skipped
    kept: int = 0  # unfinished in the input, present in the output: skipped
    conflicts: int = 0
    turns: int = 0  # turn rows copied
    runs: int = 0  # run rows added or updated

    def line(self) -> str:
        parts = [f"{self.added} episodes added ({self.turns} turns)"]
        if self.replaced:
            parts.append(f"{self.replaced} unfinished replaced")
        parts.append(f"{self.identical} identical")
        if self.kept:
            parts.append(f"{self.kept} unfinished skipped")
        parts.append(f"{self.conflicts} conflicts")
        return f"{self.path}: " + ", ".join(parts)


@dataclass
class MergeReport:
    """The outcome of `merge_databases`."""

    out: Path
    shards: list[ShardMerge] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    episodes: int = 0
    complete: int = 0
    turns: int = 0
    integrity: str = "ok"
    elapsed_s: float = 0.0

    def line(self) -> str:
        """The summary line."""
        return (
            f"{self.out}: {self.episodes} episodes ({self.complete} complete), {self.turns} "
            f"turns; integrity_check {self.integrity}; merged in {self.elapsed_s:.2f} s"
        )


@dataclass(frozen=True)
class _Input:
    path: Path
    scenario: tuple[str, str, str] | None  # (study kind, name, comparable spec); None: no runs


def merge_databases(
    out: str | Path, shards: Sequence[str | Path], *, locked: bool = False
) -> MergeReport:
    """Merge the run databases `shards` into `out` (created if missing).

    Args:
        out: The database to merge into.
        shards: Databases to merge, in order (a path given twice is merged once).
        locked: The caller holds `out`'s `RunLock` (else it is taken here).

    Raises:
        UserError: a missing or foreign file, another schema version or scenario, or `out`
            among the inputs; raised before anything is written.
    """
    start = time.perf_counter()
    out = Path(out)
    if not shards:
        raise UserError("no databases to merge", where="personae merge", fix="name them after OUT")
    inputs = _check_inputs(out, [Path(s) for s in dict.fromkeys(map(str, shards))])
    lock = RunLock(out)
    if not locked:
        lock.acquire()
    try:
        open_database(out, create=True).conn.close()  # created, or migrated to this version
        conn = connect(out, uri=True)
        try:
            report = MergeReport(out)
            for shard in inputs:
                merged, conflicts = _merge_one(conn, shard.path)
                report.shards.append(merged)
                report.conflicts.extend(conflicts)
            _check_result(conn, out, report)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    finally:
        if not locked:
            lock.release()
    report.elapsed_s = time.perf_counter() - start
    return report


# -- checks, before anything is written ---------------------------------------------------------


def _check_inputs(out: Path, paths: list[Path]) -> list[_Input]:
    check_database(out, for_writing=True)
    target = _describe(out) if out.exists() and out.stat().st_size > 0 else None
    inputs: list[_Input] = []
    for path in paths:
        if _same_file(path, out):
            raise UserError(
                "the output database is also an input",
                where=str(path),
                fix="merge into a new file: personae merge OUT.db SHARD.db ...",
            )
        check_database(path)
        inputs.append(_describe(path))
    known = [i for i in ([target] if target is not None else []) + inputs if i.scenario]
    for shard in known[1:]:
        first = known[0]
        assert first.scenario is not None and shard.scenario is not None
        if shard.scenario != first.scenario:
            raise UserError(
                f"holds runs of another scenario than {first.path} "
                f"({_difference(first.scenario, shard.scenario)})",
                where=str(shard.path),
                fix="merge only the shards of one scenario (same name, spec and seed)",
            )
    return inputs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _describe(path: Path) -> _Input:
    """The input's schema version (refused unless current) and the scenario of its runs."""
    conn = sqlite3.connect(readonly_uri(path), uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta.get("schema_version", 0))
        if version != SCHEMA_VERSION:
            raise UserError(
                f"schema version {version}, not {SCHEMA_VERSION} as this personae writes",
                where=str(path),
                fix="resume a run into it with this personae once (personae run --resume "
                "DB), which migrates it, then merge",
            )
        rows = conn.execute(
            "SELECT run_id, study, scenario, spec_json FROM runs WHERE run_id NOT IN "
            "(SELECT run_id FROM episodes WHERE parent_episode_id IS NOT NULL) "
            "ORDER BY created_at"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot read the database ({exc})", where=str(path)) from exc
    finally:
        conn.close()
    keys = {(r[1] or "scenario", r[2] or "", _comparable(r[3])) for r in rows}
    if len(keys) > 1:
        a, b = sorted(keys)[:2]
        raise UserError(
            f"holds runs of different scenarios ({_difference(a, b)})",
            where=str(path),
            fix="merge databases that each hold one scenario",
        )
    return _Input(path, keys.pop() if keys else None)


def _comparable(spec_json: str | None) -> str:
    """A run's spec without the settings that may differ between shards (backends, cap)."""
    try:
        spec = json.loads(spec_json or "{}")
    except json.JSONDecodeError:
        return spec_json or ""
    if not isinstance(spec, dict):
        return json.dumps(spec)
    spec = {k: v for k, v in spec.items() if k not in _RUN_SETTINGS}
    for key, value in spec.items():
        if key == "agents" and isinstance(value, dict):
            spec[key] = {n: _without_backend(a) for n, a in value.items()}
        else:
            spec[key] = _without_backend(value)
    return json.dumps(spec, sort_keys=True)


def _without_backend(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "backend"}
    return value


def _difference(a: tuple[str, str, str], b: tuple[str, str, str]) -> str:
    """The first thing that tells two scenarios apart, for the error line."""
    if a[0] != b[0]:
        return f"study {a[0]!r} vs {b[0]!r}"
    if a[1] != b[1]:
        return f"{a[1]!r} vs {b[1]!r}"
    left, right = json.loads(a[2]), json.loads(b[2])
    for key in sorted(set(left) | set(right)):
        if left.get(key) != right.get(key):
            return f"{a[1]!r} with another {key!r}"
    return f"{a[1]!r} with another spec"


# -- merging one input --------------------------------------------------------------------------


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA {schema}.table_info([{table}])")]


def _select_list(conn: sqlite3.Connection, table: str, columns: Sequence[str]) -> str:
    """`columns` of `src.table`, NULL for those an input of this version lacks."""
    have = set(_columns(conn, "src", table))
    return ", ".join(f"[{c}]" if c in have else f"NULL AS [{c}]" for c in columns)


def _copy(
    conn: sqlite3.Connection,
    table: str,
    where: str,
    *,
    upsert: str | None = None,
    ignore: bool = False,
    skip: Sequence[str] = (),
) -> int:
    """Copy the rows of `src.table` matching `where` into `main.table`; returns how many."""
    if not _columns(conn, "src", table):  # an input older than the table
        return 0
    columns = [c for c in _TABLES[table]["columns"] if c not in skip]
    names = ", ".join(f"[{c}]" for c in columns)
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    sql = f"{verb} INTO main.[{table}] ({names}) SELECT {_select_list(conn, table, columns)} "
    sql += f"FROM src.[{table}] AS s WHERE {where}"
    if upsert is not None:
        updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in columns if c != upsert)
        sql += f" ON CONFLICT([{upsert}]) DO UPDATE SET {updates}"
    return conn.execute(sql).rowcount


_PLANNED = "SELECT episode_id FROM temp.merge_plan WHERE action IN ({})"


def _merge_one(conn: sqlite3.Connection, path: Path) -> tuple[ShardMerge, list[Conflict]]:
    """Merge one input in one transaction."""
    merged = ShardMerge(path)
    conn.execute("ATTACH DATABASE ? AS src", (readonly_uri(path),))
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conflicts = _merge_rows(conn, merged)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    except sqlite3.Error as exc:
        reason, remedy = describe(exc)
        raise UserError(
            f"cannot merge this database: {reason}; nothing of it was merged",
            where=str(path),
            fix=f"{remedy}, then merge again",
        ) from exc
    finally:
        conn.execute("DETACH DATABASE src")
    return merged, conflicts


def _merge_rows(conn: sqlite3.Connection, merged: ShardMerge) -> list[Conflict]:
    have = set(_columns(conn, "src", "runs"))
    same = " AND ".join(
        f"m.[{c}] IS s.[{c}]" if c in have else f"m.[{c}] IS NULL"
        for c in _TABLES["runs"]["columns"]
    )
    merged.runs = _copy(
        conn, "runs", f"NOT EXISTS (SELECT 1 FROM main.runs m WHERE {same})", upsert="run_id"
    )
    conn.execute("DROP TABLE IF EXISTS temp.merge_plan")
    conn.execute("CREATE TEMP TABLE merge_plan (episode_id TEXT PRIMARY KEY, action TEXT)")
    conn.execute(
        """INSERT INTO temp.merge_plan
           SELECT s.episode_id,
                  CASE WHEN m.episode_id IS NULL THEN 'add'
                       WHEN s.status = 'complete' AND m.status = 'complete' THEN 'compare'
                       WHEN s.status = 'complete' THEN 'replace'
                       ELSE 'keep' END
           FROM src.episodes s LEFT JOIN main.episodes m USING (episode_id)"""
    )
    conflicts = _find_conflicts(conn, merged)
    replaced = _PLANNED.format("'replace'")
    for table in _EPISODE_TABLES:
        conn.execute(f"DELETE FROM main.[{table}] WHERE episode_id IN ({replaced})")
    copied = _PLANNED.format("'add', 'replace'")
    _copy(conn, "episodes", f"s.episode_id IN ({copied})", upsert="episode_id")
    merged.turns = _copy(conn, "turns", f"s.episode_id IN ({copied})", skip=("id",))
    identical = _PLANNED.format("'same'")
    for table in _EPISODE_TABLES[1:]:
        _copy(conn, table, f"s.episode_id IN ({copied})")
        _copy(conn, table, f"s.episode_id IN ({identical})", ignore=True)
    counts = dict(
        conn.execute("SELECT action, count(*) FROM temp.merge_plan GROUP BY action").fetchall()
    )
    merged.added = counts.get("add", 0)
    merged.replaced = counts.get("replace", 0)
    merged.identical = counts.get("same", 0)
    merged.kept = counts.get("keep", 0)
    merged.conflicts = counts.get("conflict", 0)
    conn.execute("DROP TABLE temp.merge_plan")
    return conflicts


def _find_conflicts(conn: sqlite3.Connection, merged: ShardMerge) -> list[Conflict]:
    """Mark the episodes complete on both sides as `same` or `conflict` (different turns)."""
    columns = [c for c in _TABLES["turns"]["columns"] if c not in _CIRCUMSTANCE]
    names = ", ".join(f"[{c}]" for c in columns)
    both = _PLANNED.format("'compare'")
    src = (
        f"SELECT {_select_list(conn, 'turns', columns)} FROM src.turns WHERE episode_id IN ({both})"
    )
    out = f"SELECT {names} FROM main.turns WHERE episode_id IN ({both})"
    differing = [
        str(r[0])
        for r in conn.execute(
            f"SELECT episode_id FROM ({src} EXCEPT {out}) "
            f"UNION SELECT episode_id FROM ({out} EXCEPT {src})"
        )
    ]
    conn.executemany(
        "UPDATE temp.merge_plan SET action = 'conflict' WHERE episode_id = ?",
        [(e,) for e in differing],
    )
    conn.execute("UPDATE temp.merge_plan SET action = 'same' WHERE action = 'compare'")
    conflicts = []
    for episode_id in sorted(differing):
        sides = [
            conn.execute(
                f"SELECT {names} FROM {schema}.turns WHERE episode_id = ? ORDER BY idx",
                (episode_id,),
            ).fetchall()
            for schema in ("main", "src")
        ]
        turn = next(
            (a[1] for a, b in zip(*sides, strict=False) if a != b),
            None,
        )
        conflicts.append(Conflict(episode_id, merged.path, turn))
    return conflicts


def _check_result(conn: sqlite3.Connection, out: Path, report: MergeReport) -> None:
    """Counts of the merged database, and its integrity checks."""
    check = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if check != ["ok"] or broken:
        detail = "; ".join(check[:3]) if check != ["ok"] else f"{len(broken)} dangling rows"
        raise UserError(
            f"the merged database fails its integrity check: {detail}",
            where=str(out),
            fix="report this as a bug; the inputs are unchanged",
        )
    report.integrity = "ok"
    report.episodes, report.complete = conn.execute(
        "SELECT count(*), coalesce(sum(status = 'complete'), 0) FROM episodes"
    ).fetchone()
    report.turns = conn.execute("SELECT count(*) FROM turns").fetchone()[0]
