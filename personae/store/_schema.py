"""The turn-log schema: tables, version check and opening a database safely.

Tables: `meta` (app name and `schema_version`), `runs`, `episodes` (with a graph's small
`outcome_json` that later stages read), `turns` (append-only; visible text in `text`, its
audience, its kind, the turn policy's decision, hidden per-turn state in `hidden_json`),
`llm_calls` (rendered prompt, sampling params, seed, raw output and logprobs, token counts,
latency, backend id, purpose), `judgments` (a judge's verdict on a turn or an episode: raw and
parsed output, valid flag, score) and `interventions` (teaching experiments: each decision with
its rank, budget state and utility estimates, never shown to the student). Readers refuse
databases written by a newer schema and files that are not personae databases; writers migrate
older ones (`ensure_schema`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from personae.errors import UserError

APP = "personae"
SCHEMA_VERSION = 2

_TABLES: dict[str, dict[str, Any]] = {
    "runs": {
        "columns": {
            "run_id": str,
            "scenario": str,
            "scenario_path": str,
            "spec_json": str,
            "backend": str,
            "seed": int,
            "status": str,
            "created_at": str,
            "finished_at": str,
            "summary_json": str,
            "personae_version": str,
            "study": str,
        },
        "pk": "run_id",
    },
    "episodes": {
        "columns": {
            "episode_id": str,
            "run_id": str,
            "idx": int,
            "scenario": str,
            "condition_json": str,
            "personas_json": str,
            "seed": int,
            "status": str,
            "end_reason": str,
            "error": str,
            "n_turns": int,
            "started_at": str,
            "finished_at": str,
            "parent_episode_id": str,
            "fork_turn": int,
            "stage": int,
            "outcome_json": str,
        },
        "pk": "episode_id",
        "foreign_keys": [("run_id", "runs", "run_id")],
    },
    "turns": {
        "columns": {
            "id": int,
            "episode_id": str,
            "idx": int,
            "agent": str,
            "role": str,
            "kind": str,
            "text": str,
            "audience_json": str,
            "hidden_json": str,
            "decision_json": str,
            "call_id": str,
            "created_at": str,
        },
        "pk": "id",
        "foreign_keys": [("episode_id", "episodes", "episode_id")],
    },
    "llm_calls": {
        "columns": {
            "call_id": str,
            "episode_id": str,
            "turn_idx": int,
            "agent": str,
            "purpose": str,
            "backend": str,
            "render_mode": str,
            "prompt": str,
            "messages_json": str,
            "params_json": str,
            "seed": int,
            "output": str,
            "logprobs_json": str,
            "finish_reason": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cached_tokens": int,
            "latency_s": float,
            "attempts": int,
            "cache_hit": int,
            "created_at": str,
        },
        "pk": "call_id",
        "foreign_keys": [("episode_id", "episodes", "episode_id")],
    },
    "judgments": {
        "columns": {
            "judgment_id": str,
            "episode_id": str,
            "turn_idx": int,
            "judge": str,
            "rubric": str,
            "raw": str,
            "parsed_json": str,
            "valid": int,
            "error": str,
            "score": float,
            "call_id": str,
            "created_at": str,
        },
        "pk": "judgment_id",
        "foreign_keys": [("episode_id", "episodes", "episode_id")],
    },
    "interventions": {
        "columns": {
            "decision_id": str,
            "run_id": str,
            "episode_id": str,
            "item_id": str,
            "seed": int,
            "explanation": str,
            "function": str,
            "budget": float,
            "n_items": int,
            "budget_items": int,
            "rank": int,
            "score": float,
            "decided": int,
            "budget_used": int,
            "c_pre": float,
            "c_post": float,
            "utility": float,
            "teacher_confidence": float,
            "student_confidence": float,
            "hindsight": int,
            "created_at": str,
        },
        "pk": "decision_id",
        "foreign_keys": [("episode_id", "episodes", "episode_id")],
    },
}

_TABLES["response_cache"] = {
    "columns": {
        "key": str,
        "backend": str,
        "output": str,
        "finish_reason": str,
        "prompt_tokens": int,
        "completion_tokens": int,
    },
    "pk": "key",
}

_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS turns_append_only BEFORE UPDATE ON turns
BEGIN SELECT RAISE(ABORT, 'turns are append-only'); END;
"""


def primary_key(table: str) -> str:
    """The primary-key column of one of the turn log's tables."""
    return str(_TABLES[table]["pk"])


def episode_key(scenario: str, condition: dict[str, Any], seed: int, index: int) -> str:
    """Stable episode id from (scenario, condition incl. persona ids, seed, index)."""
    blob = json.dumps([scenario, condition, seed, index], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def readonly_uri(path: Path) -> str:
    """A `file:` URI opening `path` read-only (percent-encoded: '#' or '?' in names work)."""
    return Path(path).resolve().as_uri() + "?mode=ro"


def connect(path: Path) -> sqlite3.Connection:
    """A connection with WAL, foreign keys and a busy timeout."""
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _not_personae(path: Path) -> UserError:
    return UserError(
        "not a personae run database",
        where=str(path),
        fix="pass a .db file written by 'personae run'",
    )


def check_database(path: Path) -> None:
    """Raise `UserError` unless `path` is a personae database this version can read."""
    if not path.is_file():
        raise UserError(
            "database file not found",
            where=str(path),
            fix="pass the path printed by 'personae run' (default folder: logs/)",
        )
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True)
        try:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise _not_personae(path) from exc
    if rows.get("app") != APP:
        raise _not_personae(path)
    version = int(rows.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise UserError(
            f"database schema version {version} is newer than this personae supports "
            f"({SCHEMA_VERSION})",
            where=str(path),
            fix="upgrade personae (pip install -U personae)",
        )


def open_database(path: Path, *, create: bool) -> sqlite_utils.Database:
    """Open (and with `create`, initialise) a turn-log database for writing.

    An existing file must be a personae database of a version this code reads (an older one is
    migrated); an empty or new file is initialised when `create` is true.
    """
    path = Path(path)
    fresh = not path.exists() or path.stat().st_size == 0
    if fresh and not create:
        check_database(path)  # raises "not found" / "not a personae database"
    if not fresh:
        check_database(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(connect(path))
    ensure_schema(db)  # a new file gets the schema, an older one is migrated
    return db


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Create the tables, indexes and version row, migrating an older database (idempotent).

    Version 1 → 2: `turns` gains `kind`, `audience_json` and `decision_json`; `llm_calls`
    `purpose` and `logprobs_json`; `episodes` `stage` and `outcome_json`; `runs` `study`; the
    `judgments` table is new; `interventions` is keyed by a stable `decision_id` (old rows get
    `legacy-ID`) so a resumed run rewrites its decisions instead of duplicating them.
    """
    with db.conn:
        meta = db.table("meta")
        meta.create({"key": str, "value": str}, pk="key", if_not_exists=True)
        for name, spec in _TABLES.items():
            db.table(name).create(
                spec["columns"],
                pk=spec["pk"],
                foreign_keys=spec.get("foreign_keys"),
                if_not_exists=True,
            )
            _add_missing_columns(db, name, spec["columns"])
        _key_interventions(db)
        db.table("turns").create_index(["episode_id", "idx"], unique=True, if_not_exists=True)
        db.table("episodes").create_index(["run_id", "idx"], if_not_exists=True)
        db.table("llm_calls").create_index(["episode_id", "turn_idx"], if_not_exists=True)
        db.table("interventions").create_index(["run_id", "function", "budget"], if_not_exists=True)
        db.table("judgments").create_index(["episode_id", "turn_idx"], if_not_exists=True)
        db.conn.executescript(_APPEND_ONLY)
        meta.upsert_all(
            [{"key": "app", "value": APP}, {"key": "schema_version", "value": str(SCHEMA_VERSION)}],
            pk="key",
        )


_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "FLOAT"}


def _add_missing_columns(db: sqlite_utils.Database, table: str, columns: dict[str, Any]) -> None:
    have = {row[1] for row in db.execute(f"PRAGMA table_info([{table}])")}
    for column, kind in columns.items():
        if column not in have:
            db.execute(f"ALTER TABLE [{table}] ADD COLUMN [{column}] {_SQL_TYPES[kind]}")


def _key_interventions(db: sqlite_utils.Database) -> None:
    """Re-key a version-1 `interventions` table (integer `id`) by `decision_id`."""
    table = db.table("interventions")
    if table.pks == ["decision_id"]:
        return
    db.execute("UPDATE interventions SET decision_id = 'legacy-' || id WHERE decision_id IS NULL")
    table.transform(pk="decision_id", drop={"id"})
