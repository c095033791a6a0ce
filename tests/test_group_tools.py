"""Every tool works on N-agent group episodes: `replay --verify`, `--fork-at`, `show`, the
stepper and `export` (jsonl, csv, sft), on the four-party neighbourhood meeting (respond policy,
star topology, a seed line, abstentions) and on a selector-driven variant."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import SCENARIOS, read_yaml
from group_helpers import calls, episodes, line_text, taken
from typer.testing import CliRunner

import personae
from personae import RunLog
from personae.backends import GenerationRequest, ScriptedBackend, register_backend
from personae.cli import app
from personae.store import Turn

WriteScenario = Callable[..., Path]
runner = CliRunner()
MEETING = ("chair", "dev", "ruth", "tomas")
LABELS = {"chair": "Chair", "dev": "Dev", "ruth": "Ruth", "tomas": "Tomas"}


def _meeting_reply(request: GenerationRequest) -> str:
    """Markers; Dev abstains on every third turn; the selector names its last choice."""
    if request.choices:
        return request.choices[-1]
    if request.tags.get("agent") == "dev" and int(request.tags["turn"]) % 3 == 0:
        return "[pass]"
    return line_text(request)


@register_backend("tests-meeting")
def _meeting(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """The meeting's scripted replies."""
    return ScriptedBackend(_meeting_reply)


@register_backend("tests-meeting-fork")
def _meeting_fork(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """Another script for a fork's continuation: the selector names its first choice."""
    return ScriptedBackend(
        lambda r: r.choices[0] if r.choices else f"Forked {r.tags['agent']} t{r.tags['turn']}."
    )


def _meeting_db(write: WriteScenario, tmp_path: Path, policy: Any = None) -> Path:
    data = read_yaml(SCENARIOS / "neighbourhood_meeting.yaml")
    data.update(backend="tests-meeting", repeats=3)
    data["graph"]["allow_pass"] = True
    if policy is not None:
        data["graph"]["policy"] = policy
    db = tmp_path / "meeting.db"
    result = personae.run(write(data), db=db)
    assert result.failed == 0 and result.complete == 3
    return db


def _invoke(*argv: str) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_meeting_has_four_speakers_passes_and_a_seed_line(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """The fixture episodes exercise what the tools must handle: four speakers, a seed line,
    passes and the star (nobody but the chair follows a neighbour)."""
    db = _meeting_db(write_scenario, tmp_path)
    speakers: set[str] = set()
    kinds: set[str] = set()
    for turns in episodes(db).values():
        assert turns[0].kind == "seed" and turns[0].agent == "chair"
        speakers |= {t.agent for t in turns}
        kinds |= {t.kind for t in turns}
        for before, turn in pairwise(taken(turns)):
            assert "chair" in (before.agent, turn.agent)
    assert speakers == set(MEETING) and kinds == {"seed", "line", "pass"}


@pytest.mark.parametrize(
    "policy", [None, {"kind": "selector", "agent": "chair"}], ids=["respond", "selector"]
)
def test_replay_verify_is_identical_for_four_agents(
    write_scenario: WriteScenario, tmp_path: Path, policy: Any
) -> None:
    """`replay --verify` re-runs each four-agent episode (turn-policy draws, selector calls,
    passes, the seed line) and reports it identical."""
    db = _meeting_db(write_scenario, tmp_path, policy)
    output = _invoke("replay", str(db), "--verify")
    assert "3/3 episodes identical" in output


def _fork(db: Path, parent: str, k: int, *extra: str) -> tuple[str, list[Turn]]:
    output = _invoke("replay", str(db), parent, "--fork-at", str(k), *extra)
    assert ": complete," in output
    with RunLog(db) as log:
        rows = log.query("SELECT episode_id FROM episodes WHERE parent_episode_id = ?", parent)
    fork_id = str(rows[-1]["episode_id"])
    return fork_id, episodes(db)[fork_id]


def _same(t: Turn) -> tuple[Any, ...]:
    return (t.idx, t.agent, t.kind, t.text, t.audience, t.decision)


def test_fork_of_a_four_agent_episode_keeps_the_prefix_and_the_lineage_draws(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """A fork at K keeps turns 0..K-1 (decisions included), continues on the live backend
    from K, and — its turn-policy draws following the parent's lineage — gives the floor to
    the same speakers; it verifies identical."""
    db = _meeting_db(write_scenario, tmp_path)
    parent_id, parent = next(iter(episodes(db).items()))
    k = 5
    fork_id, fork = _fork(db, parent_id, k, "--backend", "tests-meeting-fork")
    assert [_same(t) for t in fork[:k]] == [_same(t) for t in parent[:k]]
    assert [t.agent for t in fork] == [t.agent for t in parent]
    assert all(t.text.startswith("Forked ") for t in fork[k:])  # no passes from this script
    assert len(taken(fork)) == len(taken(parent)) == 12
    for before, turn in pairwise(taken(fork)):
        assert turn.decision is not None and turn.decision["candidates"] == (
            ["chair"] if before.agent != "chair" else ["dev", "ruth", "tomas"]
        )
    assert "identical" in _invoke("replay", str(db), fork_id, "--verify")


def test_fork_of_a_selector_episode_replays_the_selector_then_asks_the_live_model(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """Before K the selector's recorded answers pick the kept speakers; from K the live
    backend's selector (here naming its first choice) decides."""
    db = _meeting_db(write_scenario, tmp_path, {"kind": "selector", "agent": "chair"})
    parent_id, parent = next(iter(episodes(db).items()))
    k = 6
    fork_id, fork = _fork(db, parent_id, k, "--backend", "tests-meeting-fork")
    assert [_same(t) for t in fork[:k]] == [_same(t) for t in parent[:k]]
    for turn in taken(fork):
        assert turn.decision is not None
        pick = 0 if turn.idx >= k else -1
        assert LABELS[turn.agent] == LABELS[turn.decision["candidates"][pick]]
    selects = [c for c in calls(db, fork_id) if c["purpose"] == "select"]
    assert {c["turn_idx"] for c in selects} >= set(range(k, len(fork)))
    assert "identical" in _invoke("replay", str(db), fork_id, "--verify")


def test_show_and_the_stepper_print_every_speaker(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`show` lists the episodes; `show DB EP --hidden` prints the seed line, every agent's
    lines, the passes and each turn-policy decision; `replay --print` steps through it."""
    db = _meeting_db(write_scenario, tmp_path)
    all_turns = episodes(db)
    listing = _invoke("show", str(db))
    assert all(e in listing for e in all_turns)
    episode_id, turns = next(iter(all_turns.items()))
    output = " ".join(_invoke("show", str(db), episode_id, "--hidden").split())
    for turn in turns:
        if turn.kind != "pass":
            assert " ".join(turn.text.split()) in output
    assert "(seed)" in output and "dev passes" in output
    assert output.count("turn policy:") == len(taken(turns))
    passes = sum(t.kind == "pass" for t in turns)
    assert f"{len(turns)} turns, {passes} passes" in output
    steps = _invoke("replay", str(db), episode_id, "--print")
    assert steps.count("turn policy:") == len(taken(turns))
    assert all(name in steps for name in MEETING)


def test_export_tables_hold_every_turn_of_every_agent(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`export --format jsonl` and `csv`: one row per turn, four agents, kinds, audiences and
    decisions as logged (nested in JSONL, JSON text in CSV)."""
    db = _meeting_db(write_scenario, tmp_path)
    all_turns = episodes(db)
    n = sum(len(t) for t in all_turns.values())
    rows = [json.loads(line) for line in _invoke("export", str(db), "-f", "jsonl").splitlines()]
    table = list(csv.DictReader(io.StringIO(_invoke("export", str(db), "-f", "csv"))))
    assert len(rows) == len(table) == n
    for row, line in zip(rows, table, strict=True):
        turn = all_turns[row["episode_id"]][row["turn"]]
        assert (row["agent"], row["kind"], row["text"]) == (turn.agent, turn.kind, turn.text)
        assert (line["agent"], line["kind"], line["text"]) == (turn.agent, turn.kind, turn.text)
        # JSONL nests the JSON columns; CSV holds them as JSON text
        assert row["decision_json"] == turn.decision
        decision = json.loads(line["decision_json"]) if line["decision_json"] else None
        assert decision == turn.decision
        audience = list(turn.audience) if turn.audience is not None else None
        assert row["audience_json"] == audience
    assert {r["agent"] for r in rows} == set(MEETING)
    assert {r["kind"] for r in rows} == {"seed", "line", "pass"}


def test_sft_export_of_a_four_agent_episode(write_scenario: WriteScenario, tmp_path: Path) -> None:
    """`export --format sft --role persona`: one conversation per agent that spoke, from its
    view — its own lines as the assistant, the others' as user lines naming their speaker,
    no pass anywhere."""
    db = _meeting_db(write_scenario, tmp_path)
    all_turns = episodes(db)
    records = [
        json.loads(line)
        for line in _invoke("export", str(db), "-f", "sft", "--role", "persona").splitlines()
    ]
    spoke = {(e, t.agent) for e, turns in all_turns.items() for t in turns if t.kind == "line"}
    assert {(r["episode_id"], r["agent"]) for r in records} == spoke
    for record in records:
        agent, messages = record["agent"], record["messages"]
        turns = all_turns[record["episode_id"]]
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "assistant"
        roles = [m["role"] for m in messages[1:]]
        assert all(a != b for a, b in pairwise(roles))  # alternating, as chat templates expect
        own = [t.text for t in turns if t.agent == agent and t.kind in ("seed", "line")]
        assistant = "\n".join(m["content"] for m in messages if m["role"] == "assistant")
        assert assistant.splitlines() == own
        user = "\n".join(m["content"] for m in messages if m["role"] == "user")
        last_own = max(t.idx for t in turns if t.agent == agent and t.kind == "line")
        for turn in turns:
            if turn.agent != agent and turn.kind != "pass" and turn.idx < last_own:
                assert f"{LABELS[turn.agent]}: {turn.text}" in user
        assert "[pass]" not in json.dumps(messages)
