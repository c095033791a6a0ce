"""Trainer mode: a person plays the counselor (backend human) through the one runner's
interrupts; /pause and --resume continue from the checkpoint; the CCD after /end is scored
against the client's profile; a formulator's CCD is scored the same way."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SCENARIOS
from typer.testing import CliRunner

from personae import RunLog
from personae.cli import app
from personae.errors import UserError
from personae.runner import End, Pause, run

PERSONAE = Path(sys.executable).parent / "personae"
TRAINER = SCENARIOS / "counseling_trainer.yaml"
runner = CliRunner()

# Hannah's reference: categories helpless, worthless; items "I am incompetent." and
# "I am bad - dangerous, toxic, evil."; emotions ashamed, anxious, guilty.
PLANTED = {
    "core_beliefs": ["I am incompetent."],  # categories derived: [helpless] -> 1/2
    "emotions": ["guilty", "hurt"],  # {guilty} / {ashamed, anxious, guilty, hurt} -> 1/4
    "situation": "Her baby cried for hours and calmed down only with her partner.",
}
EXPECTED = {"core_belief_categories": 0.5, "core_beliefs": 0.5, "emotions": 0.25}


def _train(args: list[str], lines: str) -> Any:
    return runner.invoke(app, ["train", *args], input=lines)


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _ccd_file(tmp_path: Path, data: dict[str, Any], name: str = "ccd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _scores(db: Path, judge: str = "ccd:trainee") -> dict[str, float | None]:
    rows = _rows(db, "SELECT parsed_json, score, rubric FROM judgments WHERE judge = ?", judge)
    assert {r[2] for r in rows} == {"ccd"}
    return {json.loads(r[0])["field"]: r[1] for r in rows}


def test_session_from_a_file_logs_human_turns_without_model_calls(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    lines = tmp_path / "lines.txt"
    lines.write_text("Hello Hannah, what brings you here?\n/help\n\nHow was your week?\n/end\n")
    ccd = _ccd_file(tmp_path, PLANTED)
    result = _train([str(TRAINER), "--backend", "scripted", "--db", str(db),
                     "--input", str(lines), "--ccd", str(ccd)], "")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[turn 1 · 00:00] Counselor (you): Hello Hannah" in result.output
    assert "[turn 3 · " in result.output and "/pause pauses it" in result.output
    with RunLog(db) as log:
        (episode,) = log.episodes()
        assert (episode["status"], episode["end_reason"]) == ("complete", "ended")
        turns = log.turns(episode["episode_id"])
        calls = log.calls(episode["episode_id"])
    assert [t.agent for t in turns] == ["counselor", "client", "counselor", "client"]
    assert [t.text for t in turns if t.agent == "counselor"] == [
        "Hello Hannah, what brings you here?",
        "How was your week?",
    ]
    for turn in turns:
        if turn.agent == "counselor":
            assert turn.call_id is None and turn.hidden["human"] is True
            assert isinstance(turn.hidden["seconds"], float)
    assert {c["agent"] for c in calls if c["purpose"] == "turn"} == {"client"}
    scores = _scores(db)
    assert {k: scores[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert scores["history"] == 0.0  # nothing submitted: 0 with no rater call
    assert scores["situation"] is not None
    assert "mean score:" in result.output and "0.25 (Jaccard)" in result.output


def _train_piped(args: list[str], lines: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PERSONAE), "train", *args],
        input=lines,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pause_then_resume_continues_at_the_right_turn(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    first = _train_piped([str(TRAINER), "--backend", "scripted", "--db", str(db)],
                         "Hello Hannah.\nTell me about the baby.\n/pause\n", tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert f"personae train --resume {db}" in first.stdout
    assert db.with_name("p.db.checkpoints").exists()
    assert _rows(db, "SELECT status, end_reason, n_turns FROM episodes") == [
        ("paused", "paused", 4)
    ]
    assert _rows(db, "SELECT status FROM runs") == [("paused",)]
    (started,) = _rows(db, "SELECT started_at FROM episodes")

    ccd = _ccd_file(tmp_path, PLANTED)
    second = _train_piped(["--resume", str(db), "--ccd", str(ccd)],
                          "What happened on Wednesday?\n/end\n", tmp_path)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "Hello Hannah." in second.stdout  # the session so far is shown again
    with RunLog(db) as log:
        (episode,) = log.episodes()
        turns = log.turns(episode["episode_id"])
        calls = log.calls(episode["episode_id"])
    assert episode["status"] == "complete" and episode["n_turns"] == 6
    assert (episode["started_at"],) == started  # taken up, not started again
    assert [t.idx for t in turns] == list(range(6))
    assert turns[4].agent == "counselor" and turns[4].text == "What happened on Wednesday?"
    (next_call,) = [c for c in calls if c["turn_idx"] == 5 and c["purpose"] == "turn"]
    for earlier in ("Hello Hannah.", "Tell me about the baby.", "What happened on Wednesday?"):
        assert earlier in next_call["prompt"]
    assert _scores(db)["emotions"] == pytest.approx(0.25)
    # the re-run answers the person's turns from the log: the paused-and-resumed session replays
    verified = runner.invoke(app, ["replay", str(db), "--verify"])
    assert verified.exit_code == 0, verified.output
    assert "identical" in verified.output


def test_the_ccd_form_reads_numbered_choices_from_the_input(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    # the form after /end: categories, core beliefs, emotions (numbers), then seven texts
    form = "1, 3\n1, 19\n4, 2, 7\n" + "\n" * 4 + "She could not settle her baby.\n\n\n"
    result = _train([str(TRAINER), "--backend", "scripted", "--db", str(db)],
                    "Hello.\n/end\n" + form)  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = _scores(db)
    assert scores["core_belief_categories"] == 1.0  # helpless, worthless
    assert scores["core_beliefs"] == pytest.approx(1 / 3)  # incompetent; "don't deserve to live"
    assert scores["emotions"] == 1.0  # ashamed, anxious, guilty


@pytest.mark.parametrize(
    ("bad", "field", "valid"),
    [
        ({"emotions": ["guilty", "happy"]}, "emotions", "sad/down/lonely/unhappy"),
        ({"core_belief_categories": ["lonely"]}, "core_belief_categories", "unlovable"),
        ({"core_beliefs": ["I am great."]}, "core_beliefs", "I am incompetent."),
    ],
)
def test_a_ccd_off_the_closed_lists_is_one_line_exit_2_nothing_written(
    tmp_path: Path, bad: dict[str, Any], field: str, valid: str
) -> None:
    db = tmp_path / "never.db"
    ccd = _ccd_file(tmp_path, bad)
    proc = _train_piped([str(TRAINER), "--backend", "scripted", "--db", str(db),
                         "--ccd", str(ccd)], "Hello.\n/end\n", tmp_path)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and field in line and valid in line
    assert not db.exists()

    scored = tmp_path / "scored.db"  # and for a finished episode: nothing added
    ok = _train_piped([str(TRAINER), "--backend", "scripted", "--db", str(scored)],
                      "Hello.\n/end\n", tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr  # the form got no answers: no CCD
    before = _rows(scored, "SELECT count(*) FROM judgments")
    proc = subprocess.run(
        [str(PERSONAE), "ccd", "score", str(scored), "--episode", "0", "--ccd", str(ccd)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert _rows(scored, "SELECT count(*) FROM judgments") == before == [(0,)]


def test_a_formulators_ccd_is_scored_like_a_trainees(tmp_path: Path) -> None:
    planted = {
        "core_belief_categories": ["helpless"],
        "core_beliefs": ["I am incompetent.", "I am needy."],  # 1/3 against Hannah's
        "emotions": ["anxious/worried/fearful/scared/tense"],  # 1/3
        "history": "A new mother, alone most days.",
        "intermediate_beliefs": "",
        "intermediate_beliefs_during_depression": "",
        "coping_strategies": "",
        "situation": "The baby cried for two hours.",
        "automatic_thoughts": "",
        "behavior": "",
    }
    spec = yaml.safe_load((SCENARIOS / "counseling_formulation.yaml").read_text())
    spec["backend"] = "scripted"
    spec["backend_options"] = {"replies": {"formulator": [json.dumps(planted)]}}
    spec["grid"] = {"client.persona": ["personas/clients/hannah_new_parent.yaml"]}
    path = SCENARIOS / "_test_formulation.yaml"  # persona paths are relative to scenarios/
    path.write_text(yaml.safe_dump(spec))
    try:
        db = tmp_path / "form.db"
        result = run(path, db=db)
    finally:
        path.unlink()
    assert result.complete == 1
    assert _rows(db, "SELECT judge, valid FROM judgments WHERE rubric = 'ccd_formulation'") == [
        ("formulator", 1)
    ]
    scored = runner.invoke(app, ["ccd", "score", str(db)])
    assert scored.exit_code == 0, scored.output
    scores = _scores(db, "ccd:formulator")
    assert scores["core_belief_categories"] == pytest.approx(0.5)
    assert scores["core_beliefs"] == pytest.approx(1 / 3)
    assert scores["emotions"] == pytest.approx(1 / 3)
    assert len(scores) == 10 and scores["behavior"] == 0.0
    calls = _rows(db, "SELECT call_id FROM llm_calls WHERE agent = 'ccd'")
    assert sorted(c[0].rsplit("-", 1)[-1] for c in calls) == ["history", "situation"]


def test_runs_without_a_person_use_no_checkpointer(tmp_path: Path, monkeypatch: Any) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpointer was opened")

    monkeypatch.setattr(AsyncSqliteSaver, "from_conn_string", refuse)
    db = tmp_path / "plain.db"
    result = run("counseling_cbt", backend="scripted", episodes=1, db=db)
    assert result.complete == 1
    assert not db.with_name("plain.db.checkpoints").exists()
    # a person's scenario run by models only (run --backend) needs none either
    assert run(TRAINER, backend="scripted", db=tmp_path / "models.db").complete == 1


def test_a_person_needs_someone_to_answer(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(UserError, match="played by a person"):
        run(TRAINER, settings=["backend=scripted"], db=db)
    assert not db.exists()
    answered = run(TRAINER, settings=["backend=scripted"], db=db, on_interrupt=lambda p: Pause())
    assert answered.paused == 1 and answered.status == "paused"


def test_train_refuses_a_scenario_nobody_plays(tmp_path: Path) -> None:
    result = _train(["counseling_cbt", "--backend", "scripted", "--db", str(tmp_path / "x.db")], "")
    assert result.exit_code != 0
    assert isinstance(result.exception, UserError)
    assert "played by a person" in str(result.exception)


@pytest.mark.model
def test_a_session_on_the_embedded_model(tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    ccd = _ccd_file(tmp_path, PLANTED)
    said = "Hi, I'm Ana. What brings you in today?\nThat sounds exhausting.\n/end\n"
    result = _train([str(TRAINER), "--db", str(db), "--ccd", str(ccd)], said)
    assert result.exit_code == 0, result.output
    with RunLog(db) as log:
        (episode,) = log.episodes()
        turns = log.turns(episode["episode_id"])
    assert [t.agent for t in turns] == ["counselor", "client", "counselor", "client"]
    assert all(t.text.strip() for t in turns if t.agent == "client")
    scores = _scores(db)
    assert {k: scores[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert scores["situation"] is not None  # the model's rating parsed under the grammar


def test_a_person_takes_turns_in_a_group_graph_too(tmp_path: Path) -> None:
    asked: list[int] = []

    def answer(payload: dict[str, Any]) -> str | End:
        asked.append(int(payload["turn"]))
        return End() if len(asked) > 2 else f"Dev here, at turn {payload['turn']}."

    db = tmp_path / "group.db"
    settings = ["backend=scripted", "agents.dev.backend=human", "episodes=1"]
    result = run(
        SCENARIOS / "neighbourhood_meeting.yaml", db=db, on_interrupt=answer, settings=settings
    )
    assert result.complete == 1
    rows = _rows(db, "SELECT idx, text, hidden_json, decision_json FROM turns WHERE agent = 'dev'")
    assert [r[0] for r in rows] == asked[:2]
    for idx, text, hidden, decision in rows:
        assert text == f"Dev here, at turn {idx}." and json.loads(hidden)["human"] is True
        assert json.loads(decision)["speaker"] == "dev"  # the turn policy chose the person
    assert _rows(db, "SELECT end_reason FROM episodes") == [("ended",)]
