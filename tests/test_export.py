"""Export: SFT chat JSONL from one role's own view (no hidden state), DPO pairs from scored
sibling forks, flat jsonl/csv tables with filters, datasette on loopback, and bad input."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import base_scenario, db_rows
from typer.testing import CliRunner

import personae
from personae import RunLog
from personae.agents import Client, Counselor
from personae.backends import ScriptedBackend, register_backend
from personae.cli import app, main
from personae.export import EpisodeFilter, dpo_pairs, sft_conversations, turn_rows
from personae.judges import JudgeAgent, register_judge
from personae.replay import fork_episode

PERSONAE = Path(sys.executable).parent / "personae"
WriteScenario = Callable[..., Path]
SECRET_CLIENT = "SECRET-client-tom-note"
SECRET_COUNSELOR = "SECRET-counselor-plan"


@register_backend("tests-temperature")
def _temperature_backend(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    return ScriptedBackend(lambda r: f"Reply at temperature {r.temperature}.")


@register_judge("tests-temperature-judge")
class TemperatureJudge(JudgeAgent):
    """A stand-in judge with no model: a line scores ten times the temperature it names."""

    def evaluate(self, history: Any, target: Any) -> dict[str, Any] | None:
        found = re.search(r"temperature ([0-9]+(?:\.[0-9]+)?)", target.text if target else "")
        return (
            {"rationale": "read off the line", "warmth": round(10 * float(found[1]))}
            if found
            else None
        )


TEMPERATURE_RATER = {
    "role": "tests-temperature-judge",
    "observes": ["client"],
    "persona": {
        "rubric": {"id": "warmth", "dimensions": [{"name": "warmth", "scale": [0, 20]}]},
    },
}


def _run(write: WriteScenario, tmp_path: Path, **overrides: Any) -> Path:
    db = tmp_path / "run.db"
    result = personae.run(write(**overrides), db=db)
    assert result.failed == 0
    return db


@pytest.fixture
def secret_run(
    write_scenario: WriteScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A counseling run in which both agents log private per-turn state."""
    monkeypatch.setattr(Client, "hidden_state", lambda self: {"tom_note": SECRET_CLIENT})
    monkeypatch.setattr(Counselor, "hidden_state", lambda self: {"plan": SECRET_COUNSELOR})
    return _run(write_scenario, tmp_path, grid={"client.style": ["plain", "upset"]})


def _cli(argv: list[str]) -> Any:
    out = CliRunner().invoke(app, argv)
    assert out.exit_code == 0, out.output
    return out


# -- SFT ---------------------------------------------------------------------------------------


def test_sft_counselor_view_has_no_hidden_state_and_no_client_profile(secret_run: Path) -> None:
    logged = db_rows(secret_run, "SELECT hidden_json FROM turns WHERE hidden_json LIKE '%SECRET%'")
    assert len(logged) == 12  # the hidden state is there to leak
    out_file = secret_run.parent / "sft.jsonl"
    _cli(
        [
            "export",
            str(secret_run),
            "--format",
            "sft",
            "--role",
            "counselor",
            "--out",
            str(out_file),
        ]
    )
    raw = out_file.read_text()
    assert "SECRET" not in raw
    assert "hidden" not in raw
    assert "Private notes on the client" not in raw  # the client's private profile
    records = [json.loads(line) for line in raw.splitlines()]
    assert len(records) == 2
    with RunLog(secret_run) as log:
        turns = log.turns(records[0]["episode_id"])
    for record in records:
        messages = record["messages"]
        assert set(record) == {"messages", "episode_id", "agent"}
        assert all(set(m) == {"role", "content"} for m in messages)
        assert messages[0]["role"] == "system"
        assert messages[0]["content"].startswith("The counselor, Dr. Ana Reyes")
        assert messages[-1]["role"] == "assistant"
        roles = [m["role"] for m in messages[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
    first = records[0]["messages"]
    assert [m["content"] for m in first if m["role"] == "assistant"] == [
        t.text for t in turns if t.agent == "counselor"
    ]
    # the client's last line comes after the counselor's last one: it is dropped, not dangling
    assert first[-1]["content"] == "This is counselor, turn 4."


def test_sft_client_view_keeps_its_own_profile_but_no_hidden_state(secret_run: Path) -> None:
    records = sft_conversations(secret_run, "client")
    assert len(records) == 2
    blob = json.dumps(records)
    assert "SECRET" not in blob
    messages = records[0]["messages"]
    assert messages[0]["role"] == "system"
    assert "Private notes on the client" in messages[0]["content"]  # its own view
    assert "Techniques the counselor uses" not in blob  # the counselor's private prompt
    opening = "Hi, I'm Ana. What would you like to talk about today?"
    assert messages[1] == {"role": "user", "content": opening}
    assert messages[-1] == {"role": "assistant", "content": "This is client, turn 5."}


def test_sft_filters_by_condition_scenario_and_status(secret_run: Path) -> None:
    upset = sft_conversations(secret_run, "client", EpisodeFilter(where=["client.style=upset"]))
    assert len(upset) == 1
    assert "frustrated and guarded" in upset[0]["messages"][0]["content"]
    assert len(sft_conversations(secret_run, "client", EpisodeFilter(scenario="unit"))) == 2
    assert sft_conversations(secret_run, "client", EpisodeFilter(status="failed")) == []
    # a persona field that is not a grid axis filters too
    assert len(sft_conversations(secret_run, "client", EpisodeFilter(where=["client.age=70"]))) == 2
    out = _cli(
        [
            "export",
            str(secret_run),
            "-f",
            "sft",
            "--role",
            "client",
            "--where",
            "client.style=plain",
        ]
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "answers directly and openly" in json.loads(lines[0])["messages"][0]["content"]


# -- DPO ---------------------------------------------------------------------------------------


def test_dpo_pairs_from_scored_sibling_forks(write_scenario: WriteScenario, tmp_path: Path) -> None:
    # a judge scores each client line (ten times the temperature it was sampled at) into the
    # judgments table; DPO reads the scores from there
    agents = base_scenario()["agents"]
    agents["counselor"]["sampling"] = {"temperature": 0.7}
    agents["rater"] = TEMPERATURE_RATER
    db = _run(write_scenario, tmp_path, backend="tests-temperature", agents=agents)
    with RunLog(db) as log:
        (parent,) = [e["episode_id"] for e in log.episodes()]
    for t in ("0.2", "1.5"):
        fork_episode(db, parent, 3, settings=[f"client.sampling.temperature={t}"])
    result = dpo_pairs(db, "client")
    assert (result.groups, result.unscored, len(result.pairs)) == (1, 0, 3)
    best = result.pairs[0]
    assert best["chosen"] == [{"role": "assistant", "content": "Reply at temperature 1.5."}]
    assert best["rejected"] == [{"role": "assistant", "content": "Reply at temperature 0.8."}]
    assert (best["score_chosen"], best["score_rejected"]) == (15.0, 8.0)
    assert best["parent_episode_id"] == parent and best["fork_turn"] == 3
    prompt = best["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert "Private notes on the client" in prompt[0]["content"]
    assert prompt[-1]["content"] == "Reply at temperature 0.7."  # the counselor's turn 2
    assert "score" not in json.dumps(prompt)
    pairs = {(p["score_chosen"], p["score_rejected"]) for p in result.pairs}
    assert pairs == {(15.0, 8.0), (15.0, 2.0), (8.0, 2.0)}
    # the scores are judgments of the line at the fork turn, in their own table
    with RunLog(db) as log:
        judged = [j for j in log.judgments() if j["turn_idx"] == 3]
    assert sorted(j["score"] for j in judged) == [2.0, 8.0, 15.0]
    assert all(j["rubric"] == "warmth" and j["valid"] for j in judged)
    # the counselor did not speak at the fork turn: no pairs for that role
    assert dpo_pairs(db, "counselor").pairs == []


def test_dpo_without_judge_scores_makes_no_pairs_and_says_so(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path, backend="tests-temperature")
    with RunLog(db) as log:
        (parent,) = [e["episode_id"] for e in log.episodes()]
    fork_episode(db, parent, 3, settings=["client.sampling.temperature=0.2"])
    out = CliRunner().invoke(app, ["export", str(db), "-f", "dpo", "--role", "client"])
    assert out.exit_code == 0
    assert out.stdout == ""
    assert "0 preference pairs from 1 sibling-fork groups" in out.stderr
    assert "without scores no pairs are made" in out.stderr


# -- flat tables -------------------------------------------------------------------------------


def test_jsonl_and_csv_tables_join_episode_condition_and_call_fields(secret_run: Path) -> None:
    rows = turn_rows(secret_run)
    assert len(rows) == 12
    first = rows[1]
    columns = [
        "run_id",
        "scenario",
        "episode_id",
        "status",
        "fork_turn",
        "client.style",
        "client.persona",
        "counselor.persona",
        "repeat",
        "turn",
        "agent",
        "role",
        "text",
        "hidden_json",
        "prompt_tokens",
        "completion_tokens",
        "call_seed",
    ]
    for column in columns:
        assert column in first, column
    assert first["client.persona"] == "margaret_grief"
    assert first["counselor.persona"] == "cbt"
    assert first["turn"] == 1 and first["agent"] == "client"
    assert first["prompt_tokens"] > 0

    as_jsonl = _cli(
        ["export", str(secret_run), "--format", "jsonl", "--where", "client.style=upset"]
    )
    parsed = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert len(parsed) == 6 and {r["client.style"] for r in parsed} == {"upset"}

    out_file = secret_run.parent / "turns.csv"
    _cli(["export", str(secret_run), "--format", "csv", "-o", str(out_file)])
    table = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert len(table) == 12
    assert table[1]["text"] == "This is client, turn 1."
    assert table[1]["client.style"] in ("plain", "upset")


def test_jsonl_nests_the_hidden_state_audience_and_decision(secret_run: Path) -> None:
    parsed = [json.loads(line) for line in _cli(["export", str(secret_run)]).stdout.splitlines()]
    assert len(parsed) == 12
    for row in parsed:
        hidden = row["hidden_json"]
        assert isinstance(hidden, dict)  # an object, not a string holding one
        mine = {"client": ("tom_note", SECRET_CLIENT), "counselor": ("plan", SECRET_COUNSELOR)}
        key, secret = mine[row["agent"]]
        assert hidden[key] == secret
        assert row["audience_json"] is None or isinstance(row["audience_json"], list)
    as_text = {r["turn"]: r["hidden_json"] for r in turn_rows(secret_run)}
    assert all(json.loads(as_text[r["turn"]]) == r["hidden_json"] for r in parsed[:6])


def test_parquet_round_trips_through_pyarrow_and_pandas(secret_run: Path) -> None:
    import pyarrow.parquet as pq

    out_file = secret_run.parent / "turns.parquet"
    result = _cli(["export", str(secret_run), "--format", "parquet", "--out", str(out_file)])
    assert "12 turns" in result.stderr
    rows = turn_rows(secret_run)
    table = pq.read_table(out_file)
    assert table.column_names == list(rows[0])
    assert table.to_pylist() == rows  # every value as the JSONL/CSV rows hold it
    assert table.schema.field("prompt_tokens").type == "int64"
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(out_file)
    assert frame.shape == (12, len(rows[0]))
    assert list(frame["text"]) == [r["text"] for r in rows]
    hidden = [json.loads(h) for h in frame["hidden_json"]]
    assert {h.get("tom_note") for h in hidden} == {SECRET_CLIENT, None}


def test_parquet_writes_columns_whose_values_share_no_type_as_text(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from personae.export import write_parquet

    rows = [{"a": 1, "b": 0.5}, {"a": "x", "c": {"k": [1]}}, {"b": None}]
    assert write_parquet(rows, tmp_path / "mixed.parquet") == 3
    table = pq.read_table(tmp_path / "mixed.parquet")
    assert table.to_pydict() == {
        "a": ["1", "x", None],
        "b": [0.5, None, None],
        "c": [None, '{"k": [1]}', None],
    }


# -- bad input ---------------------------------------------------------------------------------


def test_bad_export_input_is_one_line_and_exit_2(
    secret_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(secret_run)
    cases = {
        "no agent has the role 'teacher'": ["export", db, "-f", "sft", "--role", "teacher"],
        "needs --role": ["export", db, "-f", "sft"],
        "unknown export format 'xlsx'": ["export", db, "-f", "xlsx"],
        "--format parquet writes a binary file": ["export", db, "-f", "parquet"],
        "unknown table 'calls'": ["export", db, "--table", "calls"],
        "not --table interventions": [
            "export", db, "-f", "sft", "--role", "client", "--table", "interventions"
        ],
        "no episode has a condition or persona field 'client.mood'": [
            "export", db, "--where", "client.mood=sad"
        ],
        "no scenario 'other'": ["export", db, "--scenario", "other"],
        "unknown status 'done'": ["export", db, "--status", "done"],
        "not a personae run database": ["export", str(Path(__file__)), "-f", "jsonl"],
    }  # fmt: skip
    for expected, argv in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


# -- browse ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, deadline: float) -> Any:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_browse_serves_the_turns_table_on_loopback_with_search(secret_run: Path) -> None:
    before = secret_run.read_bytes()
    port = _free_port()
    proc = subprocess.Popen(
        [str(PERSONAE), "browse", str(secret_run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}/{secret_run.stem}"
        rows = _get_json(f"{base}/turns.json?_shape=array&_size=max", time.monotonic() + 60)
        assert len(rows) == 12
        assert {r["text"] for r in rows} >= {
            "This is client, turn 1.",
            "This is counselor, turn 4.",
        }
        found = _get_json(f"{base}/turns.json?_shape=array&_search=counselor", time.monotonic() + 5)
        assert found and all("counselor" in r["text"].lower() for r in found)
        assert len(found) == 4  # "This is counselor, turn 2/4." in two episodes
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert "Uvicorn running on http://127.0.0.1:" in output
    # the run database itself was not changed (the search index lives in a snapshot)
    assert db_rows(secret_run, "SELECT name FROM sqlite_master WHERE name LIKE 'turns_fts%'") == []
    assert secret_run.read_bytes() == before
