"""`personae run --set KEY=VALUE`, `--repeats N` and what `--episodes N` says when the scenario
plans fewer: overrides by dotted path, applied before validation, stored in the run's spec (so
resume and replay see them); a path that names nothing is one line with exit code 2 and
nothing written."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import base_scenario, cli, db_rows

import personae
from personae.errors import UserError


@pytest.fixture
def scenario(write_scenario: Callable[..., Path]) -> Path:
    data = base_scenario(repeats=2)
    data["agents"]["counselor"]["sampling"] = {"temperature": 0.7}
    data["grid"] = {"client.style": ["plain", "upset", "reserved"]}
    return write_scenario(data)


def _spec(db: Path) -> dict[str, object]:
    spec = json.loads(db_rows(db, "SELECT spec_json FROM runs")[-1]["spec_json"])
    assert isinstance(spec, dict)
    return spec


def test_settings_override_fields_at_any_depth_and_are_stored(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(scenario), "--db", str(db), "-q",
                        "--set", "graph.max_turns=4",
                        "--set", "agents.counselor.sampling.temperature=0.2",
                        "--set", "seed=11",
                        "--set", "grid.client.style=[plain, upset]"], capsys)  # fmt: skip
    assert code == 0, err
    episodes = db_rows(db, "SELECT n_turns, condition_json FROM episodes")
    assert len(episodes) == 4  # 2 styles x 2 repeats
    assert {e["n_turns"] for e in episodes} == {4}
    assert {json.loads(e["condition_json"])["client"]["style"] for e in episodes} == {
        "plain",
        "upset",
    }
    temps = {
        r["agent"]: json.loads(r["params_json"])["temperature"]
        for r in db_rows(db, "SELECT agent, params_json FROM llm_calls")
    }
    assert temps["counselor"] == 0.2 and temps["client"] == 0.8
    spec = _spec(db)
    assert spec["seed"] == 11 and db_rows(db, "SELECT seed FROM runs")[0]["seed"] == 11
    assert spec["graph"]["max_turns"] == 4  # type: ignore[index]


def test_a_persona_field_of_a_persona_file_can_be_set(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(scenario), "--db", str(db), "-q", "--set", "grid={}",
                        "--set", "agents.client.persona.name=Rosa Quintero",
                        "--set", "repeats=1"], capsys)  # fmt: skip
    assert code == 0, err
    personas = json.loads(db_rows(db, "SELECT personas_json FROM episodes")[0]["personas_json"])
    assert personas["client"]["name"] == "Rosa Quintero"
    assert personas["client"]["id"] == "margaret_grief"  # the rest of the file is kept


def test_resume_and_replay_see_the_overrides(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "run.db"
    argv = ["run", str(scenario), "--db", str(db), "-q", "--set", "graph.max_turns=3"]
    assert cli(argv, capsys)[0] == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE episodes SET status = 'failed' WHERE idx = 0")
    code, out, err = cli(["run", "--resume", str(db), "-q"], capsys)
    assert code == 0, err
    assert "1/1 episodes" in out and "5 already complete" in out
    assert {e["n_turns"] for e in db_rows(db, "SELECT n_turns FROM episodes")} == {3}
    code, out, err = cli(["replay", str(db), "--verify"], capsys)
    assert code == 0, out + err
    assert "6/6 episodes identical" in out


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("graph.max_turn=4", "unknown key 'graph.max_turn' — did you mean 'max_turns'? valid "
                             "under graph: kind, max_turns, end_on_farewell, seed_lines, opener"),
        ("agents.counselr.role=x", "unknown key 'agents.counselr' — did you mean 'counselor'? "
                                   "valid under agents: counselor, client"),
        ("agents.counselor.sampling.temprature=1", "did you mean 'temperature'?"),
        ("agents.client.persona.nam=Rosa", "did you mean 'name'?"),
        ("sed=3", "unknown key 'sed' — did you mean 'seed'? valid at the top level: name,"),
        ("seed.value=3", "'seed' is a value, not a mapping"),
        ("graph.max_turns", "expected KEY=VALUE"),
        ("graph.max_turns=many", "--set graph.max_turns=many: bad value for 'graph.max_turns'"),
        ("agents.counselor.sampling.temperature=9", "--set agents.counselor.sampling."
                                                    "temperature=9: bad value"),
    ],
)  # fmt: skip
def test_a_setting_that_names_nothing_is_one_line_and_writes_nothing(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, expected: str
) -> None:
    db = tmp_path / "never.db"
    code, out, err = cli(["run", str(scenario), "--db", str(db), "--set", setting], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: --set {setting}"), err
    assert expected in err
    assert not db.exists() and "database:" not in out


def test_episodes_beyond_the_plan_say_what_was_run(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "run.db"
    code, out, err = cli(["run", str(scenario), "--db", str(db), "-q", "--episodes", "50"], capsys)
    assert code == 0
    assert err.strip() == (
        "--episodes 50: the scenario plans 6 episodes (3 conditions × 2 repeats); running 6 — "  # noqa: RUF001
        "raise repeats or pass --repeats N to run more"
    )
    assert "6/6 episodes" in out
    code, out, err = cli(["run", str(scenario), "--db", str(tmp_path / "r.db"), "-q",
                          "--episodes", "8", "--repeats", "4"], capsys)  # fmt: skip
    assert code == 0 and err == "" and "8/8 episodes" in out
    assert _spec(tmp_path / "r.db")["repeats"] == 4
    code, out, err = cli(["run", str(scenario), "--db", str(tmp_path / "c.db"), "-q",
                          "--episodes", "4"], capsys)  # fmt: skip
    assert code == 0 and err == "" and "4/4 episodes" in out  # a cap below the plan: silent


def test_the_python_api_takes_settings_and_repeats(scenario: Path, tmp_path: Path) -> None:
    result = personae.run(
        scenario, db=tmp_path / "api.db", settings=["graph.max_turns=2"], repeats=1
    )
    assert (result.episodes, result.turns) == (3, 6)
    with pytest.raises(UserError, match=r"unknown key 'graph\.turns'"):
        personae.run(scenario, db=tmp_path / "x.db", settings=["graph.turns=2"])
    assert not (tmp_path / "x.db").exists()
