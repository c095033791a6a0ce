"""Candidates and a supervisor: K counselors propose every counselor line, a supervisor picks
the one said; the tree, the choice and its rationale are stored, replayed, forked, exported as
DPO pairs and rated (counts, Elo); session ratings on 0-10 scales."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PERSONAS, REPO, base_scenario, cli, db_rows, tree_snapshot

import personae
from personae.backends import GenerationRequest, ScriptedBackend
from personae.errors import UserError
from personae.export import (
    Choice,
    candidate_report,
    dpo_pairs,
    elo_ratings,
    selection_table,
)
from personae.replay import fork_episode, verify_run
from personae.scenario import load_scenario

COUNSELORS = PERSONAS / "counselors"
IDS = ("cbt", "mi", "integrative")


def supervisor(**rubric: Any) -> dict[str, Any]:
    return {
        "role": "judge",
        "persona": {
            "description": "A clinical supervisor.",
            "rubric": {
                "id": "pick_v1",
                "choice": True,
                "rationale": 80,
                "instructions": "Choose the reply that listens best.",
                **rubric,
            },
        },
    }


def candidate_scenario(*, ids: tuple[str, ...] = IDS, **overrides: Any) -> dict[str, Any]:
    """The unit scenario with a counselor seat of candidates and a supervisor."""
    data = base_scenario(**{"repeats": 2, **overrides})
    personas = {"mi": "motivational_interviewing.yaml", "integrative": "integrative.yaml"}
    data["agents"]["counselor"]["candidates"] = [
        {"id": i, **({"persona": str(COUNSELORS / personas[i])} if i in personas else {})}
        for i in ids
    ]
    data["agents"]["counselor"]["candidates"][-1]["sampling"] = {"temperature": 0.2}
    data["agents"]["counselor"]["supervisor"] = "supervisor"
    data["agents"]["supervisor"] = supervisor()
    return data


class Script:
    """Scripted replies: candidates say `Proposal ID tTURN.`, the supervisor picks from a
    planted list (cycled) with a rationale, the client says something distinctive."""

    def __init__(self, picks: list[str] | None = None) -> None:  # episodes run one by one
        self.picks = picks or ["mi"]
        self.asked: list[GenerationRequest] = []

    def __call__(self, request: GenerationRequest) -> str:
        self.asked.append(request)
        tags = request.tags
        if tags.get("purpose") == "choose":
            n = sum(r.tags.get("purpose") == "choose" for r in self.asked) - 1
            return json.dumps({"rationale": "It listens.", "code": self.picks[n % len(self.picks)]})
        if tags.get("purpose") == "judge":
            return json.dumps({"rationale": "", "bond": 4, "goals": 2})
        if "candidate" in tags:
            return f"Proposal {tags['candidate']} t{tags['turn']}."
        return f"Client says t{tags['turn']}."


def run(tmp_path: Path, data: dict[str, Any], script: Script, name: str = "c") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    db = tmp_path / f"{name}.db"
    result = personae.run(path, db=db, backend=ScriptedBackend(replies=script), concurrency=1)
    assert result.failed == 0
    return db


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Script]:
    script = Script(["mi", "integrative", "mi", "integrative", "cbt", "integrative"])
    return run(tmp_path, candidate_scenario(), script), script


def test_every_candidate_is_asked_with_its_own_call_id_and_the_chosen_text_is_the_turn(
    planted: tuple[Path, Script],
) -> None:
    db, _ = planted
    with personae.RunLog(db) as log:
        episode = log.episodes()[0]["episode_id"]
        turns = log.turns(episode)
        calls = {c["call_id"]: c for c in log.calls(episode)}
        verdicts = {j["turn_idx"]: j for j in log.judgments(episode) if j["turn_idx"] is not None}
    counselor = [t for t in turns if t.agent == "counselor"]
    assert [t.idx for t in counselor] == [0, 2, 4]
    assert [t.hidden["chosen"] for t in counselor] == ["mi", "integrative", "mi"]
    # the opening is each candidate's fixed first line (no call), the supervisor still picks
    opening = counselor[0].hidden["candidates"]
    assert [p["call_id"] for p in opening] == [None, None, None]
    assert (
        counselor[0].text == "Hi, I'm Jonah, and I'm glad you're here. What's been on your "
        "mind lately that brought you in today?"
    )
    for turn in counselor[1:]:
        tree = turn.hidden["candidates"]
        assert [p["id"] for p in tree] == list(IDS)
        assert [p["call_id"] for p in tree] == [f"{episode}-{turn.idx:04d}-cand-{i}" for i in IDS]
        assert [p["text"] for p in tree] == [f"Proposal {i} t{turn.idx}." for i in IDS]
        chosen = turn.hidden["chosen"]
        assert turn.text == f"Proposal {chosen} t{turn.idx}."
        assert turn.call_id == f"{episode}-{turn.idx:04d}-cand-{chosen}"
        assert turn.hidden["rationale"] == "It listens."
        assert sorted(turn.hidden["shown"]) == sorted(IDS)
        asked = [calls[p["call_id"]] for p in tree]
        assert [c["purpose"] for c in asked] == ["candidate"] * 3
        assert [c["agent"] for c in asked] == [f"counselor#{i}" for i in IDS]
        assert len({c["seed"] for c in asked}) == 3  # each candidate samples on its own
        assert json.loads(asked[-1]["params_json"])["temperature"] == 0.2
        assert json.loads(asked[0]["params_json"])["temperature"] == 0.8  # the seat's own
        # each candidate renders with its own persona, under the seat's tag
        assert "Jonah Whitfield" in asked[1]["prompt"] and "Ana Reyes" in asked[0]["prompt"]
        assert all(c["prompt"].endswith("\nCounselor:") for c in asked)
        verdict = verdicts[turn.idx]
        assert (verdict["judge"], verdict["rubric"], verdict["valid"]) == (
            "supervisor",
            "pick_v1",
            1,
        )
        assert verdict["parsed"] == {"rationale": "It listens.", "code": chosen}
        assert verdict["call_id"] == f"{episode}-{turn.idx:04d}-choose-supervisor"
        assert calls[verdict["call_id"]]["purpose"] == "choose"


def test_the_supervisor_sees_the_conversation_and_every_candidate_and_must_name_one(
    planted: tuple[Path, Script],
) -> None:
    _, script = planted
    choices = [r for r in script.asked if r.tags.get("purpose") == "choose"]
    assert len(choices) == 6  # 3 counselor turns x 2 episodes
    later = next(r for r in choices if r.tags["turn"] == 2)
    prompt = later.rendered()
    assert "Choose the reply that listens best." in prompt
    assert "Client: Client says t1." in prompt
    for i in IDS:
        assert f"[{i}] Proposal {i} t2." in prompt
    schema = later.json_schema
    assert schema is not None and set(schema["properties"]) == {"rationale", "code"}
    assert sorted(schema["properties"]["code"]["enum"]) == sorted(IDS)
    # candidates are shown in an order drawn per turn, so no position is favoured
    orders = {tuple(r.json_schema["properties"]["code"]["enum"]) for r in choices}  # type: ignore[index]
    assert len(orders) > 1


def test_the_client_hears_only_the_chosen_lines_and_never_the_hidden_tree(
    planted: tuple[Path, Script],
) -> None:
    db, _ = planted
    heard = []
    for episode in [r["episode_id"] for r in db_rows(db, "SELECT episode_id FROM episodes")]:
        trees = [
            json.loads(r["hidden_json"])
            for r in db_rows(
                db,
                "SELECT hidden_json FROM turns WHERE agent = 'counselor' AND episode_id = ?",
                episode,
            )
        ]
        rejected = [p["text"] for t in trees for p in t["candidates"] if p["id"] != t["chosen"]]
        prompts = [
            r["prompt"]
            for r in db_rows(
                db,
                "SELECT prompt FROM llm_calls WHERE agent = 'client' AND episode_id = ?",
                episode,
            )
        ]
        assert prompts and len(rejected) == 6
        for prompt in prompts:
            assert not any(text in prompt for text in rejected)
            assert "It listens." not in prompt and "candidates" not in prompt
        heard.extend(prompts)
    assert any("Proposal integrative t2." in p for p in heard)  # a chosen line is heard
    # the candidates themselves, later on, hear the chosen line as the seat's own
    (first,) = db_rows(db, "SELECT episode_id FROM episodes WHERE idx = 0")
    (later,) = db_rows(
        db, "SELECT prompt FROM llm_calls WHERE call_id = ?", f"{first['episode_id']}-0004-cand-cbt"
    )
    assert "Counselor: Proposal integrative t2." in later["prompt"]
    assert "Proposal mi t2." not in later["prompt"]


def test_replay_verify_and_a_fork_reproduce_the_choices(planted: tuple[Path, Script]) -> None:
    db, _ = planted
    results = verify_run(db)
    assert len(results) == 2 and all(r.identical for r in results), [r.line() for r in results]
    parent = results[0].episode_id
    fork = fork_episode(db, parent, 3, backend="scripted")
    assert fork.status == "complete", fork.error
    with personae.RunLog(db) as log:
        kept = log.turns(fork.episode_id)[2]
        judged = {
            j["turn_idx"] for j in log.judgments(fork.episode_id) if j["judge"] == "supervisor"
        }
        chosen_call = log.query("SELECT purpose FROM llm_calls WHERE call_id = ?", kept.call_id)
    assert kept.hidden["chosen"] == "integrative" and kept.call_id.startswith(fork.episode_id)
    assert chosen_call == [{"purpose": "candidate"}]  # the kept line's call came with it
    assert judged == {0, 2, 4}  # the kept choices are this fork's verdicts too
    assert all(r.identical for r in verify_run(db)), [r.line() for r in verify_run(db)]
    # a persona field set on a fork reaches the candidates that speak with the agent's persona
    other = fork_episode(db, parent, 3, backend="scripted", settings=["counselor.name=Dr. Lee"])
    with personae.RunLog(db) as log:
        asked = {c["agent"]: c["prompt"] for c in log.calls(other.episode_id) if c["turn_idx"] == 4}
    assert "Dr. Lee" in asked["counselor#cbt"] and "Dr. Lee" not in asked["counselor#mi"]
    # the fork's kept choices are its parent's: read back once (turn 4 is the fork's own)
    mine = [(c.episode_id, c.turn) for c in candidate_report(db).choices]
    assert len(mine) == 8 and (fork.episode_id, 4) in mine and (fork.episode_id, 2) not in mine


def test_a_changed_candidate_prompt_is_a_difference(planted: tuple[Path, Script]) -> None:
    db, _ = planted
    (first,) = db_rows(db, "SELECT episode_id FROM episodes WHERE idx = 0")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE llm_calls SET prompt = prompt || 'x' WHERE call_id = ?",
            (f"{first['episode_id']}-0002-cand-mi",),
        )
    conn.close()
    first = verify_run(db)[0]
    assert not first.identical and first.first_diff is not None
    assert first.first_diff.turn == 2 and "-0002-cand-mi" in first.first_diff.what


def test_dpo_export_pairs_the_chosen_proposal_with_each_rejected_one(
    planted: tuple[Path, Script], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = planted
    result = dpo_pairs(db, "counselor")
    # 3 choices per episode, 2 episodes, 2 rejected proposals each
    assert (result.candidate_turns, len(result.pairs), result.groups) == (6, 12, 0)
    with personae.RunLog(db) as log:
        episode = log.episodes()[0]["episode_id"]
        turns = log.turns(episode)
    mine = [p for p in result.pairs if p["episode_id"] == episode and p["turn"] == 2]
    assert [(p["chosen_candidate"], p["rejected_candidate"]) for p in mine] == [
        ("integrative", "cbt"),
        ("integrative", "mi"),
    ]
    assert mine[0]["chosen"] == [{"role": "assistant", "content": "Proposal integrative t2."}]
    assert mine[1]["rejected"] == [{"role": "assistant", "content": "Proposal mi t2."}]
    prompt = mine[0]["prompt"]
    assert prompt[0]["role"] == "system" and "Ana Reyes" in prompt[0]["content"]
    assert [m["content"] for m in prompt[1:]] == [
        "(The conversation begins.)",
        turns[0].text,
        turns[1].text,
    ]
    assert [m["role"] for m in prompt[1:]] == ["user", "assistant", "user"]
    assert "Proposal cbt t2." not in json.dumps(prompt)
    assert dpo_pairs(db, "counselor", judge="nobody").candidate_turns == 0
    code, _, err = cli(["export", str(db), "--format", "dpo", "--role", "counselor"], capsys)
    assert (
        code == 0 and "12 preference pairs from 0 sibling-fork groups and 6 candidate turns" in err
    )


def test_selection_counts_and_elo_follow_the_planted_choices(
    planted: tuple[Path, Script], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = planted
    report = candidate_report(db)
    # planted: mi, integrative, mi in the first episode, integrative, cbt, integrative in the
    # second (the openings are choices too)
    planted = ["mi", "integrative", "mi", "integrative", "cbt", "integrative"]
    assert [c.chosen for c in report.choices] == planted
    stats = {s.candidate: s for s in report.candidates}
    assert {k: (s.offered, s.chosen) for k, s in stats.items()} == {
        "cbt": (6, 1),
        "mi": (6, 2),
        "integrative": (6, 3),
    }
    by_hand = elo_ratings([_choice(c, IDS) for c in planted])  # see the test below
    assert {k: s.elo for k, s in stats.items()} == {c: by_hand[("seat", c)] for c in IDS}
    assert stats["integrative"].elo > 1000 > stats["mi"].elo > stats["cbt"].elo
    code, out, _ = cli(["analyze", "candidates", str(db)], capsys)
    assert code == 0 and "6 choices in 2 episodes" in out
    assert "integrative" in out and f"{stats['mi'].elo:.1f}" in out
    code, out, _ = cli(["analyze", "candidates", str(db), "--json"], capsys)
    data = json.loads(out)
    assert data["choices"] == 6 and {c["candidate"] for c in data["candidates"]} == set(IDS)


def _choice(chosen: str, ids: Sequence[str] = "abc", valid: bool = True) -> Choice:
    return Choice("e", 0, "seat", "counselor", {i: i for i in ids}, chosen, "sup", "", valid)


def test_elo_ratings_by_hand() -> None:
    # two candidates: a beats b twice, then b beats a (K 16, start 1000)
    # game 1: E = 0.5, a 1008, b 992; game 2: E_a = 1 / (1 + 10 ** (-16 / 400)) = 0.52302,
    # a 1015.6318, b 984.3682; game 3: E_b = 1 / (1 + 10 ** (31.2637 / 400)) = 0.45515,
    # b 993.0861, a 1006.9139
    ratings = elo_ratings([_choice("a", "ab"), _choice("a", "ab"), _choice("b", "ab")])
    assert ratings[("seat", "a")] == pytest.approx(1006.9139, abs=1e-4)
    assert ratings[("seat", "b")] == pytest.approx(993.0861, abs=1e-4)
    # three candidates: each choice is a game against every rejected one, in their order
    planted = [_choice(c) for c in "aacbac"]
    ratings = elo_ratings(planted)
    assert ratings[("seat", "a")] == pytest.approx(1018.4988, abs=1e-4)
    assert ratings[("seat", "b")] == pytest.approx(978.7690, abs=1e-4)
    assert ratings[("seat", "c")] == pytest.approx(1002.7322, abs=1e-4)
    assert sum(ratings.values()) == pytest.approx(3000)
    assert elo_ratings(planted) == ratings  # deterministic
    # a choice the supervisor did not make is no game and no win
    table = selection_table([*planted, _choice("a", valid=False)])
    assert [(s.candidate, s.offered, s.chosen) for s in table] == [
        ("a", 6, 3),
        ("b", 6, 1),
        ("c", 6, 2),
    ]
    assert table[0].elo == ratings[("seat", "a")]


def test_no_valid_choice_says_the_first_candidate_and_records_why(tmp_path: Path) -> None:
    class Unsure(Script):
        def __call__(self, request: GenerationRequest) -> str:
            if request.tags.get("purpose") == "choose":
                self.asked.append(request)
                return json.dumps({"rationale": "?", "code": "nobody"})
            return super().__call__(request)

    db = run(tmp_path, candidate_scenario(repeats=1), Unsure())
    turns = db_rows(db, "SELECT text, hidden_json FROM turns WHERE agent = 'counselor'")
    hidden = json.loads(turns[1]["hidden_json"])
    assert hidden["chosen"] == "cbt" and turns[1]["text"] == "Proposal cbt t2."
    assert "code" in hidden["supervisor_error"]
    verdicts = db_rows(db, "SELECT valid, error FROM judgments WHERE judge = 'supervisor'")
    assert verdicts and all(v["valid"] == 0 for v in verdicts)
    calls = db_rows(db, "SELECT call_id FROM llm_calls WHERE purpose = 'choose'")
    assert len(calls) == 6  # each choice asked twice (a retry with a new seed)
    assert dpo_pairs(db, "counselor").pairs == []
    report = candidate_report(db)
    assert report.invalid == 3 and all(s.offered == 0 for s in report.candidates)


def test_a_session_rubric_can_be_normalised_to_0_10(tmp_path: Path) -> None:
    data = candidate_scenario(repeats=1)
    data["agents"]["rater"] = {
        "role": "judge",
        "observes": "all",
        "when": "end",
        "persona": {
            "rubric": {
                "id": "alliance",
                "normalise": 10,
                "dimensions": [
                    {"name": "bond", "scale": [1, 5]},
                    {"name": "goals", "scale": [0, 4]},
                ],
            }
        },
    }
    db = run(tmp_path, data, Script())
    (verdict,) = db_rows(db, "SELECT score, parsed_json FROM judgments WHERE judge = 'rater'")
    # bond 4 on 1..5 is 7.5, goals 2 on 0..4 is 5.0
    assert verdict["score"] == pytest.approx(6.25)
    assert json.loads(verdict["parsed_json"]) == {"rationale": "", "bond": 4, "goals": 2}
    (session,) = candidate_report(db).sessions
    assert (session.judge, session.episodes, session.valid) == ("rater", 1, 1)
    assert session.score == pytest.approx(6.25) and session.dimensions == {"bond": 4, "goals": 2}


def test_candidates_in_a_group_conversation_and_a_chosen_pass(tmp_path: Path) -> None:
    from group_helpers import group_scenario

    data = group_scenario(
        ("ann", "ben"),
        max_turns=4,
        allow_pass=True,
        policy={"kind": "scripted", "order": ["ann", "ben"]},
    )
    data["agents"]["ann"]["candidates"] = [
        {"id": "quiet", "persona": {"id": "q", "name": "Ann", "description": "Says little."}},
        {"id": "loud"},
    ]
    data["agents"]["ann"]["supervisor"] = "chair"
    data["agents"]["chair"] = supervisor(codes=["quiet", "loud"])

    def replies(request: GenerationRequest) -> str:
        tags = request.tags
        if tags.get("purpose") == "choose":
            return json.dumps({"rationale": "", "code": "quiet" if tags["turn"] == 2 else "loud"})
        if tags.get("candidate") == "quiet":
            return "[pass]"
        return f"Line of {tags['agent']} {tags.get('candidate', '')} t{tags['turn']}."

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    db = tmp_path / "g.db"
    personae.run(path, db=db, backend=ScriptedBackend(replies=replies))
    turns = db_rows(db, "SELECT idx, agent, kind, text, hidden_json FROM turns ORDER BY idx")
    assert [(t["agent"], t["kind"]) for t in turns] == [
        ("ann", "line"),
        ("ben", "line"),
        ("ann", "pass"),
        ("ben", "line"),
    ]
    assert turns[0]["text"] == "Line of ann loud t0."
    quiet = json.loads(turns[2]["hidden_json"])["candidates"][0]
    assert (quiet["id"], quiet["text"]) == ("quiet", "")
    ben = db_rows(db, "SELECT prompt FROM llm_calls WHERE agent = 'ben' ORDER BY turn_idx")
    assert "Line of ann loud t0." in ben[-1]["prompt"]
    assert "chair" not in {t["agent"] for t in turns}  # the supervisor takes no turns
    assert all(r.identical for r in verify_run(db))


def test_candidates_render_chat_prompts_with_the_seat_s_lines_as_their_own(tmp_path: Path) -> None:
    script = Script(["integrative"])
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(candidate_scenario(repeats=1)), encoding="utf-8")
    backend = ScriptedBackend(replies=script, render_mode="chat")
    personae.run(path, db=tmp_path / "chat.db", backend=backend)
    later = next(r for r in script.asked if r.tags.get("candidate") == "mi" and r.tags["turn"] == 4)
    assert later.messages is not None
    roles = [(m.role, m.content) for m in later.messages]
    assert roles[0][0] == "system" and "Jonah Whitfield" in roles[0][1]
    assert ("assistant", "Proposal integrative t2.") in roles  # the seat's line is its own
    assert not any("Proposal cbt t2." in text for _, text in roles)
    choose = next(
        r for r in script.asked if r.tags.get("purpose") == "choose" and r.tags["turn"] == 4
    )
    assert choose.messages is not None and [m.role for m in choose.messages] == ["system", "user"]
    assert "[mi] Proposal mi t4." in choose.messages[1].content
    assert all(r.identical for r in verify_run(tmp_path / "chat.db"))


def test_the_shipped_scenario_runs_on_the_scripted_backend(tmp_path: Path) -> None:
    db = tmp_path / "shipped.db"
    result = personae.run("counseling_candidates", backend="scripted", db=db)
    assert (result.complete, result.failed) == (2, 0)
    report = candidate_report(db)
    assert {s.candidate for s in report.candidates} == set(IDS)
    assert sum(s.chosen for s in report.candidates) == len(report.choices) == 6
    (session,) = report.sessions
    assert session.rubric == "session_alliance_v1" and session.score is not None
    assert 0 <= session.score <= 10
    scenario = load_scenario(REPO / "scenarios" / "counseling_candidates.yaml")
    assert scenario.agents["client"].persona.endswith("hannah_new_parent.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["agents"]["counselor"].update(candidates=[{"id": "cbt"}]),
            "agents.counselor.candidates: an agent with candidates needs at least 2, got 1",
        ),
        (lambda d: d["agents"]["counselor"].update(candidates=[]), "needs at least 2, got 0"),
        (
            lambda d: d["agents"]["counselor"].pop("supervisor"),
            "agents.counselor.supervisor: candidates need a supervisor",
        ),
        (
            lambda d: d["agents"]["client"].update(supervisor="supervisor"),
            "agents.client.supervisor: a supervisor needs candidates",
        ),
        (
            lambda d: d["agents"]["counselor"]["candidates"].append({"id": "mi"}),
            "candidate id 'mi' is used twice",
        ),
        (
            lambda d: d["agents"]["counselor"].update(supervisor="client"),
            "supervisor 'client' has the role 'client', which is not a judge",
        ),
        (
            lambda d: d["agents"]["counselor"].update(supervisor="boss"),
            "supervisor names 'boss', which is not another agent",
        ),
        (
            lambda d: d["agents"]["counselor"]["candidates"][0].update(sampling={"temprature": 1}),
            "unknown key 'agents.counselor.candidates[0].sampling.temprature'",
        ),
        (
            lambda d: d["agents"]["counselor"]["candidates"][0].update(persona={"pool": "p"}),
            "a candidate's persona is a file or a mapping, not a pool",
        ),
        (
            lambda d: d["agents"]["counselor"]["candidates"][0].update(id="a b"),
            "agents.counselor.candidates.0.id",
        ),
        (
            lambda d: d["agents"]["supervisor"]["persona"]["rubric"].update(
                choice=False, dimensions=[{"name": "x"}]
            ),
            "supervisor 'supervisor' rates with dimensions; it must choose a candidate",
        ),
        (
            lambda d: d["agents"]["supervisor"]["persona"]["rubric"].update(codes=["cbt", "x"]),
            "the supervisor's codes ['cbt', 'x'] are not the candidates of 'counselor'",
        ),
        (
            lambda d: d["agents"]["supervisor"].update(observes=["client"]),
            "a supervisor only chooses among candidates",
        ),
        (
            lambda d: d["agents"].update(
                rater={
                    "role": "judge",
                    "observes": ["client"],
                    "persona": {"rubric": {"id": "r", "choice": True}},
                }
            ),
            "agents.rater.persona.rubric: a choice rubric needs codes",
        ),
    ],
)
def test_bad_candidates_are_one_line_errors_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, message: str
) -> None:
    data = candidate_scenario()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    before = tree_snapshot(tmp_path)
    code, out, err = cli(
        ["run", str(path), "--backend", "scripted", "--db", str(tmp_path / "x.db")], capsys
    )
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert out == "" and tree_snapshot(tmp_path) == before


def test_a_judge_file_cannot_have_candidates(tmp_path: Path) -> None:
    from personae.replay import load_judge_spec

    path = tmp_path / "judge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "j",
                "judge": {
                    "role": "judge",
                    "observes": ["client"],
                    "supervisor": "x",
                    "persona": {"rubric": {"id": "r", "dimensions": [{"name": "d"}]}},
                },
            }
        )
    )
    with pytest.raises(UserError, match="candidates and a supervisor belong to an agent"):
        load_judge_spec(path)
    path.write_text(
        yaml.safe_dump(
            {
                "name": "j",
                "judge": {
                    "role": "judge",
                    "observes": ["client"],
                    "persona": {"rubric": {"id": "r", "choice": True}},
                },
            }
        )
    )
    with pytest.raises(UserError, match="a choice rubric needs codes"):
        load_judge_spec(path)


@pytest.mark.model
def test_a_short_episode_with_candidates_on_the_real_model(tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "scenarios" / "counseling_candidates.yaml").read_text())
    spec["graph"]["max_turns"] = 3
    spec["repeats"] = 1
    del spec["agents"]["alliance_rater"]  # the session rating is tested on the scripted backend
    for agent in spec["agents"].values():
        if isinstance(agent["persona"], str):
            agent["persona"] = str(REPO / "scenarios" / agent["persona"])
        for c in agent.get("candidates", []):
            if "persona" in c:
                c["persona"] = str(REPO / "scenarios" / c["persona"])
        agent.setdefault("sampling", {})["max_tokens"] = 40
        if agent["role"] == "judge":
            agent["persona"]["rubric"]["rationale"] = 40  # shorter replies, same grammar
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    db = tmp_path / "real.db"
    result = personae.run(path, db=db, backend="embedded?n_parallel=4&ctx_per_slot=2048")
    assert (result.complete, result.failed) == (1, 0)
    with personae.RunLog(db) as log:
        episode = log.episodes()[0]["episode_id"]
        turns = log.turns(episode)
        verdicts = log.judgments(episode)
    generated = turns[2]
    assert generated.agent == "counselor" and generated.text
    tree = {p["id"]: p for p in generated.hidden["candidates"]}
    assert set(tree) == set(IDS) and generated.text == tree[generated.hidden["chosen"]]["text"]
    assert all(p["call_id"] for p in tree.values())
    choices = [j for j in verdicts if j["judge"] == "supervisor"]
    assert len(choices) == 2 and all(j["valid"] for j in choices)  # the grammar holds
    assert all(r.identical for r in verify_run(db))


def test_scripted_replies_can_key_one_candidate(tmp_path: Path) -> None:
    path = tmp_path / "keyed.yaml"
    path.write_text(yaml.safe_dump(candidate_scenario(repeats=1)), encoding="utf-8")
    backend = ScriptedBackend(replies={"counselor#mi": ["MI one.", "MI two."], "counselor": ["C."]})
    personae.run(path, db=tmp_path / "keyed.db", backend=backend)
    trees = [
        {p["id"]: p["text"] for p in json.loads(r["hidden_json"])["candidates"]}
        for r in db_rows(tmp_path / "keyed.db", "SELECT hidden_json FROM turns WHERE idx IN (2, 4)")
    ]
    assert [t["mi"] for t in trees] == ["MI one.", "MI two."]  # its own list, in order
    assert {t["cbt"] for t in trees} == {t["integrative"] for t in trees} == {"C."}
