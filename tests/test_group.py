"""The `group` graph kind: turn policies, who-may-reply topologies, context windows, seed lines
and abstentions, as a user sees them in the turn log (scripted backend, many episodes)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import db_rows
from group_helpers import NAMES, calls, episodes, group_scenario, line_text, rendered, taken

import personae
from personae.backends import Backend, GenerationRequest, GenerationResult, ScriptedBackend
from personae.errors import UserError
from personae.replay import verify_run
from personae.scenario import load_scenario
from personae.store import Turn

WriteScenario = Callable[..., Path]


def _run(
    write: WriteScenario,
    tmp_path: Path,
    data: dict[str, Any],
    *,
    backend: Backend | None = None,
    db: str = "run.db",
    seed: int | None = None,
) -> dict[str, list[Turn]]:
    """Run `data` into a new database; every episode's turns."""
    path = tmp_path / db
    result = personae.run(write(data), db=path, backend=backend, seed=seed)
    assert result.failed == 0 and result.complete == result.episodes
    return episodes(path)


def _speakers(turns: list[Turn]) -> list[str]:
    return [t.agent for t in taken(turns)]


# -- turn policies ----------------------------------------------------------------------------


def test_round_robin_follows_scenario_order(write_scenario: WriteScenario, tmp_path: Path) -> None:
    """Without options, round_robin gives the floor in scenario order (not by name), cycling."""
    order = ("dee", "ann", "cal", "ben")
    data = group_scenario(order, max_turns=10, repeats=3, policy="round_robin")
    for turns in _run(write_scenario, tmp_path, data).values():
        assert _speakers(turns) == [*order, *order, *order[:2]]
        first, *rest = taken(turns)
        assert first.decision == {
            "speaker": "dee",
            "policy": "round_robin",
            "rule": "first",
            "candidates": list(order),
        }
        for before, turn in zip(taken(turns), rest, strict=False):
            assert turn.decision is not None
            assert turn.decision["rule"] == "next"
            assert turn.decision["candidates"] == [n for n in order if n != before.agent]


def test_round_robin_random_start_varies_the_first_speaker(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """With random_start, episodes open with different speakers, then go on in scenario order."""
    data = group_scenario(
        max_turns=6, repeats=40, policy={"kind": "round_robin", "random_start": True}
    )
    firsts: Counter[str] = Counter()
    for turns in _run(write_scenario, tmp_path, data).values():
        speakers = _speakers(turns)
        start = NAMES.index(speakers[0])
        assert speakers == [NAMES[(start + i) % len(NAMES)] for i in range(6)]
        decision = taken(turns)[0].decision
        assert decision is not None and decision["rule"] == "random_start"
        assert 0.0 <= decision["draw"] < 1.0
        firsts[speakers[0]] += 1
    assert set(firsts) == set(NAMES), firsts  # every agent opened some episode
    assert max(firsts.values()) <= 20, firsts


def test_random_never_repeats_the_last_speaker_and_is_uniform_over_the_others(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`random`: ~480 decisions; the same agent never speaks twice in a row, and after each
    speaker every other agent is picked about a third of the time."""
    data = group_scenario(max_turns=12, repeats=40, policy="random")
    after: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for turns in _run(write_scenario, tmp_path, data).values():
        for before, turn in pairwise(taken(turns)):
            assert turn.agent != before.agent
            assert turn.decision is not None
            assert turn.decision["policy"] == "random" and turn.decision["rule"] == "uniform"
            assert 0.0 <= turn.decision["draw"] < 1.0
            assert turn.decision["candidates"] == [n for n in NAMES if n != before.agent]
            after[before.agent][turn.agent] += 1
    assert set(after) == set(NAMES)
    for last, picks in after.items():
        total = sum(picks.values())
        assert total >= 80
        assert set(picks) == set(NAMES) - {last}
        for name, n in picks.items():
            assert 0.2 < n / total < 0.47, (last, name, picks)


def test_respond_opens_with_two_distinct_speakers_then_replies_with_probability_p(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`respond` with p=0.4: the first two speakers differ (and vary across episodes); later the
    `reply` rule fires on ~40% of decisions and gives the floor to the speaker before last;
    the last speaker never speaks again at once. Counting the uniform draws that land on the
    speaker before last too, it speaks next ~p + (1-p)/3 of the time."""
    data = group_scenario(max_turns=12, repeats=40, policy={"kind": "respond", "p": 0.4})
    openings: Counter[tuple[str, str]] = Counter()
    decisions = replies = before_last_picked = 0
    for turns in _run(write_scenario, tmp_path, data).values():
        steps = taken(turns)
        speakers = [t.agent for t in steps]
        openings[(speakers[0], speakers[1])] += 1
        assert speakers[0] != speakers[1]
        assert [t.decision["rule"] for t in steps[:2] if t.decision] == ["opening", "second"]
        for i in range(2, len(steps)):
            decision = steps[i].decision
            assert decision is not None and decision["policy"] == "respond"
            assert 0.0 <= decision["draw"] < 1.0
            assert speakers[i] != speakers[i - 1]
            decisions += 1
            before_last_picked += speakers[i] == speakers[i - 2]
            if decision["rule"] == "reply":
                replies += 1
                assert speakers[i] == speakers[i - 2]
                assert decision["draw"] < 0.4
            else:
                assert decision["rule"] == "uniform" and decision["draw"] >= 0.4
    assert decisions == 40 * 10
    assert 0.32 < replies / decisions < 0.48, replies
    assert 0.5 < before_last_picked / decisions < 0.7, before_last_picked
    assert len(openings) >= 8, openings  # of the 12 ordered pairs


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_respond_extremes(write_scenario: WriteScenario, tmp_path: Path, p: float) -> None:
    """p=1: the two openers answer each other for the rest of the episode; p=0: never a reply."""
    data = group_scenario(max_turns=10, repeats=10, policy={"kind": "respond", "p": p})
    for turns in _run(write_scenario, tmp_path, data).values():
        speakers = _speakers(turns)
        rules = {t.decision["rule"] for t in taken(turns)[2:] if t.decision}
        if p == 1.0:
            assert speakers == speakers[:2] * 5
            assert rules == {"reply"}
        else:
            assert rules == {"uniform"}


def test_scripted_policy_follows_its_order(write_scenario: WriteScenario, tmp_path: Path) -> None:
    """`scripted` cycles through its order, whatever the scenario order is."""
    order = ["cal", "ann", "dee", "ben", "ann"]
    data = group_scenario(max_turns=12, repeats=2, policy={"kind": "scripted", "order": order})
    for turns in _run(write_scenario, tmp_path, data).values():
        assert _speakers(turns) == [*order, *order, *order[:2]]
        assert {(t.decision or {}).get("rule") for t in taken(turns)} == {"order"}
        assert all((t.decision or {}).get("policy") == "scripted" for t in taken(turns))


def test_selector_names_the_next_speaker_by_label_under_a_constrained_choice(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """`selector`: a model call with `choices` = the candidates' labels picks each speaker; the
    label it answers is obeyed (here always the last choice, which a backend ignoring the
    choice would not give), and the call is logged with purpose `select`."""
    labels = {"ann": "Chair Ann", "ben": "Mr Ben", "cal": "Dr Cal", "dee": "Dee"}
    by_label = {v: k for k, v in labels.items()}
    asked: dict[str, GenerationRequest] = {}

    def reply(request: GenerationRequest) -> str:
        if request.choices:
            asked[str(request.tags["call_id"])] = request
            return request.choices[-1]
        return line_text(request)

    data = group_scenario(
        max_turns=8,
        repeats=2,
        policy={"kind": "selector", "agent": "ben"},
        agents={n: {"label": label} for n, label in labels.items()},
    )
    db = tmp_path / "run.db"
    assert personae.run(write_scenario(data), db=db, backend=ScriptedBackend(reply)).failed == 0
    all_turns = episodes(db)
    assert len(asked) == 2 * 8
    for episode_id, turns in all_turns.items():
        select_calls = {c["call_id"]: c for c in calls(db, episode_id) if c["purpose"] == "select"}
        assert len(select_calls) == 8
        last: str | None = None
        for turn in taken(turns):
            decision = turn.decision
            assert decision is not None
            assert decision["policy"] == "selector" and decision["rule"] == "selector"
            expected = [n for n in NAMES if n != last]
            assert decision["candidates"] == expected
            call = select_calls[decision["call_id"]]
            assert call["turn_idx"] == turn.idx and call["agent"] == "ben"
            assert asked[call["call_id"]].choices == tuple(labels[n] for n in expected)
            assert json.loads(call["params_json"])["choices"] == [labels[n] for n in expected]
            assert turn.agent == by_label[call["output"]] == expected[-1]
            last = turn.agent


class _Unconstrained(Backend):
    """An engine without constrained decoding: it answers the selector off the list."""

    backend_id = "tests-unconstrained"
    render_mode = "transcript"

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        text = "Nobody in particular" if request.choices else line_text(request)
        return GenerationResult(text=text)


def test_selector_answer_off_the_list_falls_back_to_a_valid_speaker(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """An engine that ignores the choice list still yields a valid speaker every turn (the
    `selector_fallback` rule), never a crash or an unknown agent."""
    data = group_scenario(max_turns=5, policy="selector")
    (turns,) = _run(write_scenario, tmp_path, data, backend=_Unconstrained()).values()
    assert len(taken(turns)) == 5
    for before, turn in pairwise(taken(turns)):
        assert turn.agent != before.agent
        assert turn.decision is not None and turn.decision["rule"] == "selector_fallback"


POLICY_FILE = '''
"""A user's turn policy: the agent that spoke least so far, ties to its favourite."""

from pydantic import Field

from personae.graphs import Decision, PolicyOptions, TurnContext, TurnPolicy, register_turn_policy


class QuietestOptions(PolicyOptions):
    favourite: str = Field(description="Wins ties.")


@register_turn_policy("tests_quietest")
class Quietest(TurnPolicy):
    """The least heard candidate speaks next."""

    options_model = QuietestOptions

    async def choose(self, ctx: TurnContext) -> Decision:
        fav = self.options.favourite
        counts = {c: ctx.previous.count(c) for c in ctx.others()}
        pick = min(counts, key=lambda c: (counts[c], c != fav, self.speakers.index(c)))
        return self.decision(ctx, pick, "quietest")
'''


def test_user_registered_policy_runs_from_a_scenario(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """A policy registered with @register_turn_policy in the scenario's `imports:` file picks
    every speaker, with its own validated options, and its decisions are logged."""
    (tmp_path / "quietest.py").write_text(POLICY_FILE, encoding="utf-8")
    data = group_scenario(max_turns=8, policy={"kind": "tests_quietest", "favourite": "dee"})
    data["imports"] = ["quietest.py"]
    (turns,) = _run(write_scenario, tmp_path, data).values()
    assert _speakers(turns) == ["dee", "ann", "ben", "cal", "dee", "ann", "ben", "cal"]
    assert {(t.decision or {}).get("policy") for t in taken(turns)} == {"tests_quietest"}
    assert {(t.decision or {}).get("rule") for t in taken(turns)} == {"quietest"}

    data["graph"]["policy"] = {"kind": "tests_quietest", "favourite": "dee", "loud": True}
    with pytest.raises(UserError) as bad:
        load_scenario(write_scenario(data))
    assert "graph.policy" in str(bad.value) and "loud" in str(bad.value)


@pytest.mark.parametrize(
    "policy",
    [
        "round_robin",
        {"kind": "round_robin", "random_start": True},
        "random",
        {"kind": "respond", "p": 0.5},
        {"kind": "scripted", "order": ["dee", "ben"]},
        "selector",
    ],
    ids=["round_robin", "random_start", "random", "respond", "scripted", "selector"],
)
def test_every_turn_records_its_decision(
    write_scenario: WriteScenario, tmp_path: Path, policy: Any
) -> None:
    """Every taken turn's `decision_json` names the policy, the rule, the speaker among the
    candidates (and a draw when the rule was random); seed lines have no decision."""
    data = group_scenario(
        max_turns=6, policy=policy, seed_lines=[{"agent": "ann", "text": "Welcome, all."}]
    )
    db = tmp_path / "run.db"
    assert personae.run(write_scenario(data), db=db).failed == 0
    kind = policy if isinstance(policy, str) else policy["kind"]
    random_rules = {"random_start", "uniform", "opening", "second", "reply"}
    for row in db_rows(db, "SELECT kind, agent, decision_json FROM turns ORDER BY idx"):
        if row["kind"] == "seed":
            assert row["decision_json"] is None
            continue
        decision = json.loads(row["decision_json"])
        assert decision["policy"] == kind
        assert decision["speaker"] == row["agent"]
        assert row["agent"] in decision["candidates"]
        assert isinstance(decision["rule"], str) and decision["rule"]
        if decision["rule"] in random_rules:
            assert 0.0 <= decision["draw"] < 1.0
        else:
            assert "draw" not in decision


@pytest.mark.parametrize("policy", ["random", {"kind": "respond", "p": 0.4}])
def test_same_seed_same_speakers_other_seed_other_speakers(
    write_scenario: WriteScenario, tmp_path: Path, policy: Any
) -> None:
    """The speaker sequence is a function of the run seed: a rerun into a new database repeats
    it exactly, another seed gives another one."""
    data = group_scenario(max_turns=12, repeats=3, policy=policy, seed=21)
    path = write_scenario(data)

    def sequence(db: str, seed: int | None = None) -> list[list[str]]:
        personae.run(path, db=tmp_path / db, seed=seed)
        return [_speakers(t) for t in episodes(tmp_path / db).values()]

    first = sequence("a.db")
    assert sequence("b.db") == first
    assert sequence("c.db", seed=22) != first


# -- topology ---------------------------------------------------------------------------------

EDGES = [["ann", "ben"], ["ann", "cal"], ["ben", "cal"], ["cal", "dee"], ["cal", "ann"],
         ["dee", "ann"]]  # fmt: skip


def _successors(edges: list[list[str]]) -> dict[str, list[str]]:
    return {u: [v for v in NAMES if [u, v] in edges] for u in NAMES}


def _star(hub: str) -> list[list[str]]:
    return [e for n in NAMES if n != hub for e in ([hub, n], [n, hub])]


@pytest.mark.parametrize(
    ("topology", "edges", "policy"),
    [
        ({"star": "cal"}, _star("cal"), {"kind": "respond", "p": 0.4}),
        ("star", _star("ann"), "random"),
        ({"edges": EDGES}, EDGES, "random"),
        ({"edges": EDGES}, EDGES, {"kind": "respond", "p": 0.6}),
        ("ring", [e for a, b in pairwise([*NAMES, "ann"]) for e in ([a, b], [b, a])], "random"),
    ],
    ids=["star-hub-respond", "star-random", "edges-random", "edges-respond", "ring"],
)
def test_no_line_follows_a_speaker_it_may_not_follow(
    write_scenario: WriteScenario,
    tmp_path: Path,
    topology: Any,
    edges: list[list[str]],
    policy: Any,
) -> None:
    """Over many episodes every consecutive pair of speakers is an edge of the topology, and the
    candidates in each decision are exactly the last speaker's successors."""
    successors = _successors(edges)
    data = group_scenario(max_turns=12, repeats=12, policy=policy, topology=topology)
    seen: set[tuple[str, str]] = set()
    for turns in _run(write_scenario, tmp_path, data).values():
        steps = taken(turns)
        assert steps[0].decision is not None
        assert steps[0].decision["candidates"] == list(NAMES)
        for before, turn in pairwise(steps):
            assert [before.agent, turn.agent] in edges, (before.agent, turn.agent)
            assert turn.decision is not None
            assert turn.decision["candidates"] == successors[before.agent]
            seen.add((before.agent, turn.agent))
    assert len(seen) == len(edges)  # every allowed reply happened: no path was left out


def test_the_first_speaker_follows_the_last_seed_line_by_the_topology(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """As in neighbourhood_meeting: the hub opens with a seed line; the star says only a leaf
    may speak after the hub."""
    data = group_scenario(
        max_turns=4,
        repeats=20,
        policy={"kind": "respond", "p": 0.4},
        topology={"star": "ann"},
        seed_lines=[{"agent": "ann", "text": "Who wants to start?"}],
    )
    for turns in _run(write_scenario, tmp_path, data).values():
        assert turns[0].kind == "seed"
        assert turns[1].agent != "ann"


@pytest.mark.parametrize(
    ("graph", "where", "what"),
    [
        ({"topology": {"edges": [["ann", "ben"], ["ben", "zed"]]}}, "graph.topology.edges[1]",
         "unknown agent 'zed'"),
        ({"topology": {"star": "zed"}}, "graph.topology.star", "unknown agent 'zed'"),
        ({"topology": {"edges": [["ann", "ben"], ["ben", "ann"], ["cal", "ann"],
                                 ["dee", "ann"]]}}, "graph.topology", "'cal' is unreachable"),
        ({"topology": {"edges": [["ann", "ben"], ["ben", "cal"], ["cal", "ann"],
                                 ["ann", "dee"]]}}, "graph.topology", "after 'dee'"),
        ({"topology": {"edges": [["ann", "ben"], ["ben", "ben"]]}}, "graph.topology.edges[1]",
         "self-loop"),
        ({"topology": "star", "policy": {"kind": "scripted", "order": ["ann", "ben", "cal"]}},
         "graph.policy.order[2]", "'cal' speak after 'ben'"),
        ({"policy": {"kind": "scripted", "order": ["ann", "zed"]}}, "graph.policy.order[1]",
         "'zed'"),
        ({"policy": {"kind": "scripted", "order": ["ann"]}}, "graph.policy.order[0]",
         "'ann' speak after 'ann'"),
        ({"policy": "round_robbin"}, "graph.policy.kind", "did you mean 'round_robin'"),
        ({"policy": {"kind": "respond", "p": 1.5}}, "graph.policy", "p"),
        ({"policy": {"kind": "selector", "agent": "zed"}}, "graph.policy.agent", "'zed'"),
    ],
    ids=["edge-unknown", "hub-unknown", "unreachable", "dead-end", "self-loop",
         "order-forbidden", "order-unknown", "order-of-one", "policy-typo", "bad-p",
         "selector-unknown"],
)  # fmt: skip
def test_bad_topology_or_policy_is_one_line_naming_the_key(
    write_scenario: WriteScenario, graph: dict[str, Any], where: str, what: str
) -> None:
    """Each mistake is one `UserError` line naming the file and the key path."""
    path = write_scenario(group_scenario(**graph))
    with pytest.raises(UserError) as info:
        load_scenario(path)
    line = str(info.value)
    assert "\n" not in line
    assert f"{path}: " in line and where in line, line
    assert what in line, line


@pytest.mark.parametrize(
    "topology", ["wheel", {"edges": [["ann"]]}, {"edges": []}], ids=["name", "short-edge", "none"]
)
def test_a_malformed_topology_is_blamed_on_the_key_the_user_wrote(
    write_scenario: WriteScenario, topology: Any
) -> None:
    """A topology of the wrong shape names `graph.topology` (or the bad edge) in the user's
    own words, not pydantic's union members, and never says to remove `edges`."""
    with pytest.raises(UserError) as info:
        load_scenario(write_scenario(group_scenario(topology=topology)))
    line = str(info.value)
    assert "graph.topology" in line
    assert "StarSpec" not in line and "literal[" not in line and "remove it" not in line, line


# -- context window, seed lines, abstention ---------------------------------------------------


@pytest.mark.parametrize("render", ["transcript", "chat"])
def test_window_keeps_only_the_last_lines_the_agent_may_see(
    write_scenario: WriteScenario, tmp_path: Path, render: str
) -> None:
    """`window: 2`: each of cal's prompts holds exactly the last two lines cal may see (dee's
    private asides to ann are not among them); the other agents still see everything."""
    data = group_scenario(
        max_turns=12,
        policy="round_robin",
        agents={"cal": {"window": 2}, "dee": {"audience": ["ann"]}},
        seed_lines=[{"agent": "ben", "text": "Seed line number one."}],
    )
    data["render"] = render
    db = tmp_path / "run.db"
    assert personae.run(write_scenario(data), db=db, backend=ScriptedBackend(line_text)).failed == 0
    ((episode_id, turns),) = episodes(db).items()
    texts = {t.idx: t.text for t in turns}
    checked = 0
    for call in calls(db, episode_id):
        prompt = rendered(call)
        before = [t for t in turns if t.idx < call["turn_idx"]]
        visible = [t for t in before if t.visible_to(call["agent"])]
        expected = visible[-2:] if call["agent"] == "cal" else visible
        shown = {t.idx for t in before if texts[t.idx] in prompt}
        assert shown == {t.idx for t in expected}, (call["agent"], call["turn_idx"])
        checked += call["agent"] == "cal"
    assert checked == 3
    assert verify_run(db)[0].identical  # windowed prompts re-render exactly


def test_seed_lines_are_logged_without_a_call_and_not_counted(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """Seed lines are turns of kind `seed` with no call id and no model call; `max_turns`
    counts only the turns after them; a seed line with an audience reaches only it."""
    seeds = [
        {"agent": "ann", "text": "Welcome to the meeting."},
        {"agent": "ann", "text": "Ben, a word before we start.", "audience": ["ben"]},
    ]
    data = group_scenario(max_turns=5, repeats=2, policy="round_robin", seed_lines=seeds)
    db = tmp_path / "run.db"
    assert personae.run(write_scenario(data), db=db).failed == 0
    for episode_id, turns in episodes(db).items():
        assert [(t.kind, t.text, t.call_id) for t in turns[:2]] == [
            ("seed", "Welcome to the meeting.", None),
            ("seed", "Ben, a word before we start.", None),
        ]
        assert turns[1].audience == ("ben",)
        assert [t.kind for t in turns[2:]] == ["line"] * 5
        assert all(t.call_id for t in turns[2:])
        episode_calls = calls(db, episode_id)
        assert min(c["turn_idx"] for c in episode_calls) == 2
        for call in episode_calls:
            assert "Welcome to the meeting." in rendered(call)
            heard = call["agent"] in ("ann", "ben")  # the speaker and its audience
            assert ("a word before we start" in rendered(call)) == heard
    rows = db_rows(db, "SELECT n_turns, end_reason FROM episodes")
    assert rows == [{"n_turns": 7, "end_reason": "max_turns"}] * 2


@pytest.mark.parametrize("render", ["transcript", "chat"])
def test_a_pass_is_logged_counted_and_shown_to_nobody(
    write_scenario: WriteScenario, tmp_path: Path, render: str
) -> None:
    """With allow_pass, an agent answering the pass token (any case) or nothing abstains: a
    `pass` turn with its model call, counted in max_turns, and absent from every later prompt
    (its own included)."""
    replies = {"ben": ["[PASS]", "Ben speaks up at last."], "cal": [""]}

    def reply(request: GenerationRequest) -> str:
        agent = str(request.tags["agent"])
        if agent in replies:
            turn = int(request.tags["turn"])
            return replies[agent][1] if agent == "ben" and turn >= 8 else replies[agent][0]
        return line_text(request)

    data = group_scenario(max_turns=10, policy="round_robin", allow_pass=True)
    data["render"] = render
    db = tmp_path / "run.db"
    assert personae.run(write_scenario(data), db=db, backend=ScriptedBackend(reply)).failed == 0
    ((episode_id, turns),) = episodes(db).items()
    assert [(t.agent, t.kind) for t in turns] == [
        ("ann", "line"), ("ben", "pass"), ("cal", "pass"), ("dee", "line"),
        ("ann", "line"), ("ben", "pass"), ("cal", "pass"), ("dee", "line"),
        ("ann", "line"), ("ben", "line"),
    ]  # fmt: skip
    passes = [t for t in turns if t.kind == "pass"]
    assert all(t.text == "" and t.call_id for t in passes)
    assert db_rows(db, "SELECT end_reason, n_turns FROM episodes") == [
        {"end_reason": "max_turns", "n_turns": 10}
    ]
    for call in calls(db, episode_id):
        prompt = rendered(call)
        assert "[PASS]" not in prompt.upper()
        # a pass leaves no trace: no empty line tagged with a passer's label, no empty message
        if call["messages_json"]:
            messages = json.loads(call["messages_json"])
            assert all(m["content"].strip() for m in messages)
            lines = [line for m in messages for line in m["content"].splitlines()]
        else:
            lines = call["prompt"].splitlines()[:-1]  # the last line is the speaker's own tag
        assert not {line.strip() for line in lines} & {"Ben:", "Cal:"}
        if call["turn_idx"] == 9:  # ben's line: it sees every earlier line, and only those
            assert all(t.text in prompt for t in turns[:9] if t.kind == "line")


def test_everyone_passing_in_a_row_ends_the_episode(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """When every agent passes in a row the episode ends (`passes`) instead of looping to
    max_turns; `max_passes_in_a_row` ends it sooner; without allow_pass the token is a line."""
    everyone = ScriptedBackend(["[pass]"])
    data = group_scenario(max_turns=500, repeats=3, policy="random", allow_pass=True)
    db = tmp_path / "all.db"
    assert personae.run(write_scenario(data), db=db, backend=everyone).failed == 0
    for turns in episodes(db).values():
        assert [t.kind for t in turns] == ["pass"] * 4
    assert {r["end_reason"] for r in db_rows(db, "SELECT end_reason FROM episodes")} == {"passes"}
    assert [r.identical for r in verify_run(db)] == [True] * 3  # the end reason replays too

    data["graph"]["max_passes_in_a_row"] = 2
    db = tmp_path / "two.db"
    assert personae.run(write_scenario(data), db=db, backend=everyone).failed == 0
    assert {len(t) for t in episodes(db).values()} == {2}

    data["graph"].pop("max_passes_in_a_row")
    data["graph"].update(allow_pass=False, max_turns=6)
    db = tmp_path / "no_pass.db"
    assert personae.run(write_scenario(data), db=db, backend=everyone).failed == 0
    for turns in episodes(db).values():
        assert [(t.kind, t.text) for t in turns] == [("line", "[pass]")] * 6


def test_passes_between_lines_do_not_end_the_episode(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    """Passes in a row fewer than the agents never end it: max_turns does, passes counted."""
    backend = ScriptedBackend({"ann": ["I have something to add."], "ben": ["[pass]"],
                               "cal": ["[pass]"], "dee": ["[pass]"]})  # fmt: skip
    data = group_scenario(max_turns=11, policy="round_robin", allow_pass=True)
    db = tmp_path / "run.db"
    assert personae.run(write_scenario(data), db=db, backend=backend).failed == 0
    (turns,) = episodes(db).values()
    assert [t.kind for t in turns] == (["line"] + ["pass"] * 3) * 2 + ["line", "pass", "pass"]
    assert db_rows(db, "SELECT end_reason FROM episodes") == [{"end_reason": "max_turns"}]
