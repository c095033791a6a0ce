"""Observers and judges: verdicts on every watched line (or once per episode) go into the
`judgments` table and never into the conversation unless routed as a private line; replies that
do not fit the rubric are retried once and recorded as invalid; `personae judge` adds verdicts to
an old run, DPO export pairs forks by them, and `replay --verify` re-derives them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SCENARIOS, base_scenario, cli, db_rows

import personae
from personae import RunLog
from personae.backends import GenerationRequest, ScriptedBackend, register_backend
from personae.judges import JudgeAgent, JudgePersona, Rubric
from personae.replay import fork_episode, verify_run

WriteScenario = Callable[..., Path]

GOOD = '{"rationale":"heard her","empathy":4,"helpfulness":2}'
OUT_OF_SCALE = '{"rationale":"too kind","empathy":9,"helpfulness":1}'
EMPATHY = {
    "id": "empathy_v1",
    "rationale": 80,
    "dimensions": [
        {"name": "empathy", "scale": [1, 5], "anchors": {1: "dismissive", 5: "names feelings"}},
        {"name": "helpfulness", "scale": [1, 5]},
    ],
}
CODES = {"id": "tone_v1", "codes": ["warm", "neutral", "cold"]}


def persona(description: str, **extra: Any) -> dict[str, Any]:
    return {"role": "persona", "persona": {"description": description, **extra}}


def rater(rubric: dict[str, Any] = EMPATHY, **spec: Any) -> dict[str, Any]:
    return {"role": "judge", "observes": ["helper"], "persona": {"rubric": rubric}, **spec}


def support(
    judges: dict[str, Any], replies: dict[str, list[str]] | None = None, **more: Any
) -> dict[str, Any]:
    """A helper (who opens) and a caller, with `judges` observing them."""
    data: dict[str, Any] = {
        "name": "support",
        "backend": "scripted",
        "seed": 7,
        "graph": {"kind": "dyadic", "opener": "helper", "max_turns": 6},
        "agents": {
            "helper": persona("A volunteer on a support line."),
            "caller": persona("A tenant with an eviction notice.", private_notes="lost a job"),
            **judges,
        },
    }
    if replies is not None:
        data["backend_options"] = {"replies": replies}
    data.update(more)
    return data


def run(write: WriteScenario, tmp_path: Path, data: dict[str, Any], **options: Any) -> Path:
    db = tmp_path / "run.db"
    result = personae.run(write(data), db=db, **options)
    assert result.failed == 0
    return db


def only_episode(db: Path) -> str:
    with RunLog(db) as log:
        (episode,) = [e["episode_id"] for e in log.episodes()]
    return episode


# -- live judges -------------------------------------------------------------------------------


def test_turn_judge_rates_every_line_of_the_agent_it_watches(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = run(write_scenario, tmp_path, support({"rater": rater()}, {"rater": [GOOD]}))
    episode = only_episode(db)
    rows = db_rows(db, "SELECT * FROM judgments ORDER BY turn_idx")
    assert [r["turn_idx"] for r in rows] == [0, 2, 4]  # the helper's lines, and only those
    for row in rows:
        turn = row["turn_idx"]
        assert row["judgment_id"] == f"{episode}:{turn}:rater"
        assert (row["episode_id"], row["judge"], row["rubric"]) == (episode, "rater", "empathy_v1")
        assert row["raw"] == GOOD
        assert json.loads(row["parsed_json"]) == json.loads(GOOD)
        assert (row["valid"], row["error"], row["score"]) == (1, None, 3.0)  # mean of 4 and 2
        assert row["call_id"] == f"{episode}-{turn:04d}-rater"
    calls = db_rows(
        db, "SELECT call_id, purpose, output, prompt FROM llm_calls WHERE agent = 'rater'"
    )
    assert {c["call_id"] for c in calls} == {r["call_id"] for r in rows}
    assert {(c["purpose"], c["output"]) for c in calls} == {("judge", GOOD)}
    last = next(c for c in calls if c["call_id"].endswith("0004-rater"))["prompt"]
    assert last.rstrip().endswith("Rate the last line, by Helper.\nRating (JSON):")
    assert "Helper: This is helper, turn 4." in last
    assert "- empathy (1 to 5) (1 = dismissive; 5 = names feelings)" in last
    # verdicts are not lines: no turn is the judge's, and no speaker's prompt holds a verdict
    assert db_rows(db, "SELECT count(*) AS n FROM turns WHERE agent = 'rater'")[0]["n"] == 0
    spoken = db_rows(db, "SELECT prompt FROM llm_calls WHERE agent != 'rater'")
    assert spoken and not any("heard her" in c["prompt"] for c in spoken)


def test_shipped_support_line_rates_every_helper_turn_on_scripted(tmp_path: Path) -> None:
    db = tmp_path / "support.db"
    result = personae.run("support_line", backend="scripted", db=db)
    assert (result.episodes, result.failed) == (2, 0)
    helper_turns = db_rows(db, "SELECT episode_id, idx FROM turns WHERE agent = 'helper'")
    verdicts = db_rows(db, "SELECT episode_id, turn_idx, valid, rubric FROM judgments")
    assert {(v["episode_id"], v["turn_idx"]) for v in verdicts} == {
        (t["episode_id"], t["idx"]) for t in helper_turns
    }
    assert len(verdicts) == 8 and all(v["valid"] and v["rubric"] == "empathy_v1" for v in verdicts)
    assert all(r.identical for r in verify_run(db))


def test_end_judge_rates_the_episode_once(write_scenario: WriteScenario, tmp_path: Path) -> None:
    judges = {"rater": rater(when="end", observes="all")}
    db = run(write_scenario, tmp_path, support(judges, {"rater": [GOOD]}))
    episode = only_episode(db)
    (row,) = db_rows(db, "SELECT * FROM judgments")
    assert row["turn_idx"] is None
    assert row["judgment_id"] == f"{episode}:end:rater"
    assert row["call_id"] == f"{episode}-0005-end-rater"
    assert (row["valid"], row["score"]) == (1, 3.0)
    (call,) = db_rows(db, "SELECT prompt FROM llm_calls WHERE agent = 'rater'")
    assert "Rate the whole conversation." in call["prompt"]
    assert "Caller: This is caller, turn 5." in call["prompt"]  # the whole episode


@pytest.mark.parametrize("render", ["transcript", "chat"])
def test_routed_verdicts_are_private_feedback_only_the_learner_sees(
    write_scenario: WriteScenario,
    tmp_path: Path,
    render: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data: dict[str, Any] = {
        "name": "lesson",
        "backend": "scripted",
        "render": render,
        "backend_options": {"replies": {"coach": ['{"rationale":"ask first","clarity":2}']}},
        "graph": {"kind": "dyadic", "opener": "tutor", "max_turns": 4},
        "agents": {
            "tutor": persona("A maths tutor."),
            "learner": persona("A student."),
            "coach": {
                "role": "judge",
                "observes": ["learner"],
                "route_to": ["learner"],
                "persona": {"rubric": {"id": "clarity", "dimensions": [{"name": "clarity"}]}},
            },
        },
    }
    db = run(write_scenario, tmp_path, data)
    episode = only_episode(db)
    feedback = "ask first (clarity 2/5)"
    turns = db_rows(db, "SELECT idx, agent, kind, text, audience_json FROM turns ORDER BY idx")
    assert [(t["agent"], t["kind"]) for t in turns] == [
        ("tutor", "line"),
        ("learner", "line"),
        ("coach", "feedback"),
        ("tutor", "line"),
        ("learner", "line"),
        ("coach", "feedback"),
    ]
    for t in turns:
        if t["kind"] == "feedback":
            assert (t["text"], json.loads(t["audience_json"])) == (feedback, ["learner"])
    assert len(db_rows(db, "SELECT judgment_id FROM judgments")) == 2
    calls = db_rows(
        db,
        "SELECT turn_idx, agent, coalesce(prompt, messages_json) AS prompt FROM llm_calls "
        "WHERE purpose = 'turn' ORDER BY turn_idx",
    )
    seen = {(c["agent"], c["turn_idx"]): "ask first" in c["prompt"] for c in calls}
    assert seen == {
        ("tutor", 0): False,
        ("learner", 1): False,  # before any feedback
        ("tutor", 3): False,  # never the tutor
        ("learner", 4): True,
    }
    # the same audience rule in show --as, sft export and replay
    code, out, _ = cli(["show", str(db), episode, "--as", "tutor"], capsys)
    assert code == 0 and "ask first" not in out
    code, out, _ = cli(["show", str(db), episode, "--as", "learner"], capsys)
    assert code == 0 and "(privately, to learner): ask first" in out
    records = {
        r["agent"]: json.dumps(r["messages"])
        for r in map(json.loads, _sft(db, "persona", capsys).splitlines())
    }
    assert "ask first" in records["learner"] and "ask first" not in records["tutor"]
    assert all(r.identical for r in verify_run(db))


def _sft(db: Path, role: str, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = cli(["export", str(db), "-f", "sft", "--role", role], capsys)
    assert code == 0, err
    return out.strip()


def test_a_judge_reads_the_lines_it_watches_even_private_ones_and_nothing_else_private(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    data = {
        "name": "whispers",
        "backend": "scripted",
        "graph": {
            "kind": "group",
            "policy": {"kind": "scripted", "order": ["ann", "bo", "cy"]},
            "max_turns": 3,
        },
        "agents": {
            "ann": {**persona("Whispers to Bo."), "audience": ["bo"]},
            "bo": persona("Talks to everyone."),
            "cy": persona("Talks to everyone."),
            "of_ann": {**rater(), "observes": ["ann"]},
            "of_cy": {**rater(), "observes": ["cy"]},
        },
    }
    db = run(write_scenario, tmp_path, data)
    ann = db_rows(db, "SELECT audience_json FROM turns WHERE agent = 'ann'")
    assert ann == [{"audience_json": '["bo"]'}]
    prompts = {
        c["agent"]: c["prompt"]
        for c in db_rows(db, "SELECT agent, prompt FROM llm_calls WHERE purpose = 'judge'")
    }
    assert "Ann: This is ann, turn 0." in prompts["of_ann"]  # the private line it rates
    assert "Bo: This is bo, turn 1." in prompts["of_cy"]
    assert "This is ann" not in prompts["of_cy"]  # a private line it does not watch
    assert all(r.identical for r in verify_run(db))


# -- replies that do not fit the rubric ---------------------------------------------------------


def test_a_reply_off_the_scale_is_retried_once_then_recorded_invalid(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    judges = {"rater": rater(route_to=["helper"])}
    db = run(write_scenario, tmp_path, support(judges, {"rater": [OUT_OF_SCALE]}))
    episode = only_episode(db)
    rows = db_rows(db, "SELECT * FROM judgments ORDER BY turn_idx")
    assert [r["turn_idx"] for r in rows] == [0, 2, 4]
    for row in rows:
        assert (row["valid"], row["parsed_json"], row["score"]) == (0, None, None)
        assert row["raw"] == OUT_OF_SCALE
        assert row["error"].startswith("empathy: ")
        assert row["call_id"] == f"{episode}-{row['turn_idx']:04d}-rater-r1"  # the retry
    calls = db_rows(
        db, "SELECT call_id, seed FROM llm_calls WHERE agent = 'rater' ORDER BY call_id"
    )
    assert [c["call_id"] for c in calls] == [
        f"{episode}-{t:04d}-rater{retry}" for t in (0, 2, 4) for retry in ("", "-r1")
    ]
    assert calls[0]["seed"] != calls[1]["seed"]
    # an invalid verdict is not routed: no feedback line
    assert db_rows(db, "SELECT count(*) AS n FROM turns WHERE kind = 'feedback'")[0]["n"] == 0
    code, out, _ = cli(["show", str(db), episode], capsys)
    assert code == 0 and "rater: invalid (empathy: " in out
    assert all(r.identical for r in verify_run(db))


def test_a_valid_retry_is_kept(write_scenario: WriteScenario, tmp_path: Path) -> None:
    db = run(write_scenario, tmp_path, support({"rater": rater()}, {"rater": [OUT_OF_SCALE, GOOD]}))
    episode = only_episode(db)
    rows = db_rows(
        db, "SELECT turn_idx, valid, raw, call_id, score FROM judgments ORDER BY turn_idx"
    )
    assert rows == [
        {
            "turn_idx": t,
            "valid": 1,
            "raw": GOOD,
            "call_id": f"{episode}-{t:04d}-rater-r1",
            "score": 3.0,
        }
        for t in (0, 2, 4)
    ]


def test_an_off_list_code_is_invalid() -> None:
    judge = JudgeAgent("tone", JudgePersona(rubric=Rubric.model_validate(CODES)))
    assert judge.parse(" neutral\n").parsed == {"code": "neutral"}
    verdict = judge.parse("lukewarm")
    assert (verdict.valid, verdict.parsed, verdict.score) == (False, None, None)
    assert verdict.error == "not one of the codes: 'lukewarm'"


# -- what the judge asks the engine for ---------------------------------------------------------


def test_requests_carry_a_bounded_json_schema_or_the_code_list(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    asked: list[GenerationRequest] = []

    def reply(request: GenerationRequest) -> str:
        if request.tags.get("purpose") == "judge":
            asked.append(request)
            return "neutral" if request.choices else GOOD
        return f"Line {request.tags['turn']}."

    judges = {"rater": rater(), "toner": rater(CODES, observes=["caller"])}
    db = run(write_scenario, tmp_path, support(judges), backend=ScriptedBackend(reply))
    scores = [r for r in asked if r.tags["agent"] == "rater"]
    codes = [r for r in asked if r.tags["agent"] == "toner"]
    assert len(scores) == 3 and len(codes) == 3
    for request in scores:
        schema = request.json_schema
        assert schema is not None and request.choices is None
        assert schema["required"] == ["rationale", "empathy", "helpfulness"]
        assert schema["additionalProperties"] is False
        assert schema["properties"]["rationale"]["maxLength"] == 80
        assert schema["properties"]["empathy"]["enum"] == [1, 2, 3, 4, 5]
    for request in codes:
        assert request.choices == ("warm", "neutral", "cold") and request.json_schema is None
    tone = db_rows(
        db, "SELECT turn_idx, parsed_json, valid, score FROM judgments WHERE judge = 'toner'"
    )
    assert tone == [
        {"turn_idx": t, "parsed_json": '{"code": "neutral"}', "valid": 1, "score": None}
        for t in (1, 3, 5)
    ]


# -- judging a finished run --------------------------------------------------------------------


@register_backend("judges-temperature")
def _temperature_backend(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """Each line says the temperature it was sampled at."""
    return ScriptedBackend(lambda r: f"Reply at temperature {r.temperature}.")


@register_backend("judges-temperature-rater")
def _rater_backend(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """A rater that scores the rated (last) line ten times the temperature it names."""

    def rate(request: GenerationRequest) -> str:
        prompt = request.rendered().split("Rate the last line")[0]
        found = re.findall(r"temperature ([0-9.]+)\.", prompt)
        return json.dumps({"rationale": "", "warmth": round(10 * float(found[-1]))})

    return ScriptedBackend(rate)


def judge_file(folder: Path, name: str = "warmth", **spec: Any) -> Path:
    data = {
        "name": name,
        "backend": "judges-temperature-rater",
        "judge": {
            "role": "judge",
            "observes": ["client"],
            "persona": {
                "rubric": {"id": "warmth_v1", "dimensions": [{"name": "warmth", "scale": [0, 20]}]}
            },
            **spec,
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_personae_judge_adds_verdicts_to_an_old_run_and_judging_again_replaces_them(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = run(write_scenario, tmp_path, base_scenario(backend="judges-temperature"))
    turns_before = db_rows(db, "SELECT * FROM turns ORDER BY id")
    spec = judge_file(tmp_path)
    for _ in range(2):
        code, out, err = cli(["judge", str(db), str(spec), "-q"], capsys)
        assert code == 0, err
        assert "3 judgments on 1 episodes, mean score 8.00" in out
        rows = db_rows(
            db, "SELECT turn_idx, judge, rubric, score, valid FROM judgments ORDER BY turn_idx"
        )
        assert rows == [
            {"turn_idx": t, "judge": "warmth", "rubric": "warmth_v1", "score": 8.0, "valid": 1}
            for t in (1, 3, 5)
        ]
        calls = db_rows(db, "SELECT call_id FROM llm_calls WHERE purpose = 'judge'")
        assert len(calls) == 3
    assert db_rows(db, "SELECT * FROM turns ORDER BY id") == turns_before
    # a verdict on the whole episode, next to the others
    end = judge_file(tmp_path, "overall", when="end")
    assert cli(["judge", str(db), str(end), "-q"], capsys)[0] == 0
    rows = db_rows(db, "SELECT judge, turn_idx FROM judgments WHERE judge = 'overall'")
    assert rows == [{"judge": "overall", "turn_idx": None}]
    assert len(db_rows(db, "SELECT judgment_id FROM judgments")) == 4
    # the run still re-executes identically: added verdicts are not the episode's own
    assert [r.identical for r in verify_run(db)] == [True]


def test_dpo_export_pairs_forks_by_the_scores_personae_judge_added(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = run(write_scenario, tmp_path, base_scenario(backend="judges-temperature"))
    parent = only_episode(db)
    for t in ("0.2", "1.5"):
        fork_episode(db, parent, 3, settings=[f"client.sampling.temperature={t}"])
    code, out, err = cli(["export", str(db), "-f", "dpo", "--role", "client"], capsys)
    assert (code, out) == (0, "")
    assert "without scores no pairs are made" in err
    assert cli(["judge", str(db), str(judge_file(tmp_path)), "-q"], capsys)[0] == 0
    code, out, err = cli(["export", str(db), "-f", "dpo", "--role", "client"], capsys)
    assert code == 0, err
    pairs = [json.loads(line) for line in out.strip().splitlines()]
    assert {(p["score_chosen"], p["score_rejected"]) for p in pairs} == {
        (15.0, 8.0),
        (15.0, 2.0),
        (8.0, 2.0),
    }
    best = next(p for p in pairs if (p["score_chosen"], p["score_rejected"]) == (15.0, 2.0))
    assert best["chosen"] == [{"role": "assistant", "content": "Reply at temperature 1.5."}]
    assert best["rejected"] == [{"role": "assistant", "content": "Reply at temperature 0.2."}]
    assert "3 preference pairs from 1 sibling-fork groups" in err
    assert all(r.identical for r in verify_run(db))
    # one dimension of the verdicts, or one judge's verdicts, rank the same way here
    by_dimension = ["export", str(db), "-f", "dpo", "--role", "client", "--score-key", "warmth"]
    code, out, _ = cli(by_dimension, capsys)
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, out, err = cli(
        ["export", str(db), "-f", "dpo", "--role", "client", "--judge", "x"], capsys
    )
    assert (code, out) == (0, "") and "0 preference pairs" in err


def test_personae_judge_on_the_shipped_scenario_judge_of_a_support_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the support-line scenario's own judge, lifted into a judge file, rates a run without it
    scenario = yaml.safe_load((SCENARIOS / "support_line.yaml").read_text(encoding="utf-8"))
    spec = {
        "name": "empathy_later",
        "backend": "scripted",
        "judge": scenario["agents"].pop("empathy_rater"),
    }
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(scenario), encoding="utf-8")
    (tmp_path / "judge.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    db = tmp_path / "run.db"
    personae.run(tmp_path / "scenario.yaml", backend="scripted", db=db)
    assert db_rows(db, "SELECT count(*) AS n FROM judgments")[0]["n"] == 0
    code, out, err = cli(["judge", str(db), str(tmp_path / "judge.yaml"), "-q"], capsys)
    assert code == 0, err
    assert "8 judgments on 2 episodes" in out
    helper = db_rows(db, "SELECT episode_id, idx FROM turns WHERE agent = 'helper'")
    verdicts = db_rows(
        db, "SELECT episode_id, turn_idx FROM judgments WHERE judge = 'empathy_later'"
    )
    assert sorted((v["episode_id"], v["turn_idx"]) for v in verdicts) == sorted(
        (t["episode_id"], t["idx"]) for t in helper
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"observes": ["clinet"]}, "clinet"),
        ({"observes": []}, "observes nobody"),
        ({"role": "judg"}, "did you mean 'judge'"),
        ({"persona": {"rubric": {"id": "r"}}}, "at least one dimension"),
    ],
    ids=["observes an absent agent", "observes nobody", "unknown judge", "empty rubric"],
)
def test_bad_judge_files_are_one_line_and_change_nothing(
    change: dict[str, Any],
    expected: str,
    write_scenario: WriteScenario,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = run(write_scenario, tmp_path, base_scenario())
    before = db.read_bytes()
    code, out, err = cli(["judge", str(db), str(judge_file(tmp_path, **change)), "-q"], capsys)
    assert code == 2, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and expected in line
    assert "Traceback" not in out + err
    assert db.read_bytes() == before
