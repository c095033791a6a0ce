"""Databases made by the previous release (schema 1): read commands open them without changing a
byte, and writing into one (a rerun, a resume, a judge) migrates it to schema 2 with every old
row intact. The fixtures in tests/data are only ever copied, never opened in place."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CBT_COUNSELOR, GRIEF_CLIENT, cli, db_rows

from personae.store import SCHEMA_VERSION

DATA = Path(__file__).resolve().parent / "data"
V1_CONVERSATION = DATA / "v1_conversation.db"
V1_TEACHING = DATA / "v1_teaching.db"
FORK = "f555dec64e7540a4"  # forked from 3f940b529b03e07c at turn 3
CONVERSATION_EPISODES = ["f555dec64e7540a4", "3f940b529b03e07c", "8d383a9c8c054319"]

#: Columns schema 2 adds to the tables schema 1 had.
NEW_COLUMNS = {
    "runs": {"study"},
    "episodes": {"stage", "outcome_json"},
    "turns": {"kind", "audience_json", "decision_json"},
    "llm_calls": {"purpose", "logprobs_json"},
}
#: The primary key schema 1 rows are matched on.
KEYS = {
    "runs": "run_id",
    "episodes": "episode_id",
    "turns": "id",
    "llm_calls": "call_id",
    "meta": "key",
}


def ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = cli(argv, capsys)
    assert code == 0, (argv, out, err)
    return out


def copy(fixture: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(fixture, folder / fixture.name))


def columns(db: Path, table: str) -> list[str]:
    return [r["name"] for r in db_rows(db, f"SELECT name FROM pragma_table_info('{table}')")]


def rows(db: Path, table: str, cols: list[str], key: str) -> dict[Any, dict[str, Any]]:
    picked = ", ".join(f"[{c}]" for c in cols)
    return {r[key]: r for r in db_rows(db, f"SELECT {picked} FROM [{table}]")}


def snapshot(db: Path) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every schema-1 row of the conversation tables, on their schema-1 columns."""
    return {table: rows(db, table, columns(db, table), key) for table, key in KEYS.items()}


def schema_version(db: Path) -> str:
    return db_rows(db, "SELECT value FROM meta WHERE key = 'schema_version'")[0]["value"]


def test_fixtures_are_schema_1() -> None:
    for fixture in (V1_CONVERSATION, V1_TEACHING):
        conn = sqlite3.connect(f"file:{fixture}?mode=ro", uri=True)
        try:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert version.fetchone() == ("1",)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
        assert "judgments" not in tables


# -- reading changes nothing ------------------------------------------------------------------


def test_read_commands_open_a_v1_conversation_database_without_changing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy(V1_CONVERSATION, tmp_path / "v1")
    before = db.read_bytes()
    listing = ok(["show", str(db)], capsys)
    assert "3 episodes (3 complete, 0 failed), 18 turns" in listing
    transcript = ok(["show", str(db), FORK, "--hidden"], capsys)
    assert "counselor: Hi, I'm Ana. What would you like to talk about today?" in transcript
    assert "complete (max_turns), 6 turns" in transcript
    lines = ok(["export", str(db), "--format", "jsonl"], capsys).strip().splitlines()
    assert len(lines) == 18
    sft = ok(["export", str(db), "-f", "sft", "--role", "client"], capsys).strip().splitlines()
    assert len(sft) == 3
    step = ok(["replay", str(db), FORK, "--print", "--turn", "3"], capsys)
    assert "turn 3/5" in step and "rendered prompt" in step
    verdicts = ok(["replay", str(db), "--verify"], capsys)
    for episode in CONVERSATION_EPISODES:  # the fork included
        assert f"identical {episode} (6 turns)" in verdicts
    assert "3/3 episodes identical" in verdicts
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]  # no -wal, -shm, -journal
    assert schema_version(db) == "1"


def test_read_commands_open_a_v1_teaching_database_without_changing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy(V1_TEACHING, tmp_path / "v1")
    before = db.read_bytes()
    assert "4 episodes (4 complete, 0 failed), 32 turns" in ok(["show", str(db)], capsys)
    assert "student: (C) 42" in ok(["show", str(db), "baceaf925f214b51"], capsys)
    assert len(ok(["export", str(db)], capsys).strip().splitlines()) == 32
    assert "turn 0/7" in ok(["replay", str(db), "0", "--print", "--turn", "0"], capsys)
    # schema-1 teaching items were planned differently: not re-executable, but a clean error
    code, out, err = cli(["replay", str(db), "--verify"], capsys)
    assert code == 2, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in out + err
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]


# -- writing migrates ------------------------------------------------------------------------


def v1_scenario(folder: Path) -> Path:
    """The scenario the v1 conversation run was made with (same name, seed and grid)."""
    data = {
        "name": "v1_counseling",
        "graph": {"kind": "dyadic", "opener": "counselor", "max_turns": 6},
        "backend": "scripted",
        "seed": 3,
        "agents": {
            "client": {"role": "client", "persona": str(GRIEF_CLIENT)},
            "counselor": {"role": "counselor", "persona": str(CBT_COUNSELOR)},
        },
        "grid": {"client.style": ["plain", "upset"]},
    }
    path = folder / "v1_counseling.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def assert_schema_2(db: Path) -> None:
    assert schema_version(db) == str(SCHEMA_VERSION) == "2"
    for table, new in NEW_COLUMNS.items():
        assert new <= set(columns(db, table)), table
    assert {"judgment_id", "turn_idx", "judge", "rubric", "parsed_json", "valid", "score"} <= set(
        columns(db, "judgments")
    )
    keyed = db_rows(db, "SELECT name, pk FROM pragma_table_info('interventions') WHERE pk > 0")
    assert keyed == [{"name": "decision_id", "pk": 1}]
    assert "id" not in columns(db, "interventions")
    assert db_rows(db, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    assert db_rows(db, "PRAGMA foreign_key_check") == []


def test_rerunning_into_a_v1_conversation_database_migrates_it_and_keeps_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy(V1_CONVERSATION, tmp_path / "v1")
    old = snapshot(db)
    out = ok(["run", str(v1_scenario(tmp_path)), "--db", str(db), "-q"], capsys)
    # the same scenario plans the same episode ids: the v1 episodes count as complete
    assert "0/0 episodes, 2 already complete" in out
    assert_schema_2(db)
    for table, before in old.items():
        if table == "meta":
            continue
        after = rows(db, table, list(next(iter(before.values()))), KEYS[table])
        assert {k: after[k] for k in before} == before, table
    # the old rows read as what they were: public lines with no policy decision
    kinds = db_rows(db, "SELECT DISTINCT kind, audience_json, decision_json FROM turns")
    assert kinds == [{"kind": None, "audience_json": None, "decision_json": None}]
    verdicts = ok(["replay", str(db), "--verify"], capsys)
    assert "3/3 episodes identical" in verdicts
    # and a migrated database takes verdicts
    judge = tmp_path / "judge.yaml"
    judge.write_text(
        yaml.safe_dump(
            {
                "name": "later",
                "backend": "scripted",
                "judge": {
                    "role": "judge",
                    "observes": ["client"],
                    "persona": {"rubric": {"id": "r", "codes": ["ok", "not_ok"]}},
                },
            }
        ),
        encoding="utf-8",
    )
    assert "9 judgments on 3 episodes" in ok(["judge", str(db), str(judge), "-q"], capsys)
    assert "3/3 episodes identical" in ok(["replay", str(db), "--verify"], capsys)


def test_resuming_a_v1_teaching_run_migrates_it_and_rekeys_interventions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy(V1_TEACHING, tmp_path / "v1")
    old = snapshot(db)
    old_cols = columns(db, "interventions")
    old_interventions = rows(db, "interventions", old_cols, "id")
    assert len(old_interventions) == 24
    ok(["run", "--resume", str(db), "-q"], capsys)
    assert_schema_2(db)
    for table, before in old.items():
        if table == "meta":
            continue
        after = rows(db, table, list(next(iter(before.values()))), KEYS[table])
        assert {k: after[k] for k in before} == before, table
    kept = [c for c in old_cols if c != "id"]
    after = rows(db, "interventions", [*kept, "decision_id"], "decision_id")
    for old_id, row in old_interventions.items():
        migrated = after[f"legacy-{old_id}"]
        assert {c: migrated[c] for c in kept} == {c: row[c] for c in kept}
    n = len(after)
    assert n > 24  # the resumed run wrote its own decisions, keyed by decision_id
    # resuming again rewrites those decisions instead of adding copies
    ok(["run", "--resume", str(db), "-q"], capsys)
    assert len(db_rows(db, "SELECT decision_id FROM interventions")) == n
    assert schema_version(db) == "2"
