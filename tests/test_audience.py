"""Private channels end to end: a line with an audience reaches only that audience — in every
rendered prompt (transcript and chat), in the sft and dpo exports, in `show --as`, in a replay
and in a fork's continuation — while its recipients do get it.

The scenario is the shipped negotiation (a buyer and a seller, each with an advisor whose lines
only they hear) plus a private seed line and a coach whose verdicts are routed to the buyer
alone; every model line is a distinctive marker, so a leak shows as a substring."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SCENARIOS, read_yaml
from group_helpers import calls, episodes, line_text, rendered
from typer.testing import CliRunner

import personae
from personae import RunLog
from personae.backends import ScriptedBackend, register_backend
from personae.cli import app
from personae.export import dpo_pairs
from personae.judges import JudgeAgent, register_judge
from personae.store import Turn

WriteScenario = Callable[..., Path]
runner = CliRunner()

SEED_SECRET = "Psst Maya, the frame was repainted last week."
COACH_CODES = ["Coach hint hold firm", "Coach hint walk away"]


@register_backend("tests-audience")
def _markers(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """Every line is a marker naming its episode, agent and turn."""
    return ScriptedBackend(line_text)


@register_backend("tests-audience-temperature")
def _temperature_markers(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """Markers that also name the temperature the line was sampled at."""
    return ScriptedBackend(lambda r: f"{line_text(r)} Sampled at temperature {r.temperature}.")


@register_judge("tests-audience-rater")
class TemperatureRater(JudgeAgent):
    """A judge with no model: a line scores ten times the temperature it names."""

    def evaluate(self, history: Any, target: Any) -> dict[str, Any] | None:
        found = re.search(r"temperature ([0-9.]+[0-9])", target.text if target else "")
        return (
            {"rationale": "read off the line", "firmness": round(10 * float(found[1]))}
            if found
            else None
        )


def _scenario(render: str) -> dict[str, Any]:
    data = read_yaml(SCENARIOS / "negotiation_advisors.yaml")
    data.update(backend="tests-audience", render=render, repeats=3)
    data["graph"]["seed_lines"] = [
        {"agent": "buyer_advisor", "text": SEED_SECRET, "audience": ["buyer"]},
    ]
    # the advisor's seed line opens, so the order starts with the one who may follow it
    data["graph"]["policy"]["order"] = ["buyer", "seller_advisor", "seller", "buyer_advisor"]
    data["agents"]["coach"] = {
        "role": "judge",
        "observes": ["buyer"],
        "route_to": ["buyer"],
        "persona": {
            "id": "coach",
            "description": "A negotiation coach listening in on the buyer.",
            "rubric": {"id": "coach_v1", "codes": COACH_CODES},
        },
    }
    return data


def _run(write: WriteScenario, tmp_path: Path, render: str) -> Path:
    db = tmp_path / f"{render}.db"
    result = personae.run(write(_scenario(render)), db=db)
    assert result.failed == 0 and result.complete == 3
    return db


def _hears(turn: Turn, agent: str) -> bool:
    """The audience rule, written out independently of the code under test."""
    return turn.kind != "pass" and (
        turn.audience is None or agent == turn.agent or agent in turn.audience
    )


def _check_prompts(db: Path, episode_id: str, turns: list[Turn]) -> int:
    """Every call of the episode shows exactly the earlier lines its agent hears (a judge also
    reads every line of the agents it watches); returns how many private lines were checked
    against a call of someone outside their audience."""
    outside = 0
    for call in calls(db, episode_id):
        shown = rendered(call)
        judge = call["purpose"] == "judge"
        for turn in (t for t in turns if t.idx < call["turn_idx"]):
            hears = _hears(turn, call["agent"]) or (judge and turn.agent == "buyer")
            if turn.kind == "feedback" and not hears:
                assert not any(code in shown for code in COACH_CODES), call["call_id"]
            assert (turn.text in shown) == hears, (call["call_id"], turn.idx, turn.agent)
            outside += turn.audience is not None and not hears
    return outside


@pytest.mark.parametrize("render", ["transcript", "chat"])
def test_private_lines_reach_only_their_audience_in_every_prompt(
    write_scenario: WriteScenario, tmp_path: Path, render: str
) -> None:
    """In both render modes, across several episodes, no rendered prompt (`prompt` and
    `messages_json`) of an agent outside a line's audience contains it; its recipients' do,
    marked as said privately."""
    db = _run(write_scenario, tmp_path, render)
    kinds: set[str] = set()
    for episode_id, turns in episodes(db).items():
        private = [t for t in turns if t.audience is not None]
        assert {t.agent for t in private} == {"buyer_advisor", "seller_advisor", "coach"}
        assert {(t.agent, t.audience) for t in private} == {
            ("buyer_advisor", ("buyer",)),
            ("seller_advisor", ("seller",)),
            ("coach", ("buyer",)),
        }
        kinds |= {t.kind for t in private}
        assert _check_prompts(db, episode_id, turns) > 40
        buyer_prompts = [rendered(c) for c in calls(db, episode_id) if c["agent"] == "buyer"]
        assert all("Maya's Friend (privately): " in p for p in buyer_prompts)
        assert any(f"Coach (privately): {COACH_CODES[0]}" in p for p in buyer_prompts)
    assert kinds == {"seed", "line", "feedback"}
    with RunLog(db) as log:
        modes = {c["render_mode"] for e in log.episodes() for c in log.calls(e["episode_id"])}
    assert modes == {render}


def _export_sft(db: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "sft.jsonl"
    result = runner.invoke(
        app, ["export", str(db), "--format", "sft", "--role", "persona", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_sft_export_holds_only_what_each_agent_heard(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`export --format sft --role persona`: each agent's conversation contains the private
    lines addressed to it and none of the others' (seller never sees the buyer's advisor,
    the coach's hints or the private seed line)."""
    db = _run(write_scenario, tmp_path, "transcript")
    all_turns = episodes(db)
    records = _export_sft(db, tmp_path)
    assert {(r["episode_id"], r["agent"]) for r in records} == {
        (e, a) for e in all_turns for a in ("buyer", "buyer_advisor", "seller", "seller_advisor")
    }
    for record in records:
        text = json.dumps(record["messages"])
        agent, turns = record["agent"], all_turns[record["episode_id"]]
        last_own = max(t.idx for t in turns if t.agent == agent and t.kind == "line")
        for turn in turns:
            if not _hears(turn, agent):
                assert turn.text not in text, (agent, turn.idx)
            elif turn.idx <= last_own:
                assert turn.text in text, (agent, turn.idx)
        assert (SEED_SECRET in text) == (agent in ("buyer", "buyer_advisor"))
        assert any(c in text for c in COACH_CODES) == (agent == "buyer")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_show_as_an_agent_prints_only_what_it_heard(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`show DB EP --as AGENT` prints the lines AGENT heard and none it did not; plain `show`
    prints every line with its audience."""
    db = _run(write_scenario, tmp_path, "chat")
    episode_id, turns = next(iter(episodes(db).items()))
    for agent in ("buyer", "seller", "seller_advisor"):
        result = runner.invoke(app, ["show", str(db), episode_id, "--as", agent])
        assert result.exit_code == 0, result.output
        output = _flat(result.output)
        for turn in turns:
            assert (_flat(turn.text) in output) == _hears(turn, agent), (agent, turn.idx)
    full = runner.invoke(app, ["show", str(db), episode_id])
    assert full.exit_code == 0, full.output
    output = _flat(full.output)
    assert all(_flat(t.text) in output for t in turns)
    assert "(privately, to seller)" in output and "(privately, to buyer)" in output


def test_replay_verify_is_identical_with_audiences(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`replay --verify` re-executes every episode, audiences compared, and finds it identical."""
    db = _run(write_scenario, tmp_path, "transcript")
    result = runner.invoke(app, ["replay", str(db), "--verify"])
    assert result.exit_code == 0, result.output
    assert "3/3 episodes identical" in result.output


@pytest.mark.parametrize("render", ["transcript", "chat"])
def test_a_fork_keeps_the_audiences_and_its_continuation_hides_private_lines(
    write_scenario: WriteScenario, tmp_path: Path, render: str
) -> None:
    """`replay DB EP --fork-at K`: the kept turns keep their audiences, the continuation's lines
    get the scenario's audiences again, and none of the fork's prompts — kept or new — shows a
    private line to an agent outside its audience; the fork verifies identical and its sft
    export leaks nothing either."""
    db = _run(write_scenario, tmp_path, render)
    parent_id, parent = next(iter(episodes(db).items()))
    k = 7
    assert any(t.audience is not None for t in parent[:k])
    result = runner.invoke(app, ["replay", str(db), parent_id, "--fork-at", str(k)])
    assert result.exit_code == 0, result.output
    with RunLog(db) as log:
        (row,) = log.query("SELECT * FROM episodes WHERE parent_episode_id = ?", parent_id)
    fork_id = row["episode_id"]
    assert row["status"] == "complete" and row["fork_turn"] == k
    fork = episodes(db)[fork_id]

    def key(t: Turn) -> tuple[Any, ...]:
        return (t.idx, t.agent, t.kind, t.text, t.audience)

    assert [key(t) for t in fork[:k]] == [key(t) for t in parent[:k]]
    continued = [t for t in fork[k:] if t.kind == "line"]
    assert continued and all(fork_id[:8] in t.text for t in continued)  # generated anew
    audiences = {"buyer_advisor": ("buyer",), "seller_advisor": ("seller",)}
    assert all(t.audience == audiences.get(t.agent) for t in continued)
    assert any(t.audience is not None for t in continued)
    new_calls = [c for c in calls(db, fork_id) if c["turn_idx"] >= k]
    assert {c["agent"] for c in new_calls} >= {"buyer", "seller", "coach"}
    assert _check_prompts(db, fork_id, fork) > 40

    verified = runner.invoke(app, ["replay", str(db), fork_id, "--verify"])
    assert verified.exit_code == 0, verified.output
    assert "identical" in verified.output
    for record in _export_sft(db, tmp_path):
        if record["episode_id"] == fork_id:
            text = json.dumps(record["messages"])
            assert not any(t.text in text for t in fork if not _hears(t, record["agent"]))


@pytest.mark.parametrize("render", ["transcript", "chat"])
def test_the_selector_reads_only_public_lines(
    write_scenario: WriteScenario, tmp_path: Path, render: str
) -> None:
    """A `selector` picking speakers in the negotiation is shown the public conversation only:
    no whisper, private seed line or coach's hint is in its prompt, whichever agent's model
    it runs on (here the buyer's, who hears some of them)."""
    data = _scenario(render)
    data["graph"].pop("topology")
    data["graph"]["policy"] = {"kind": "selector", "agent": "buyer"}
    db = tmp_path / "selector.db"
    assert personae.run(write_scenario(data), db=db).failed == 0
    checked = 0
    for episode_id, turns in episodes(db).items():
        for call in (c for c in calls(db, episode_id) if c["purpose"] == "select"):
            shown = rendered(call)
            assert call["agent"] == "buyer"
            for turn in (t for t in turns if t.idx < call["turn_idx"] and t.kind != "pass"):
                assert (turn.text in shown) == (turn.audience is None), call["call_id"]
                checked += turn.audience is not None
    assert checked > 20


def test_dpo_prompt_holds_only_what_the_rated_agent_heard(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`dpo`: sibling forks of a seller turn, ranked by a judge, give pairs whose prompt is the
    seller's own view — its advisor's whispers in, the buyer's whispers, private seed line and
    coach's hints out."""
    data = _scenario("chat")
    data.update(backend="tests-audience-temperature", repeats=1)
    data["agents"]["rater"] = {
        "role": "tests-audience-rater",
        "observes": ["seller"],
        "persona": {"rubric": {"id": "firm", "dimensions": [{"name": "firmness",
                                                              "scale": [0, 20]}]}},
    }  # fmt: skip
    db = tmp_path / "dpo.db"
    assert personae.run(write_scenario(data), db=db).failed == 0
    ((parent_id, turns),) = episodes(db).items()
    k = [t.idx for t in turns if t.agent == "seller"][1]
    fork = ["replay", str(db), parent_id, "--fork-at", str(k)]
    for temperature in ("0.2", "1.5"):
        setting = f"seller.sampling.temperature={temperature}"
        result = runner.invoke(app, [*fork, "--set", setting])
        assert result.exit_code == 0, result.output
    export = dpo_pairs(db, "persona")
    assert (export.groups, export.unscored, len(export.pairs)) == (1, 0, 3)
    assert export.pairs[0]["score_chosen"] == 15.0
    prompts = {json.dumps(pair["prompt"]) for pair in export.pairs}
    assert len(prompts) == 1
    prompt = prompts.pop()
    heard = [t for t in turns if t.idx < k and _hears(t, "seller")]
    assert all(t.text in prompt for t in heard if t.agent != "seller")
    assert all(t.text not in prompt for t in turns if not _hears(t, "seller"))
    assert any(t.agent == "seller_advisor" for t in heard)
    assert SEED_SECRET not in prompt and not any(c in prompt for c in COACH_CODES)


def test_a_seed_line_without_an_audience_is_heard_as_its_speaker_is(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """A seed line that names no audience gets its speaker's: the seller's advisor's opening
    whisper stays between her and the seller, so the buyer's side never hears it."""
    data = _scenario("transcript")
    whisper = "Do not go below two hundred and seventy."
    data["graph"]["seed_lines"] = [{"agent": "seller_advisor", "text": whisper}]
    data["graph"]["policy"]["order"] = ["seller", "buyer_advisor", "buyer", "seller_advisor"]
    db = tmp_path / "seed.db"
    assert personae.run(write_scenario(data), db=db).failed == 0
    for episode_id, turns in episodes(db).items():
        assert (turns[0].kind, turns[0].audience) == ("seed", ("seller",))
        for call in calls(db, episode_id):
            heard = call["agent"] in ("seller", "seller_advisor")
            assert (whisper in rendered(call)) == heard, call["call_id"]
