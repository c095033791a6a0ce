"""`personae.frames(DB)`: the turn log as pandas DataFrames, read-only, per run."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from conftest import file_snapshot
from discussion_db import Discussion, Line, planted_discussions, write_discussions

import personae
from personae import UserError
from personae.analysis import TABLES


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database, two runs: the planted study (18 discussions) and a small second run."""
    db = tmp_path_factory.mktemp("frames") / "two.db"
    write_discussions(db, planted_discussions())
    small = Discussion(
        "rules_only",
        {"participant_1": "neutral", "participant_2": "troll"},
        [Line("participant_1", "hello", ratings={"annotator_1": (2, 3)}),
         Line("participant_2", "hi", ratings={"annotator_1": None})],
    )  # fmt: skip
    return write_discussions(db, [small], run_id="run-2")


def test_every_table_is_a_dataframe_with_the_run_first(two_runs: Path) -> None:
    f = personae.frames(two_runs)
    assert isinstance(f, personae.Frames)
    for name in TABLES:
        assert isinstance(getattr(f, name), pd.DataFrame), name
    assert list(f.runs["run_id"]) == ["run-1", "run-2"]
    assert len(f.episodes) == 19
    assert len(f.turns) == 18 * 2 + 12 * 6 + 14 * 6 + 13 * 6 + 2  # seeds, then each sequence
    assert len(f.calls) == len(f.turns) - 18 * 2  # seeds have no model call
    for frame in (f.turns, f.calls, f.judgments):
        assert frame.columns[0] == "run_id"
    assert f.interventions.empty and "decision_id" in f.interventions.columns
    assert f.turns is f.turns  # read once, then kept


def test_condition_and_parsed_json_become_columns(two_runs: Path) -> None:
    f = personae.frames(two_runs)
    episodes = f.episodes
    assert {"facilitator.strategy", "repeat", "condition_json", "outcome_json"} <= set(episodes)
    strategies = episodes.loc[episodes["run_id"] == "run-1", "facilitator.strategy"]
    assert strategies.value_counts().to_dict() == {
        "none": 6,
        "rules_only": 6,
        "moderation_game": 6,
    }
    assert list(episodes["repeat"][:3]) == [0, 1, 2]
    j = f.judgments
    assert {"toxicity", "argument_quality", "rationale"} <= set(j.columns)
    assert str(j["turn_idx"].dtype) == "Int64" and str(j["valid"].dtype) == "Int64"
    invalid = j[j["valid"] == 0]
    assert len(invalid) == 5 and invalid["toxicity"].isna().all()
    rated = j[(j["judge"] == "annotator_1") & (j["run_id"] == "run-2")]
    assert list(rated["valid"]) == [1, 0] and list(rated["argument_quality"][:1]) == [3.0]
    assert rated["toxicity"].iloc[0] == 2.0 and pd.isna(rated["toxicity"].iloc[1])
    baseline = j[j["judge"] == "toxicity_baseline"]
    assert baseline["toxicity"].between(0, 1).all() and baseline["argument_quality"].isna().all()


def test_a_flattened_key_that_clashes_with_a_column_is_prefixed(tmp_path: Path) -> None:
    db = write_discussions(tmp_path / "x.db", planted_discussions(("none",), 1))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("""UPDATE judgments SET parsed_json = '{"score": 4, "toxicity": 2}'""")
    conn.close()
    j = personae.frames(db).judgments
    assert "parsed.score" in j.columns and j["parsed.score"].eq(4).all()
    assert j["toxicity"].eq(2).all() and j["score"].dropna().ne(4).all()  # the table's own


def test_run_id_limits_every_frame_to_that_run(two_runs: Path) -> None:
    f = personae.frames(two_runs, run_id="run-2")
    assert list(f.runs["run_id"]) == ["run-2"]
    assert len(f.episodes) == 1
    for frame in (f.episodes, f.turns, f.calls, f.judgments):
        assert set(frame["run_id"]) == {"run-2"}
    assert len(f.turns) == 2 and len(f.judgments) == 2


def test_reading_changes_nothing_in_the_database(two_runs: Path) -> None:
    before = file_snapshot(two_runs)
    f = personae.frames(two_runs)
    for name in TABLES:
        getattr(f, name)
    assert file_snapshot(two_runs) == before


def test_a_table_an_older_database_lacks_is_empty_with_its_columns(tmp_path: Path) -> None:
    db = write_discussions(tmp_path / "old.db", planted_discussions(("none",), 1))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP TABLE judgments")
        conn.execute("DROP TABLE interventions")
    conn.close()
    f = personae.frames(db)
    assert f.judgments.empty and f.judgments.columns[0] == "run_id"
    assert {"judge", "parsed_json", "valid"} <= set(f.judgments.columns)
    assert f.interventions.empty and len(f.turns) == 14


def test_bad_input_is_the_stores_one_line_error(tmp_path: Path, two_runs: Path) -> None:
    with pytest.raises(UserError, match="database file not found"):
        personae.frames(tmp_path / "missing.db")
    text = tmp_path / "notes.db"
    text.write_text("not a database\n", encoding="utf-8")
    with pytest.raises(UserError, match="not a personae run database"):
        personae.frames(text)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(UserError, match="not a personae run database"):
        personae.frames(other)
    with pytest.raises(UserError, match="no such run: 'run-9'") as info:
        personae.frames(two_runs, run_id="run-9")
    assert "\n" not in str(info.value)


def test_the_readme_example_runs(two_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "frames(" in b and "logs/discussion.db" in b
    ]
    assert len(blocks) == 1
    exec(blocks[0].replace("logs/discussion.db", str(two_runs)), {})
    shown = capsys.readouterr().out
    assert "participant_1" in shown and "annotator_1" in shown and "toxicity" in shown
