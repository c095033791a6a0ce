"""The README's examples run as written: the YAML-only three-party scenario, the extension file
with a role, a turn policy and a judge, and the judge file (on the scripted backend)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO, db_rows
from typer.testing import CliRunner

from personae.cli import app

BLOCKS = re.findall(r"```(\w+)\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def _block(kind: str, marker: str) -> str:
    found = [text for k, text in BLOCKS if k == kind and marker in text]
    assert len(found) == 1, f"README: expected one {kind} block with {marker!r}"
    return found[0]


def _cli(*argv: str) -> str:
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_yaml_only_three_party_scenario_runs(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text(_block("yaml", "name: flat_share") + "backend: scripted\n", encoding="utf-8")
    db = tmp_path / "flat.db"
    _cli("run", str(path), "--db", str(db), "-q")
    turns = db_rows(db, "SELECT agent, audience_json, decision_json FROM turns ORDER BY idx")
    assert {t["agent"] for t in turns} == {"ana", "ben", "cleo"}
    assert {t["audience_json"] for t in turns if t["agent"] == "cleo"} == {'["ana"]'}
    assert all('"policy": "respond"' in t["decision_json"] for t in turns)
    prompts = db_rows(db, "SELECT agent, prompt FROM llm_calls")
    assert all("This is cleo" not in p["prompt"] for p in prompts if p["agent"] == "ben")
    assert "Stance: firm" in next(p["prompt"] for p in prompts if p["agent"] == "ana")


def test_the_extension_file_and_the_judge_file_work_from_the_cli(tmp_path: Path) -> None:
    (tmp_path / "coach.py").write_text(_block("python", "# coach.py"), encoding="utf-8")
    scenario = tmp_path / "coaching.yaml"
    scenario.write_text(
        "name: coaching\n"
        "graph: {kind: group, max_turns: 6, policy: loudest_first}\n"
        "backend: scripted\n"
        "agents:\n"
        "  coach: {role: coach, persona: {id: c1, motto: Small steps.}}\n"
        "  runner: {role: persona, persona: {name: Rae}}\n"
        "  rater:\n"
        "    role: length_judge\n"
        "    observes: [coach]\n"
        "    persona: {rubric: {id: len, rationale: 0, dimensions: [{name: length}]}}\n",
        encoding="utf-8",
    )
    db = tmp_path / "coaching.db"
    coach = str(tmp_path / "coach.py")
    _cli("run", str(scenario), "--db", str(db), "-q", "--import", coach)
    decisions = db_rows(db, "SELECT decision_json FROM turns")
    assert all('"rule": "most_lines"' in d["decision_json"] for d in decisions)
    verdicts = db_rows(db, "SELECT valid, score FROM judgments WHERE judge = 'rater'")
    assert len(verdicts) == 3 and all(v["valid"] and v["score"] >= 1 for v in verdicts)
    judge = tmp_path / "judge.yaml"
    text = _block("yaml", "name: empathy_posthoc").replace("embedded", "scripted")
    judge.write_text(text.replace("observes: [helper]", "observes: [coach]"), encoding="utf-8")
    assert "3 judgments on 1 episodes" in _cli("judge", str(db), str(judge), "-q")
    assert "identical" in _cli("replay", str(db), "--verify", "--import", coach)
