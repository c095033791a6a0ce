"""Facilitated discussions: participant pools and intents, seed comments, turn taking, the
facilitator's placement and abstentions, annotators and the baseline classifier, bad input
(scripted backend), and one real discussion on the embedded model."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import SCENARIOS, cli, db_rows, read_yaml
from group_helpers import calls, episodes, rendered, taken

import personae
from personae.backends import GenerationRequest, GenerationResult, ScriptedBackend
from personae.scenario import load_scenario, plan_episodes

WriteScenario = Callable[..., Path]
DATA = SCENARIOS / "discussion"
SHIPPED = read_yaml(SCENARIOS / "discussion_facilitation.yaml")


def discussion(
    strategy: str = "rules_only",
    *,
    participants: int = 4,
    annotators: int = 1,
    baseline: bool = False,
    **graph: Any,
) -> dict[str, Any]:
    """The shipped scenario, made small: one strategy, absolute data paths, scripted backend."""
    data = copy.deepcopy(SHIPPED)
    data.pop("grid")
    data["backend"] = "scripted"
    data["graph"]["seed_comments"]["pool"] = str(DATA / "seed_comments.yaml")
    data["graph"].update(graph)
    for pool in data["pools"].values():
        pool["personas"] = str(DATA / Path(pool["personas"]).name)
    agents = data["agents"]
    agents["participant"]["count"] = participants
    agents["facilitator"]["persona"]["strategy"] = strategy
    agents["annotator"]["count"] = annotators
    if not annotators:
        del agents["annotator"]
    if not baseline:
        del agents["toxicity_baseline"]
    return data


def _run(
    write: WriteScenario, tmp_path: Path, data: dict[str, Any], backend: Any = None, **kw: Any
) -> Path:
    db = tmp_path / kw.pop("db", "run.db")
    result = personae.run(write(data), db=db, backend=backend, **kw)
    assert result.failed == 0 and result.complete == result.episodes
    return db


def _comments(turns: list[Any]) -> list[Any]:
    return [t for t in turns if t.role == "participant" and t.kind == "line"]


# -- turn taking ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "p"), [(4, 0.4), (3, 0.4), (5, 0.7)])
def test_respond_replies_to_the_speaker_before_last_at_the_predicted_rate(
    write_scenario: WriteScenario, tmp_path: Path, n: int, p: float
) -> None:
    """P(t_i = t_{i-2}) = p + (1 - p)/(n - 1) among the participants' turns, whatever the
    facilitator does in between (it is never one of the policy's speakers)."""
    data = discussion(
        "no_instructions", participants=n, annotators=0, max_turns=600,
        policy={"kind": "respond", "p": p},
    )  # fmt: skip
    data["repeats"] = 4
    db = _run(write_scenario, tmp_path, data)
    hits = total = 0
    for turns in episodes(db).values():
        speakers = [t.agent for t in _comments(turns)]
        assert len(speakers) == 600
        for a, _, c in zip(speakers, speakers[1:], speakers[2:], strict=False):
            hits += a == c
            total += 1
        assert all(a != b for a, b in pairwise(speakers))
    expected = p + (1 - p) / (n - 1)
    assert abs(hits / total - expected) < 0.03, (hits / total, expected)


def test_random_never_repeats_the_last_speaker_and_round_robin_cycles(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    for kind in ("random", "round_robin"):
        data = discussion("none", annotators=0, max_turns=200, policy=kind)
        db = _run(write_scenario, tmp_path, data, db=f"{kind}.db")
        for turns in episodes(db).values():
            speakers = [t.agent for t in _comments(turns)]
            assert all(a != b for a, b in pairwise(speakers))
            if kind == "random":
                assert len(Counter(speakers)) == 4
            else:
                order = [f"participant_{i}" for i in range(1, 5)]
                start = order.index(speakers[0])
                assert speakers[:8] == [order[(start + i) % 4] for i in range(8)]


# -- the facilitator ---------------------------------------------------------------------------


def test_the_facilitator_follows_every_nonempty_comment_and_its_passes_are_shown_to_nobody(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    replies = {
        "participant_1": [""],  # never says anything usable: logged as "...", not facilitated
        "participant": ["I disagree, and here is why.", "Fair point, but no."],
        "facilitator": ["[pass]", "Please keep it civil, everyone.", "[pass]"],
    }
    db = _run(write_scenario, tmp_path, discussion(max_turns=30), backend=ScriptedBackend(replies))
    for episode_id, turns in episodes(db).items():
        spoken = taken(turns)
        assert sum(t.role == "participant" for t in spoken) == 30
        for turn, after in pairwise(spoken):
            if turn.role == "participant":
                expect = "participant" if turn.text == "..." else "facilitator"
                assert after.role == expect, (turn, after)
            else:
                assert after.role == "participant"
        passes = [t for t in spoken if t.kind == "pass"]
        interventions = [t for t in spoken if t.role == "facilitator" and t.kind == "line"]
        assert passes and interventions
        assert all(t.text == "" and t.agent == "facilitator" for t in passes)
        # a pass is in nobody's prompt, and nobody rates it
        for call in calls(db, episode_id):
            assert "[pass]" not in rendered(call).split("Community rules")[0].replace(
                "reply with exactly [pass]", ""
            )
        rated = {r["turn_idx"] for r in db_rows(db, "SELECT turn_idx FROM judgments")}
        assert not rated & {t.idx for t in passes}
        assert {t.idx for t in interventions} <= rated


def test_strategy_none_has_no_facilitator_and_the_strategies_shape_its_prompt(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path, discussion("none", annotators=0), db="none.db")
    assert all(t.role != "facilitator" for ts in episodes(db).values() for t in ts)
    prompts = {}
    for strategy in ("no_instructions", "rules_only", "moderation_game"):
        db = _run(write_scenario, tmp_path, discussion(strategy, annotators=0), db=f"{strategy}.db")
        (episode_id,) = episodes(db)
        prompts[strategy] = next(
            c["prompt"] for c in calls(db, episode_id) if c["agent"] == "facilitator"
        )
    assert "Community rules" not in prompts["no_instructions"]
    assert "Community rules" in prompts["rules_only"]
    assert "Be civil" in prompts["rules_only"]
    assert (
        "never mention" in prompts["moderation_game"].lower()
        or "private" in prompts["moderation_game"].lower()
    )


# -- pools, intents and seed comments ----------------------------------------------------------


def test_each_discussion_draws_distinct_participants_and_their_intents_from_its_seed(
    write_scenario: WriteScenario,
) -> None:
    data = discussion(annotators=3)
    data["repeats"] = 300
    plans = plan_episodes(load_scenario(write_scenario(data)))
    again = plan_episodes(load_scenario(write_scenario(data)))
    assert [p.personas for p in plans] == [p.personas for p in again]
    fixed = {
        p["id"]: p["intent"] for p in read_yaml_list(DATA / "participants.yaml") if "intent" in p
    }
    drawn = Counter()
    ids_per_episode = set()
    for plan in plans:
        people = [plan.personas[f"participant_{i}"] for i in range(1, 5)]
        ids = tuple(p.id for p in people)  # type: ignore[attr-defined]
        assert len(set(ids)) == 4
        ids_per_episode.add(ids)
        for person in people:
            if person.id in fixed:  # type: ignore[attr-defined]
                assert person.intent == fixed[person.id]  # type: ignore[attr-defined]
            else:
                drawn[person.intent] += 1  # type: ignore[attr-defined]
        raters = {plan.personas[f"annotator_{i}"].id for i in range(1, 4)}  # type: ignore[attr-defined]
        assert len(raters) == 3
    assert len(ids_per_episode) > 250  # different discussions draw different people
    assert set(drawn) == {"troll", "neutral"}
    assert abs(drawn["troll"] / sum(drawn.values()) - 0.3) < 0.04
    assert len({p.episode_id for p in plans}) == 300


def read_yaml_list(path: Path) -> list[dict[str, Any]]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data


def test_seed_comments_open_the_thread_with_no_model_call_and_nobody_rates_them(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    data = discussion(annotators=2, baseline=True)
    data["repeats"] = 6
    db = _run(write_scenario, tmp_path, data)
    again = _run(write_scenario, tmp_path, data, db="again.db")
    texts = {c["text"].strip() for c in read_yaml_list(DATA / "seed_comments.yaml")}
    counts = set()
    for episode_id, turns in episodes(db).items():
        seeds = [t for t in turns if t.kind == "seed"]
        counts.add(len(seeds))
        assert 1 <= len(seeds) <= 2 and turns[: len(seeds)] == seeds
        assert {t.text for t in seeds} <= texts
        assert len({t.agent for t in seeds}) == len(seeds)  # distinct posters
        assert all(t.call_id is None for t in seeds)
        rated = {
            r["turn_idx"]
            for r in db_rows(db, "SELECT turn_idx FROM judgments WHERE episode_id = ?", episode_id)
        }
        assert not rated & {t.idx for t in seeds}
        # every comment, the facilitator's included, has two annotators and the baseline
        for t in turns:
            if t.kind == "line":
                judges = {
                    r["judge"]
                    for r in db_rows(
                        db,
                        "SELECT judge FROM judgments WHERE episode_id = ? AND turn_idx = ?",
                        episode_id,
                        t.idx,
                    )
                }
                assert judges == {"annotator_1", "annotator_2", "toxicity_baseline"}
        outcome = db_rows(db, "SELECT outcome_json FROM episodes WHERE episode_id = ?", episode_id)
        assert len(json.loads(outcome[0]["outcome_json"])["seed_comments"]) == len(seeds)
    assert counts == {1, 2}
    assert episodes(db) == episodes(again)  # the same seed draws the same discussions


def test_participants_speak_under_their_usernames_and_intents_reach_only_their_prompt(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path, discussion(annotators=0))
    (row,) = db_rows(db, "SELECT episode_id, personas_json FROM episodes")
    personas = json.loads(row["personas_json"])
    names = {n: p["username"] for n, p in personas.items() if n.startswith("participant")}
    for call in calls(db, row["episode_id"]):
        prompt = call["prompt"]
        assert prompt.rstrip().endswith(f"{names.get(call['agent'], 'moderator')}:")
        if call["agent"] in names:
            intent = personas[call["agent"]]["intent"]
            assert f"Instructions for {names[call['agent']]}:" in prompt
            others = [n for a, n in names.items() if a != call["agent"]]
            assert not any(f"Instructions for {o}" in prompt for o in others)
            assert intent in {"neutral", "troll", "community"}


# -- annotators -------------------------------------------------------------------------------


class _Garbled(ScriptedBackend):
    """Annotators answer off the format; everyone else as scripted."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await super().generate(request)
        if request.tags.get("purpose") == "judge" and request.tags.get("agent") == "annotator_1":
            return GenerationResult(text="toxic? maybe 3", finish_reason="stop")
        return result


def test_an_annotator_that_cannot_follow_the_format_is_recorded_invalid_not_a_crash(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path, discussion(annotators=2), backend=_Garbled())
    rows = db_rows(db, "SELECT judge, valid, raw, parsed_json, error FROM judgments")
    bad = [r for r in rows if r["judge"] == "annotator_1"]
    good = [r for r in rows if r["judge"] == "annotator_2"]
    assert bad and all(not r["valid"] and r["raw"] == "toxic? maybe 3" for r in bad)
    assert all(r["parsed_json"] is None and r["error"] for r in bad)
    assert good and all(r["valid"] for r in good)
    assert set(json.loads(good[0]["parsed_json"])) == {"toxicity", "argument_quality"}


def test_the_baseline_classifier_scores_toxic_comments_higher(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    replies = {
        "participant_1": ["You are a complete idiot and I hate you, shut up."],
        "participant": ["I think the evidence on rent control is mixed, honestly."],
    }
    data = discussion("none", annotators=0, baseline=True, max_turns=12)
    db = _run(write_scenario, tmp_path, data, backend=ScriptedBackend(replies))
    rows = db_rows(
        db,
        "SELECT t.agent, j.score, j.rubric, j.valid FROM judgments j JOIN turns t "
        "ON t.episode_id = j.episode_id AND t.idx = j.turn_idx",
    )
    assert rows and all(r["valid"] and r["rubric"] == "alt_profanity_check" for r in rows)
    rude = [r["score"] for r in rows if r["agent"] == "participant_1"]
    polite = [r["score"] for r in rows if r["agent"] != "participant_1"]
    assert rude and polite and min(rude) > 0.9 > 0.5 > max(polite)


# -- the shipped scenario, resume, bad input --------------------------------------------------


def test_the_shipped_scenario_runs_every_strategy_and_resumes(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    first = personae.run("discussion_facilitation", backend="scripted", db=db, episodes=2)
    assert first.complete == 2
    before = db_rows(db, "SELECT episode_id, personas_json FROM episodes")
    result = personae.run(resume=db, episodes=6)  # the first run was capped at 2
    assert result.failed == 0
    rows = db_rows(db, "SELECT episode_id, personas_json, condition_json, status FROM episodes")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"complete"}
    kept = {r["episode_id"]: r["personas_json"] for r in rows}
    assert all(kept[r["episode_id"]] == r["personas_json"] for r in before)
    strategies = {json.loads(r["condition_json"])["facilitator"]["strategy"] for r in rows}
    assert strategies == {
        "none", "no_instructions", "rules_only", "moderation_guidelines",
        "facilitation_guidelines", "moderation_game",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["agents"]["facilitator"]["persona"].update(strategy="rules"), "strategy"),
        (lambda d: d["pools"]["participants"]["draw"]["intent"].update(trol=0.0), "intent"),
        (lambda d: d["pools"]["participants"]["draw"].update(intent={"troll": 1.3}), "[0, 1]"),
        (lambda d: d["agents"]["participant"].update(count=31), "only 30 personas"),
        (
            lambda d: d["agents"]["annotator"]["persona"]["rubric"]["dimensions"][0].update(
                anchors={3: "so-so"}
            ),
            "anchors at both ends",
        ),
        (lambda d: d["graph"].update(facilitator="moderator"), "not an agent"),
        (lambda d: d["graph"]["seed_comments"].update(per_discussion=[2, 1]), "per_discussion"),
    ],
)
def test_bad_discussion_input_is_one_line_exit_2_and_writes_nothing(
    write_scenario: WriteScenario,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    data = discussion()
    change(data)
    db = tmp_path / "bad.db"
    code, _, err = cli(["run", str(write_scenario(data)), "--db", str(db)], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists()


# -- the real model ---------------------------------------------------------------------------


@pytest.mark.model
def test_a_real_discussion_with_a_facilitator_and_an_annotator(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    data = discussion("rules_only", participants=3, annotators=1, baseline=True, max_turns=3)
    data["backend"] = "embedded"
    db = _run(write_scenario, tmp_path, data)
    (turns,) = episodes(db).values()
    assert len(_comments(turns)) == 3
    assert any(t.role == "facilitator" for t in turns)
    judged = db_rows(db, "SELECT judge, valid, parsed_json, call_id FROM judgments")
    annotator = [j for j in judged if j["judge"] == "annotator_1"]
    assert annotator and all(j["call_id"] for j in annotator)
    for j in annotator:  # bounded structured output: a real model always fits the rubric
        assert j["valid"]
        parsed = json.loads(j["parsed_json"])
        assert 1 <= parsed["toxicity"] <= 5 and 1 <= parsed["argument_quality"] <= 5
    assert {j["judge"] for j in judged} == {"annotator_1", "toxicity_baseline"}


def test_annotators_rate_a_finished_discussion_afterwards(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`personae judge` with `count` and a persona pool: several annotators, each drawn per
    episode, rate every comment of a database that ran without them, seeing the usernames."""
    db = _run(write_scenario, tmp_path, discussion(annotators=0))
    rubric = SHIPPED["agents"]["annotator"]["persona"]["rubric"]
    spec = {
        "name": "rater",
        "backend": "scripted",
        "pools": {"people": {"personas": str(DATA / "annotators.yaml")}},
        "judge": {
            "role": "annotator",
            "count": 3,
            "observes": "all",
            "window": 4,
            "persona": {"pool": "people", "rubric": rubric},
        },
    }
    judge_file = write_scenario(spec, name="raters.yaml")
    code, out, err = cli(["judge", str(db), str(judge_file)], capsys)
    assert "judgments" in out
    assert code == 0, err
    ((episode_id, turns),) = episodes(db).items()
    lines = [t for t in turns if t.kind == "line"]
    rows = db_rows(db, "SELECT judge, turn_idx, valid FROM judgments")
    assert {(r["judge"], r["turn_idx"]) for r in rows} == {
        (f"rater_{i}", t.idx) for i in (1, 2, 3) for t in lines
    }
    personas = json.loads(db_rows(db, "SELECT personas_json FROM episodes")[0]["personas_json"])
    prompts = [c["prompt"] for c in calls(db, episode_id) if c["agent"] == "rater_1"]
    speaker = personas[lines[0].agent]["username"]
    assert any(f"{speaker}: " in p for p in prompts)
    # a judge count without a pool is an error
    del spec["pools"]
    spec["judge"]["persona"] = {"rubric": rubric}
    code, _, err = cli(["judge", str(db), str(write_scenario(spec, name="bad.yaml"))], capsys)
    assert code == 2 and "count needs a persona pool" in err


def test_show_names_participants_by_their_usernames(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _run(write_scenario, tmp_path, discussion(annotators=1))
    personas = json.loads(db_rows(db, "SELECT personas_json FROM episodes")[0]["personas_json"])
    code, out, _ = cli(["show", str(db), "0"], capsys)
    assert code == 0
    for name, persona in personas.items():
        if name.startswith("participant"):
            assert f"{persona['username']}: " in out or f"{persona['username']} (seed)" in out
    assert "moderator: " in out and "participant_1:" not in out
