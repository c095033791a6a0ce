"""Multi-session courses: sessions as stages of the one runner, summaries carried as memory.

Scripted runs of 2 courses x 3 sessions check what each session was given (its prompts in
`llm_calls`), how sessions are linked (course and session ids), that a run killed mid-course
resumes at each course's next session, that ratings aggregate per session in `frames`, and that
a bad `course:` block is one line, exit 2, nothing written. One real course runs on `embedded`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SCENARIOS, base_scenario, tree_snapshot

import personae
from personae.backends import GenerationRequest, ScriptedBackend
from personae.cli import main
from personae.export import sft_conversations
from personae.replay import load_setup
from personae.scenario import load_scenario, plan_episodes
from personae.store import RunLog

GOALS = {
    "assessment": "Explore one recent situation with the client.",
    "intervention": "Work on the automatic thoughts of that situation.",
    "consolidation": "Review what changed and close the course.",
}


def course_scenario(**course: Any) -> dict[str, Any]:
    """2 courses (repeats) x 3 sessions in 3 stages, a summarizer and a 0-10 session rater."""
    data = base_scenario(repeats=2)
    data["agents"]["summarizer"] = {
        "role": "session_summarizer",
        "observes": "all",
        "when": "end",
        "persona": {"id": "notes", "max_chars": 120},
    }
    data["agents"]["rater"] = {
        "role": "judge",
        "observes": "all",
        "when": "end",
        "persona": {
            "id": "rater",
            "rubric": {
                "id": "alliance",
                "normalise": 10,
                "rationale": 0,
                "dimensions": [{"name": "bond", "scale": [1, 5]}],
            },
        },
    }
    data["course"] = {
        "sessions": 3,
        "summary": "summarizer",
        "stages": [{"name": n, "sessions": 1, "goal": g} for n, g in GOALS.items()],
        **course,
    }
    return data


def _sessions(path: Path) -> dict[str, int]:
    return {p.episode_id: int(p.condition["session"]) for p in plan_episodes(load_scenario(path))}


def _script(sessions: dict[str, int]) -> Callable[[GenerationRequest], str]:
    """Summaries naming their episode (progress 3 + session), a bond of the session + 1."""

    def reply(request: GenerationRequest) -> str:
        episode, agent = request.tags["episode_id"], request.tags["agent"]
        session = sessions[episode]
        if agent == "summarizer":
            return json.dumps(
                {
                    "themes": f"themes-{episode}",
                    "client_state": f"state-{episode}",
                    "homework": f"homework-{episode}",
                    "plan": f"plan-{episode}",
                    "progress_1": 3 + session,
                }
            )
        if agent == "rater":
            return json.dumps({"bond": session + 1})
        return f"{agent} speaks at turn {request.tags['turn']}."

    return reply


@pytest.fixture
def course_run(write_scenario: Callable[..., Path], tmp_path: Path) -> tuple[Path, dict[str, int]]:
    path = write_scenario(course_scenario())
    sessions = _sessions(path)
    db = tmp_path / "course.db"
    result = personae.run(path, backend=ScriptedBackend(_script(sessions)), db=db)
    assert result.complete == 6 and result.status == "complete"
    return db, sessions


def _rows(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def _courses(db: Path) -> dict[str, dict[int, str]]:
    """Episode ids by course id and session."""
    found: dict[str, dict[int, str]] = {}
    for row in _rows(db, "SELECT episode_id, condition_json, stage FROM episodes"):
        cond = json.loads(row["condition_json"])
        assert row["stage"] == cond["session"] - 1  # session k runs in stage k-1
        found.setdefault(cond["course"], {})[cond["session"]] = row["episode_id"]
    return found


def _prompt(db: Path, episode: str, agent: str) -> str:
    rows = _rows(
        db,
        "SELECT prompt FROM llm_calls WHERE episode_id = ? AND agent = ? ORDER BY turn_idx",
        episode,
        agent,
    )
    assert rows, (episode, agent)
    return str(rows[0]["prompt"])


def test_sessions_are_given_the_earlier_summaries_and_their_stage_goal(
    course_run: tuple[Path, dict[str, int]],
) -> None:
    db, _ = course_run
    courses = _courses(db)
    assert len(courses) == 2 and all(sorted(c) == [1, 2, 3] for c in courses.values())
    for course in courses.values():
        s1, s2, s3 = course[1], course[2], course[3]
        first = _prompt(db, s1, "counselor")
        assert GOALS["assessment"] in first and "session 1 of 3" in first
        assert "Notes from the earlier sessions" not in first
        second = _prompt(db, s2, "counselor")
        assert GOALS["intervention"] in second and GOALS["assessment"] not in second
        for field in ("themes", "state", "homework", "plan"):  # the last session in full
            assert f"{field}-{s1}" in second
        third = _prompt(db, s3, "counselor")
        assert GOALS["consolidation"] in third
        assert f"themes-{s1}" in third and f"homework-{s1}" not in third  # older: short
        assert f"homework-{s2}" in third and f"plan-{s2}" in third  # the last: in full
        other = next(c for c in courses.values() if c is not course)
        assert f"themes-{other[1]}" not in third  # only its own course's notes
        # the client is told its progress since the last session, not the counselor's goal
        client = _prompt(db, s3, "client")
        assert "Since last session" in client and "5/10" in client  # session 2's progress
        assert f"homework-{s2}" in client and GOALS["consolidation"] not in client
        assert "Since last session" in _prompt(db, s2, "client")
        assert "4/10" in _prompt(db, s2, "client")


def test_what_a_session_was_given_is_stored_with_it_and_replayed(
    course_run: tuple[Path, dict[str, int]],
) -> None:
    db, _ = course_run
    course = next(iter(_courses(db).values()))
    row = _rows(db, "SELECT * FROM episodes WHERE episode_id = ?", course[3])[0]
    context = json.loads(row["context_json"])
    assert set(context) == {"counselor", "client"}
    assert context["counselor"] in _prompt(db, course[3], "counselor")
    outcome = json.loads(row["outcome_json"])
    assert outcome["verdicts"]["summarizer"]["homework"] == f"homework-{course[3]}"
    summaries = _rows(
        db, "SELECT episode_id, valid, score FROM judgments WHERE judge = 'summarizer'"
    )
    assert len(summaries) == 6 and all(s["valid"] == 1 for s in summaries)
    # a replay rebuilds the session with exactly what it was given (from the store)
    with RunLog(db) as log:
        setup = load_setup(log, course[3])
    assert setup.plan.context == context
    # and a training export shows the counselor the system prompt it had, memory included
    records = {r["episode_id"]: r for r in sft_conversations(db, "counselor")}
    system = records[course[3]]["messages"][0]["content"]
    assert context["counselor"] in system and f"homework-{course[2]}" in system


def test_a_run_killed_mid_course_resumes_each_course_at_its_next_session(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    summary = json.dumps({"themes": "sleep and guilt", "client_state": "tired",
                          "homework": "one walk a day", "plan": "thought record",
                          "progress_1": 6})  # fmt: skip
    data = course_scenario()
    data["backend_options"] = {"latency_s": 0.03, "replies": {"summarizer": [summary]}}
    path = write_scenario(data)
    db = tmp_path / "killed.db"
    command = [sys.executable, "-m", "personae", "run", str(path), "--db", str(db), "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60

    def complete() -> int:
        try:
            return len(_rows(db, "SELECT 1 FROM episodes WHERE status = 'complete'"))
        except sqlite3.OperationalError:  # not created yet
            return 0

    while complete() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {
        r["episode_id"]: r["started_at"]
        for r in _rows(db, "SELECT * FROM episodes WHERE status = 'complete'")
    }
    assert 2 <= len(kept) < 6, len(kept)  # killed mid-course
    resumed = subprocess.run([*command[:4], "--resume", str(db), "-q"], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(db, "SELECT * FROM episodes")
    assert [r["status"] for r in rows] == ["complete"] * 6
    for r in rows:  # complete sessions were kept, not run again
        if r["episode_id"] in kept:
            assert r["started_at"] == kept[r["episode_id"]]
    runs = _rows(db, "SELECT status FROM runs ORDER BY created_at")
    assert [r["status"] for r in runs] == ["interrupted", "complete"]
    for course in _courses(db).values():  # every later session got the notes read back
        for session in (2, 3):
            prompt = _prompt(db, course[session], "counselor")
            assert "one walk a day" in prompt and f"session {session} of 3" in prompt
            assert "6/10" in _prompt(db, course[session], "client")


def test_ratings_aggregate_per_session_across_courses(
    course_run: tuple[Path, dict[str, int]],
) -> None:
    db, _ = course_run
    f = personae.frames(db)
    assert {"course", "session", "course_stage"} <= set(f.episodes.columns)
    ratings = f.judgments[f.judgments["judge"] == "rater"].merge(
        f.episodes[["episode_id", "course", "session"]], on="episode_id"
    )
    per_session = ratings.groupby("session")["score"].agg(["mean", "count"])
    # bond = session + 1 on 1..5, normalised to 0..10: (session + 1 - 1) / 4 * 10
    assert per_session["count"].tolist() == [2, 2, 2]
    assert per_session["mean"].tolist() == [2.5, 5.0, 7.5]
    progress = f.judgments[f.judgments["judge"] == "summarizer"].merge(
        f.episodes[["episode_id", "session"]], on="episode_id"
    )
    assert progress.groupby("session")["progress_1"].mean().tolist() == [4, 5, 6]
    assert ratings["course"].nunique() == 2
    # the README's example gives the same numbers
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "course.db" in b)
    space: dict[str, Any] = {"personae": personae}
    exec(block.replace("course.db", str(db)), space)
    assert space["per_session"].loc["rater"].tolist() == [2.5, 5.0, 7.5]


def test_start_stage_and_per_stage_fields(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    per_stage = {"consolidation": {"counselor.opening": "Welcome to our last session."}}
    path = write_scenario(course_scenario(start_stage="intervention", per_stage=per_stage))
    plans = plan_episodes(load_scenario(path))
    assert sorted({p.condition["session"] for p in plans}) == [2, 3]
    last = [p for p in plans if p.condition["session"] == 3]
    assert all(p.personas["counselor"].opening == "Welcome to our last session." for p in last)
    assert all(p.condition["counselor"]["opening"] for p in last)
    result = personae.run(path, backend="scripted", db=tmp_path / "start.db")
    assert result.complete == 4


@pytest.mark.parametrize(
    ("course", "agents", "expected"),
    [
        ({"sessions": 0}, {}, "course.sessions"),
        ({"start_stage": "intervetion"}, {}, "unknown stage 'intervetion'"),
        ({"per_stage": {"review": {"counselor.opening": "Hi."}}}, {}, "unknown stage 'review'"),
        ({"per_stage": {"assessment": {"counselor.mood": "x"}}}, {}, "mood"),
        ({"per_stage": {"assessment": {"nobody.name": "x"}}}, {}, "AGENT.FIELD"),
        ({"sessions": 4}, {}, "the stages hold 3 sessions"),
        ({"stages": [{"name": "a", "sessions": 2}, {"name": "a"}]}, {}, "named twice"),
        ({"summary": "notes"}, {}, "unknown agent 'notes'"),
        ({"summary": "rater"}, {}, "not a summarizer"),
        ({}, {"summarizer": {"when": "turn"}}, "at its end"),
        ({"memory": ["counselr"]}, {}, "unknown agent 'counselr'"),
        ({"client": "rater"}, {}, "not an agent that takes turns"),
        ({"grid": None}, {}, "must be AGENT.persona, AGENT.backend"),  # stages are not grid values
    ],
)
def test_bad_course_blocks_are_one_line_exit_2_and_write_nothing(
    course: dict[str, Any],
    agents: dict[str, Any],
    expected: str,
    write_scenario: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    course = dict(course)
    grid = course.pop("grid", False) is None
    data = course_scenario(**course)
    if grid:
        data["grid"] = {"course.start_stage": ["assessment", "intervention"]}
    for name, change in agents.items():
        data["agents"][name].update(change)
    path = write_scenario(data)
    monkeypatch.chdir(tmp_path)
    before = tree_snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--db", str(tmp_path / "bad.db")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err and "Traceback" not in err
    assert tree_snapshot(tmp_path) == before


@pytest.mark.model
def test_a_real_course_of_two_short_sessions_on_the_embedded_model(tmp_path: Path) -> None:
    db = tmp_path / "embedded.db"
    result = personae.run(
        SCENARIOS / "counseling_course.yaml",
        db=db,
        settings=[
            "graph.max_turns=4",
            "course.sessions=2",
            "course.stages=[{name: assessment, sessions: 1, goal: Get to know the client.},"
            " {name: consolidation, sessions: 1, goal: Review the first session.}]",
            "course.per_stage={}",
        ],
    )
    assert result.complete == 2, result.line()
    course = next(iter(_courses(db).values()))
    notes = _rows(db, "SELECT * FROM judgments WHERE judge = 'summarizer' AND episode_id = ?",
                  course[1])  # fmt: skip
    assert len(notes) == 1
    second = _prompt(db, course[2], "counselor")
    assert "Review the first session." in second and "Notes from the earlier sessions" in second
    if notes[0]["valid"]:  # the real model's summary is what session 2 was given
        themes = json.loads(notes[0]["parsed_json"])["themes"].strip()
        assert " ".join(themes.split())[:40] in " ".join(second.split())
    ratings = _rows(db, "SELECT score FROM judgments WHERE judge IN ('alliance_rater', "
                        "'miti_rater') AND valid = 1")  # fmt: skip
    assert all(0 <= r["score"] <= 10 for r in ratings)


def test_a_summary_that_does_not_parse_is_recorded_and_said_to_be_missing(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    data = course_scenario()
    data["backend_options"] = {"replies": {"summarizer": ['{"themes": "only themes"}']}}
    db = tmp_path / "unparsed.db"
    assert personae.run(write_scenario(data), db=db).complete == 6
    notes = _rows(db, "SELECT valid, error FROM judgments WHERE judge = 'summarizer'")
    assert len(notes) == 6 and all(n["valid"] == 0 and "client_state" in n["error"] for n in notes)
    for course in _courses(db).values():
        third = _prompt(db, course[3], "counselor")
        assert "Session 1 (assessment): no notes were recorded." in third
        assert "Session 2 (intervention): no notes were recorded." in third
        assert "Since last session" not in _prompt(db, course[3], "client")
