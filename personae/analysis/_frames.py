"""A run database as pandas DataFrames: the entry point of every analysis.

`frames(db)` checks the file (a personae database of a readable version, else the store's
one-line `UserError`) and returns a `Frames`; each table is read read-only when first asked for
and kept. Columns are the turn log's, with its integer columns as nullable `Int64`, plus:

- `episodes`: the condition flattened to `AGENT.FIELD` columns (`facilitator.strategy`) and
  top-level keys (`repeat`); `condition_json`, `personas_json` and `outcome_json` are kept.
- `turns`, `calls`, `judgments`, `env_steps`, `labels` (`human_labels`): the episode's `run_id`
  first.
- `judgments`: one column per key of `parsed_json` (`toxicity`, `argument_quality`,
  `rationale`; NaN where a verdict lacks it or is invalid).

A flattened key that clashes with a column of the table is prefixed (`condition.KEY`,
`parsed.KEY`). With `run_id`, every frame holds only that run's rows.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from personae.export._tables import _flat_condition
from personae.store import RunLog, check_database
from personae.store._schema import readonly_uri, table_columns

_DTYPES = {int: "Int64", float: "float64", str: "str"}

#: The frames a `Frames` offers, in the order a reader meets them.
TABLES = (
    "runs",
    "episodes",
    "turns",
    "calls",
    "judgments",
    "interventions",
    "env_steps",
    "labels",
)


@dataclass(frozen=True)
class Frames:
    """The tables of one run database (or of one run in it) as DataFrames, read lazily.

    Attributes:
        path: The database file.
        run_id: The run the frames are limited to (None: every run).
    """

    path: Path
    run_id: str | None = None

    def _read(
        self, table: str, sql: str, *, order: str, run_column: str = "run_id", lead: str = ""
    ) -> pd.DataFrame:
        """Rows of `sql` over `table` restricted to the run by `run_column`, sorted by `order`,
        with the schema's types (integer columns as `Int64`); if an older database lacks the
        table, an empty frame with its columns (after `lead`, the column `sql` puts first)."""
        check_database(self.path)  # the file may have changed since frames() checked it
        conn = sqlite3.connect(readonly_uri(self.path), uri=True)
        try:
            present = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            if present is None:
                frame = pd.DataFrame(columns=[*([lead] if lead else []), *table_columns(table)])
            else:
                params: tuple[str, ...] = ()
                if self.run_id is not None:
                    sql += f" WHERE {run_column} = ?"
                    params = (self.run_id,)
                frame = pd.read_sql_query(f"{sql} ORDER BY {order}", conn, params=params)
        finally:
            conn.close()
        types = table_columns(table)
        return frame.astype({c: _DTYPES[t] for c, t in types.items() if c in frame.columns})

    def _per_episode(self, table: str, alias: str, order: str) -> pd.DataFrame:
        """Rows of a table keyed by episode, with the episode's `run_id` first, in run order."""
        return self._read(
            table,
            f"SELECT e.run_id, {alias}.* FROM {table} {alias} JOIN episodes e USING (episode_id) "
            "JOIN runs r ON r.run_id = e.run_id",
            run_column="e.run_id",
            order=f"r.created_at, r.run_id, e.idx, e.episode_id, {order}",
            lead="run_id",
        )

    @cached_property
    def runs(self) -> pd.DataFrame:
        """One row per run, oldest first."""
        return self._read("runs", "SELECT * FROM runs", order="created_at, run_id")

    @cached_property
    def episodes(self) -> pd.DataFrame:
        """One row per episode, in run order, its condition flattened into columns."""
        frame = self._read(
            "episodes",
            "SELECT e.* FROM episodes e JOIN runs r ON r.run_id = e.run_id",
            run_column="e.run_id",
            order="r.created_at, r.run_id, e.idx, e.episode_id",
        )
        flat = [_flat_condition(_mapping(c)) for c in frame["condition_json"]]
        return _join_expanded(frame, flat, "condition")

    @cached_property
    def turns(self) -> pd.DataFrame:
        """One row per turn (seeds, lines, passes, feedback), in episode and turn order."""
        return self._per_episode("turns", "t", "t.idx")

    @cached_property
    def calls(self) -> pd.DataFrame:
        """One row per model call (`llm_calls`: rendered prompt, params, output, tokens)."""
        return self._per_episode("llm_calls", "c", "c.turn_idx, c.call_id")

    @cached_property
    def judgments(self) -> pd.DataFrame:
        """One row per verdict, `parsed_json` expanded into a column per key."""
        frame = self._per_episode("judgments", "j", "j.turn_idx, j.judge")
        return _join_expanded(frame, [_mapping(p) for p in frame["parsed_json"]], "parsed")

    @cached_property
    def interventions(self) -> pd.DataFrame:
        """One row per teaching-experiment decision (empty for other runs)."""
        return self._read(
            "interventions",
            "SELECT * FROM interventions",
            order="run_id, function, budget, seed, item_id",
        )

    @cached_property
    def env_steps(self) -> pd.DataFrame:
        """One row per computer-use step (observation given, raw output, action, result)."""
        return self._per_episode("env_steps", "s", "s.step")

    @cached_property
    def labels(self) -> pd.DataFrame:
        """One row per person's label of an episode (`human_labels`; empty when none)."""
        return self._per_episode("human_labels", "h", "h.annotator")


def _mapping(value: object) -> dict[str, Any]:
    """A JSON column's object (an empty one for NULL or a value that is not an object)."""
    if not isinstance(value, str):
        return {}
    decoded = json.loads(value)
    return decoded if isinstance(decoded, dict) else {}


def _join_expanded(frame: pd.DataFrame, rows: list[dict[str, Any]], prefix: str) -> pd.DataFrame:
    """`frame` with the keys of `rows` (one mapping per row) as extra columns, first seen
    first; a key that is already a column of `frame` becomes `PREFIX.KEY`."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    if not keys:
        return frame
    names = {k: f"{prefix}.{k}" if k in frame.columns else k for k in keys}
    extra = pd.DataFrame(
        [{names[k]: v for k, v in row.items()} for row in rows],
        columns=list(names.values()),
        index=frame.index,
    )
    return pd.concat([frame, extra], axis=1)


def frames(db: str | Path, run_id: str | None = None) -> Frames:
    """The tables of run database `db` as pandas DataFrames (read when first used).

    Args:
        db: A database written by personae.
        run_id: Only this run's rows (default: every run in the file).

    Raises:
        UserError: the file is missing, not a personae database, from a newer version, or has
            no run `run_id`.
    """
    path = Path(db)
    with RunLog(path) as log:  # checks the file: the store's one-line errors
        if run_id is not None:
            log.run(run_id)
    return Frames(path, run_id)
