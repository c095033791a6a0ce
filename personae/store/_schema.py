"""The turn-log schema: tables, version check and opening a database safely.

Tables: `meta` (app name and `schema_version`), `runs`, `episodes` (with a graph's small
`outcome_json` that later stages read, and `context_json`: text each agent was given for the
whole episode, e.g. a course session's memory), `turns` (append-only; visible text in `text`, its
audience, its kind, the turn policy's decision, hidden per-turn state in `hidden_json`),
`llm_calls` (rendered prompt, sampling params, seed, raw output and logprobs, token counts,
latency, backend id, purpose), `judgments` (a judge's verdict on a turn or an episode: raw and
parsed output, valid flag, score) and `interventions` (teaching experiments: each decision with
its rank, budget state and utility estimates, never shown to the student) and `env_steps` (a
computer-use episode's steps: the observation the agent was given, its raw output, the parsed
action or parse error, the environment's result, and the state diff on the last step). Readers
refuse
databases written by a newer schema and files that are not personae databases; writers migrate
older ones (`ensure_schema`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from personae.errors import UserError
from personae.store._failures import describe
from personae.store._paths import check_target, folder_is_writable, header_problem, make_folders

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
            "shard": str,
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
            "context_json": str,
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

_TABLES["human_labels"] = {
    "columns": {
        "label_id": str,
        "episode_id": str,
        "annotator": str,
        "bgd": int,
        "completion": int,
        "note": str,
        "created_at": str,
    },
    "pk": "label_id",
    "foreign_keys": [("episode_id", "episodes", "episode_id")],
}

_TABLES["env_steps"] = {
    "columns": {
        "step_id": str,
        "episode_id": str,
        "step": int,
        "turn_idx": int,
        "observation": str,
        "observation_sha256": str,
        "observation_truncated": int,
        "raw_output": str,
        "action": str,
        "parse_ok": int,
        "parse_error": str,
        "output": str,
        "exit_code": int,
        "timed_out": int,
        "latency_s": float,
        "notes_json": str,
        "state_diff_json": str,
        "created_at": str,
    },
    "pk": "step_id",
    "foreign_keys": [("episode_id", "episodes", "episode_id")],
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

_APPEND_ONLY = (
    "CREATE TRIGGER IF NOT EXISTS turns_append_only BEFORE UPDATE ON turns "
    "BEGIN SELECT RAISE(ABORT, 'turns are append-only'); END"
)


def primary_key(table: str) -> str:
    """The primary-key column of one of the turn log's tables."""
    return str(_TABLES[table]["pk"])


def table_columns(table: str) -> dict[str, type]:
    """The columns of one of the turn log's tables and their Python types, in schema order."""
    return dict(_TABLES[table]["columns"])


def episode_key(scenario: str, condition: dict[str, Any], seed: int, index: int) -> str:
    """Stable episode id from (scenario, condition incl. persona ids, seed, index)."""
    blob = json.dumps([scenario, condition, seed, index], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def readonly_uri(path: Path) -> str:
    """A `file:` URI opening `path` read-only (percent-encoded: '#' or '?' in names work).

    On read-only media SQLite cannot create the WAL index that a plain read-only open needs, so
    a database in a folder that cannot be written is opened `immutable=1` unless it has a
    non-empty `-wal` file (whose rows `immutable` would not see).
    """
    path = Path(path).resolve()
    uri = path.as_uri() + "?mode=ro"
    if not folder_is_writable(path.parent):
        wal = path.with_name(path.name + "-wal")
        if not (wal.exists() and wal.stat().st_size > 0):
            uri += "&immutable=1"
    return uri


def connect(path: Path, *, uri: bool = False) -> sqlite3.Connection:
    """A connection with WAL, foreign keys and a busy timeout; with `uri`, opened by its `file:`
    URI, so that `ATTACH` on it may name `readonly_uri`s."""
    name = Path(path).resolve().as_uri() if uri else str(path)
    conn = sqlite3.connect(name, timeout=30.0, check_same_thread=False, uri=uri)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _not_personae(path: Path) -> UserError:
    return UserError(
        "not a personae run database",
        where=str(path),
        fix="pass a .db file written by 'personae run'",
    )


def _damaged(path: Path, detail: str) -> UserError:
    return UserError(
        f"damaged database: {detail}",
        where=str(path),
        fix="restore it from a copy, or pass a new --db ('sqlite3 FILE .recover' may rescue "
        "its rows)",
    )


#: Tables every personae database has had since schema version 1.
_CORE_TABLES = ("runs", "episodes", "turns", "llm_calls")


def check_database(path: Path, *, for_writing: bool = False) -> None:
    """Raise `UserError` unless `path` is a personae database this version can read.

    With `for_writing`, a path with no file (or an empty one) passes if a database can be
    created there, and an existing database must also be writable. Only reads: nothing is
    created or changed.
    """
    path = Path(path)
    if not check_target(path, for_writing=for_writing):
        if for_writing:
            return  # nothing there yet; open_database creates it
        raise _not_personae(path)
    problem = header_problem(path)
    if problem == "not sqlite":
        raise _not_personae(path)
    if problem is not None:
        raise _damaged(path, f"the file is {problem}")
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True)
        try:
            tables = {
                str(r[0])
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            rows = (
                {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
                if "meta" in tables
                else {}
            )
            runs = (
                int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
                if "runs" in tables and not rows
                else 0
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise _unreadable(path, exc) from exc
    if not tables and for_writing:
        return  # an empty SQLite file (a creation killed before its one commit): start afresh
    if rows.get("app") != APP:
        if "meta" in tables and not rows and tables <= {"meta", *_TABLES}:
            if runs:
                raise _damaged(path, "its meta table is empty")
            raise UserError(  # creation writes the meta rows last: nothing else is in it
                "incomplete database: its creation was interrupted",
                where=str(path),
                fix="delete it, then rerun",
            )
        raise _not_personae(path)
    raw = rows.get("schema_version")
    if raw is None:
        raise _damaged(path, "no schema_version in its meta table")
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise _damaged(path, f"schema_version is {raw!r}, not a whole number") from None
    if version > SCHEMA_VERSION:
        raise UserError(
            f"database schema version {version} is newer than this personae supports "
            f"({SCHEMA_VERSION})",
            where=str(path),
            fix="upgrade personae (pip install -U personae)",
        )
    missing = [t for t in _CORE_TABLES if t not in tables]
    if missing:
        raise _damaged(path, f"tables missing: {', '.join(missing)}")


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> UserError:
    text = str(exc).lower()
    if "unable to open" in text and not folder_is_writable(path.parent):
        return UserError(
            "cannot read the database: its -wal file needs a -shm file, and the folder is "
            "read-only",
            where=str(path),
            fix="copy the .db with its -wal file to a writable folder and pass that copy",
        )
    if "malformed" in text or "not a database" in text:
        return _damaged(path, str(exc))
    return UserError(
        f"cannot read the database ({exc})",
        where=str(path),
        fix="check the file's permissions and the disk",
    )


def open_database(path: Path, *, create: bool) -> sqlite_utils.Database:
    """Open (and with `create`, initialise) a turn-log database for writing.

    An existing file must be a writable personae database of a version this code reads (an
    older one is migrated); an empty or new file is initialised when `create` is true. If
    opening fails (disk full, read-only, …) nothing is left behind: files and folders made for
    it are removed.

    Raises:
        UserError: the path or the file is unusable (see `check_database`), or SQLite could
            not create or open it.
    """
    path = Path(path)
    if not create:
        check_database(path)  # "not found" / "not a personae database" / …
    check_database(path, for_writing=True)
    fresh = not path.exists() or path.stat().st_size == 0
    try:
        made = make_folders(path.parent)
    except OSError as exc:
        raise UserError(
            f"cannot create the folder {exc.filename} ({exc.strerror})",
            where=str(path),
            fix="pass a --db path in a writable folder",
        ) from exc
    files = [path.with_name(path.name + s) for s in ("", "-wal", "-shm", "-journal")]
    existed = {f for f in files if f.exists()}
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path)
        db = sqlite_utils.Database(conn)
        ensure_schema(db)  # a new file gets the schema, an older one is migrated
        return db
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        for f in files:
            if f not in existed:
                f.unlink(missing_ok=True)
            elif f == path and fresh:
                os.truncate(f, 0)  # it was empty before: leave it so
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        reason, remedy = describe(exc)
        raise UserError(
            f"cannot {'create' if fresh else 'open'} the database: {reason}",
            where=str(path),
            fix=f"{remedy}, or pass a --db path elsewhere",
        ) from exc


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Create the tables, indexes and version row, migrating an older database (idempotent).

    Version 1 → 2: `turns` gains `kind`, `audience_json` and `decision_json`; `llm_calls`
    `purpose` and `logprobs_json`; `episodes` `stage` and `outcome_json`; `runs` `study`; the
    `judgments` table is new; `interventions` is keyed by a stable `decision_id` (old rows get
    `legacy-ID`) so a resumed run rewrites its decisions instead of duplicating them. Tables
    added within version 2 (`human_labels`) are created in databases written before them.
    """
    conn = db.conn
    if conn.in_transaction:
        conn.commit()
    # one transaction: a creation killed half-way leaves no tables, not half a schema (DDL
    # outside an explicit transaction would commit table by table)
    conn.execute("BEGIN IMMEDIATE")
    try:
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
        db.table("human_labels").create_index(["episode_id"], if_not_exists=True)
        db.table("env_steps").create_index(["episode_id", "step"], if_not_exists=True)
        conn.execute(_APPEND_ONLY)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("app", APP), ("schema_version", str(SCHEMA_VERSION))],
        )
        if conn.in_transaction:
            conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


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
