"""What browsing adds to its snapshot: the current schema, search, and the episode list.

Everything here writes only to the snapshot (a private copy made by `browse_copy`), never to
the run database. A snapshot of an older database is first migrated to the current schema, so
the pages read one shape. `turns.text` gets an FTS5 index (`turns_fts`, external content: it
holds no second copy of the text; English words match their stems), and `episode_list` is a
table with one row per episode: its number in `personae show`, scenario, one column per
condition field that differs between episodes (`client.style`, named as in `export --where`),
status, end reason, turns, the mean judge score and fork links.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from personae.export._tables import _flat_condition
from personae.store._schema import ensure_schema

EPISODE_LIST = "episode_list"
FTS_TABLE = "turns_fts"
#: Facets offered for a condition column with at most this many distinct values.
_MAX_FACET_VALUES = 30


@dataclass(frozen=True)
class Snapshot:
    """A prepared snapshot: where it is and the episode list's columns.

    Attributes:
        path: The snapshot file (datasette names the database after its stem).
        condition_columns: The episode list's condition columns, in the order first seen.
        facets: The episode list's default facets.
    """

    path: Path
    condition_columns: tuple[str, ...]
    facets: tuple[str, ...]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_path(column: str) -> str:
    """`client.style` → `$."client"."style"` (a top-level key has no dot)."""
    return "$" + "".join(f'."{part}"' for part in column.split(".", 1))


def _condition_columns(db: sqlite_utils.Database) -> list[str]:
    """Condition fields in the order first seen; with several episodes, only those whose value
    (or absence) differs between them: the others say nothing about any one episode."""
    values: dict[str, set[str]] = {}
    rows = [json.loads(raw or "{}") for (raw,) in db.execute("SELECT condition_json FROM episodes")]
    flat = [_flat_condition(condition) for condition in rows]
    for fields in flat:
        for key in fields:
            # a quote cannot be written inside an SQLite JSON path label; such a field is
            # still shown on the episode's page and in the episodes table
            if '"' not in key:
                values.setdefault(key, set())
    for key, seen in values.items():
        seen.update(json.dumps(fields.get(key), sort_keys=True) for fields in flat)
    return [key for key, seen in values.items() if len(flat) < 2 or len(seen) > 1]


def _create_episode_list(db: sqlite_utils.Database, conditions: list[str]) -> None:
    """The episode list as a table: computed once (the snapshot never changes), so datasette's
    counts, facets and sorts do not recompute scores and row numbers on every query."""
    declared = "".join(f"\n  {_quote(c)}," for c in conditions)
    picked = "".join(f"\n  json_extract(e.condition_json, '{_json_path(c)}')," for c in conditions)
    db.execute(f"DROP TABLE IF EXISTS {EPISODE_LIST}")
    db.execute(
        f"""CREATE TABLE {EPISODE_LIST} (
  n INTEGER PRIMARY KEY,
  episode_id TEXT,
  scenario TEXT,{declared}
  status TEXT,
  end_reason TEXT,
  turns INTEGER,
  mean_score FLOAT,
  verdicts INTEGER,
  forked_from TEXT,
  fork_turn INTEGER
)"""
    )
    with db.conn:
        db.execute(
            f"""INSERT INTO {EPISODE_LIST}
SELECT
  row_number() OVER (ORDER BY r.created_at, e.idx) - 1,
  e.episode_id,
  e.scenario,{picked}
  e.status,
  e.end_reason,
  e.n_turns,
  j.mean_score,
  coalesce(j.verdicts, 0),
  e.parent_episode_id,
  e.fork_turn
FROM episodes e
LEFT JOIN runs r ON r.run_id = e.run_id
LEFT JOIN (
  SELECT episode_id, round(avg(score), 3) AS mean_score, count(*) AS verdicts
  FROM judgments WHERE valid GROUP BY episode_id
) j ON j.episode_id = e.episode_id"""
        )


def _facets(db: sqlite_utils.Database, conditions: list[str]) -> list[str]:
    facets = ["scenario", "status", "end_reason"]
    for column in conditions:
        if column == "repeat":
            continue
        (distinct,) = db.execute(
            f"SELECT count(DISTINCT {_quote(column)}) FROM {EPISODE_LIST}"
        ).fetchone()
        if 1 < distinct <= _MAX_FACET_VALUES:
            facets.append(column)
    return facets


def prepare_snapshot(path: Path) -> Snapshot:
    """Migrate the snapshot at `path`, index its utterances and create the episode list."""
    db = sqlite_utils.Database(path)
    try:
        ensure_schema(db)
        db.table("turns").enable_fts(
            ["text"], create_triggers=False, tokenize="porter", replace=True
        )
        db.table("episodes").create_index(["parent_episode_id"], if_not_exists=True)
        conditions = _condition_columns(db)
        _create_episode_list(db, conditions)
        facets = _facets(db, conditions)
    finally:
        db.close()
    return Snapshot(path, tuple(conditions), tuple(facets))
