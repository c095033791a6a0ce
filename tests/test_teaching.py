"""Teacher-student budget experiments: data loading, intervention functions, the teaching graph
and the mechanics of the study, proven with a simulated student whose ground truth is known."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import db_rows

from personae.backends import GenerationRequest, GenerationResult, TokenLogprob
from personae.errors import UserError
from personae.experiments import (
    Item,
    ItemEstimate,
    SimulatedStudentBackend,
    TeachingResult,
    TeachingScenario,
    arun_teaching,
    budget_items,
    explained_at,
    generated_items,
    get_intervention,
    load_items,
    load_teaching_scenario,
    numeric_options,
    read_answer,
    register_intervention,
    score_curves,
)
from personae.experiments._spec import check_scenario

REPO = Path(__file__).resolve().parents[1]
GSM8K = Path(__file__).parents[1].parent / "shared" / "data" / "gsm8k"
TEST_IDS = [f"gen-test-{i:03d}" for i in range(200)]
BUDGETS = [round(0.1 * i, 1) for i in range(11)]


def scenario(**overrides: Any) -> TeachingScenario:
    """A small teaching scenario on the generated data (no observation, no demonstrations by
    default, so runs are fast); `overrides` replace top-level keys."""
    data: dict[str, Any] = {
        "name": "unit_teaching",
        "backend": "simulated",
        "seeds": [0],
        "data": {"items": 20, "observe": 0},
        "budgets": [0.0, 0.5, 1.0],
        "functions": ["random", "expected_utility"],
        "student": {"demos": 0},
        "teacher": {"explanation_demos": 0, "mental_model_demos": 0, "explain_toward": "gold"},
        "bootstrap": {"resamples": 200},
    }
    data.update(overrides)
    spec = TeachingScenario.model_validate(data)
    spec.base_dir = REPO / "scenarios"
    check_scenario(spec)
    return spec


def spread(n: int, seed: int, low: float = 0.05, high: float = 0.95) -> dict[str, float]:
    """Distinct per-item probabilities (so rankings have no ties)."""
    rng = random.Random(seed)
    values = rng.sample([round(low + (high - low) * i / 997, 6) for i in range(998)], n)
    return dict(zip(TEST_IDS[:n], values, strict=True))


async def run(
    tmp_path: Path, spec: TeachingScenario, backend: Any, name: str = "run"
) -> TeachingResult:
    return await arun_teaching(spec, db=tmp_path / f"{name}.db", backend=backend)


def explained(
    result: TeachingResult, seed: int, style: str, function: str, budget: float
) -> set[str]:
    ranking = result.rankings[seed][(style, function)]
    return explained_at(ranking, result.outcomes[seed][style].n_items, budget)


# -- data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_test() -> list[Item]:
    if not (GSM8K / "test.jsonl").is_file():
        pytest.skip(f"GSM8K data not found at {GSM8K} (shared/data/gsm8k next to the repo)")
    return load_items(GSM8K / "test.jsonl")


def test_gsm8k_solutions_become_multiple_choice_items(gsm8k_test: list[Item]) -> None:
    assert len(gsm8k_test) == 1319
    first = gsm8k_test[0]
    assert first.question.startswith("Janet")
    assert first.gold == "18"
    assert "9" in first.options  # the intermediate result "9 eggs" is a distractor
    assert first.explanation and "<<" not in first.explanation and "####" not in first.explanation
    assert "16 - 3 - 4 = 9" in first.explanation
    raw = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()]
    for item, record in zip(gsm8k_test, raw, strict=True):
        assert len(item.options) == 4 and len(set(item.options)) == 4
        final = record["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert float(item.gold) == float(final)
    positions = {item.answer for item in gsm8k_test}
    assert positions == {0, 1, 2, 3}  # the gold option is not always in the same place


def test_gsm8k_train_split_loads_and_is_stable() -> None:
    if not (GSM8K / "train_first200.jsonl").is_file():
        pytest.skip(f"GSM8K data not found at {GSM8K}")
    once = load_items(GSM8K / "train_first200.jsonl")
    again = load_items(GSM8K / "train_first200.jsonl", limit=50)
    assert len(once) == 200 and once[:50] == again
    assert len({i.id for i in once}) == 200


def test_numeric_options_are_deterministic_and_plausible() -> None:
    from decimal import Decimal

    options, gold = numeric_options("q1", Decimal(40), [Decimal(8), Decimal(40), Decimal(32)])
    assert options[gold] == "40"
    assert {"8", "32"} <= set(options)  # intermediate results first
    assert numeric_options("q1", Decimal(40), [Decimal(8), Decimal(32)]) == (options, gold)
    fractional, g = numeric_options("q2", Decimal("2.5"))
    assert fractional[g] == "2.5" and len(set(fractional)) == 4


def test_jsonl_records_in_every_supported_shape(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    records = [
        {
            "id": "mc",
            "question": "Pick B",
            "options": ["x", "y", "z"],
            "answer": "B",
            "explanation": "Because.\n It is y.",
        },
        {"question": "Index?", "options": "red|green", "answer": 1},
        {"question": "Text?", "options": ["cat", "dog"], "answer": "dog"},
        {"qid": "sqa", "question": "Is it wet?", "answer": True, "facts": ["Water is wet."]},
        {"question": "Yes or no?", "answer": "no"},
        {"question": "How many?", "answer": 12},
        {"question": "GSM?", "answer": "2+2=<<2+2=4>>4 apples\n#### 4"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    items = load_items(path)
    assert [i.id for i in items][:4] == ["mc", "mixed-2", "mixed-3", "sqa"]
    assert items[0].gold == "y" and items[0].explanation == "Because. It is y."
    assert items[1].gold == "green"
    assert items[2].gold == "dog"
    assert items[3].options == ("yes", "no") and items[3].gold == "yes"
    assert items[3].explanation == "Water is wet."
    assert items[4].gold == "no"
    assert items[5].gold == "12" and len(items[5].options) == 4
    assert items[6].gold == "4" and items[6].explanation == "2+2=4 apples"


def test_csv_items(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "id,question,options,answer,explanation\nq1,Two plus two?,3|4|5,4,Count.\n"
        "q2,Is ice cold?,,yes,\n"
    )
    q1, q2 = load_items(path)
    assert (q1.id, q1.gold, q1.options, q1.explanation) == ("q1", "4", ("3", "4", "5"), "Count.")
    assert (q2.gold, q2.explanation) == ("yes", None)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.jsonl",
            '{"question": "a", "answer": 1}\n{"question": "b", "answ\n',
            r"bad\.jsonl:2: malformed JSON",
        ),
        (
            "noq.jsonl",
            '{"question": "a", "answer": 1}\n\n{"answer": 3}\n',
            r"noq\.jsonl:3: bad item: missing 'question'",
        ),
        (
            "range.jsonl",
            '{"question": "a", "options": ["x", "y"], "answer": "D"}\n',
            r"range\.jsonl:1: .*out of range",
        ),
        (
            "dup.jsonl",
            '{"id": "a", "question": "a", "answer": 1}\n'
            '{"id": "a", "question": "b", "answer": 2}\n',
            r"dup\.jsonl:2: duplicate item id",
        ),
        ("list.jsonl", "[1, 2]\n", r"list\.jsonl:1: a JSONL line must be a JSON object"),
        ("empty.jsonl", "\n", r"dataset has no items"),
        ("data.txt", "question,answer\n", r"unsupported dataset format"),
    ],
)
def test_bad_dataset_files_are_one_line_user_errors(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message) as caught:
        load_items(path)
    assert "\n" not in str(caught.value)


def test_missing_dataset_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dataset file not found"):
        load_items(tmp_path / "nope.jsonl")


def test_generated_dataset_is_deterministic_and_correct() -> None:
    items = generated_items(60)
    assert items == generated_items(60) and items[:30] == generated_items(30)
    train = generated_items(40, "train")
    assert not {i.id for i in items} & {i.id for i in train}
    assert {len(i.options) for i in items} == {2, 4}
    for item in items:
        assert item.explanation
        if len(item.options) == 4:  # the worked solution's last result is the gold number
            assert re.findall(r"= \$?(\d+)", item.explanation)[-1] == item.gold


# -- confidence and intervention functions ---------------------------------------------------


def test_confidence_comes_from_the_first_tokens_logprobs() -> None:
    letters = ("A", "B", "C", "D")
    top = {"D": -1.1, "B": -1.2, "C": -1.7, "E": -5.6, "1": -6.6}  # llama.cpp, before grammar
    result = GenerationResult(text="D", logprobs=(TokenLogprob("D", -1.1, top),))
    answer = read_answer(result, letters)
    assert answer.choice == 3 and answer.from_logprobs
    assert math.isclose(sum(answer.probs), 1.0)
    assert answer.probs[3] > answer.probs[1] > answer.probs[2] > answer.probs[0]
    assert math.isclose(answer.probs[0] / answer.probs[3], math.exp(-6.6 + 1.1))  # floor
    plain = read_answer(GenerationResult(text="B"), letters)
    assert plain.probs == (0.0, 1.0, 0.0, 0.0) and not plain.from_logprobs
    assert read_answer(GenerationResult(text="?"), letters).choice is None


def test_budgets_take_the_floor_of_b_times_n() -> None:
    assert budget_items(30, 0.6) == 18
    assert budget_items(100, 0.29) == 29
    assert budget_items(7, 0.5) == 3
    assert budget_items(10, 1.0) == 10 and budget_items(10, 0.0) == 0


def test_unknown_intervention_function_suggests_a_name() -> None:
    with pytest.raises(UserError, match="did you mean 'expected_utility'"):
        get_intervention("expected_utilty")


async def test_users_register_their_own_intervention_function(tmp_path: Path) -> None:
    @register_intervention("even_items_first")
    def even_first(items: Sequence[ItemEstimate], rng: random.Random) -> dict[str, float]:
        """Explain even-numbered items, lowest first."""
        return {e.item_id: -e.index for e in items if e.index % 2 == 0}

    spec = scenario(
        functions=["even_items_first"], budgets=[0.2, 1.0], data={"items": 10, "observe": 0}
    )
    result = await run(tmp_path, spec, SimulatedStudentBackend())
    assert explained(result, 0, "unpersonalized", "even_items_first", 0.2) == {
        "gen-test-000",
        "gen-test-002",
    }
    # items without a score are never explained, whatever the budget
    assert explained(result, 0, "unpersonalized", "even_items_first", 1.0) == {
        f"gen-test-{i:03d}" for i in (0, 2, 4, 6, 8)
    }


# -- the mechanics, with a simulated student -------------------------------------------------


async def test_utility_functions_pick_exactly_the_highest_utility_items_at_every_budget(
    tmp_path: Path,
) -> None:
    p_pre, p_post = spread(20, 1), spread(20, 2)
    utility = {i: p_post[i] - p_pre[i] for i in p_pre}
    best = sorted(utility, key=lambda i: -utility[i])
    sim = SimulatedStudentBackend(p_pre=p_pre, p_post=p_post)  # a perfect mental model
    spec = scenario(seeds=[0, 1], budgets=BUDGETS, functions=["expected_utility", "true_utility"])
    result = await run(tmp_path, spec, sim)
    for seed in (0, 1):
        for b in BUDGETS:
            top = set(best[: budget_items(20, b)])
            assert explained(result, seed, "unpersonalized", "true_utility", b) == top
            assert explained(result, seed, "unpersonalized", "expected_utility", b) == top
    # the same decisions are in the interventions table
    rows = db_rows(
        tmp_path / "run.db",
        "SELECT item_id, budget, decided, utility, c_pre, c_post "
        "FROM interventions WHERE function = 'expected_utility' AND seed = 0",
    )
    assert len(rows) == 20 * len(BUDGETS)
    for row in rows:
        assert bool(row["decided"]) == (row["item_id"] in best[: budget_items(20, row["budget"])])
        assert row["c_pre"] == pytest.approx(p_pre[row["item_id"]], abs=1e-9)
        assert row["utility"] == pytest.approx(utility[row["item_id"]], abs=1e-9)


async def test_random_accuracy_rises_linearly_with_budget_in_expectation(tmp_path: Path) -> None:
    p_pre, p_post = spread(20, 3), spread(20, 4)
    spec = scenario(seeds=list(range(30)), budgets=BUDGETS, functions=["random"])
    result = await run(tmp_path, spec, SimulatedStudentBackend(p_pre=p_pre, p_post=p_post))
    (curve,) = score_curves(result.outcomes, result.rankings, spec.arms(), BUDGETS, expected=True)
    pre, post = np.mean(list(p_pre.values())), np.mean(list(p_post.values()))
    linear = [pre + budget_items(20, b) / 20 * (post - pre) for b in BUDGETS]
    assert curve.accuracy[0] == pytest.approx(pre) and curve.accuracy[-1] == pytest.approx(post)
    assert np.max(np.abs(np.array(curve.accuracy) - linear)) < 0.02  # 30 random rankings
    # and exactly linear in the limit: the random function averaged over many rankings
    estimates = [
        ItemEstimate(i, n, 0.5, 0.5, p_pre[i], False, 0.5, 0.5) for n, i in enumerate(TEST_IDS[:20])
    ]
    outcomes = result.outcomes[0]["unpersonalized"]
    mean = np.zeros(len(BUDGETS))
    for k in range(1000):
        ranking = get_intervention("random").rank(estimates, random.Random(k))
        mean += [
            np.mean(outcomes.per_item(explained_at(ranking, 20, b), expected=True)) for b in BUDGETS
        ]
    assert np.max(np.abs(mean / 1000 - linear)) < 0.006


async def test_expected_utility_beats_random_at_low_budgets(tmp_path: Path) -> None:
    # explanations help some items a lot and hurt others; the teacher's model is noisy
    p_pre, p_post = spread(20, 5, 0.1, 0.9), spread(20, 6, 0.1, 0.9)
    sim = SimulatedStudentBackend(p_pre=p_pre, p_post=p_post, mental_model_noise=0.1, seed=3)
    spec = scenario(
        seeds=list(range(10)), budgets=[0.0, 0.2, 0.4], functions=["random", "expected_utility"]
    )
    result = await run(tmp_path, spec, sim)
    realized = {c.function: c for c in result.curves}
    expected = {
        c.function: c
        for c in score_curves(
            result.outcomes, result.rankings, spec.arms(), spec.budgets, expected=True
        )
    }
    for b in (0.2, 0.4):
        assert expected["expected_utility"].at(b) > expected["random"].at(b)
        assert realized["expected_utility"].at(b) >= realized["random"].at(b)
    assert realized["expected_utility"].at(0.0) == realized["random"].at(0.0)


async def test_budget_zero_is_no_teacher_and_budget_one_is_always_explain(tmp_path: Path) -> None:
    p_pre, p_post = spread(20, 7), spread(20, 8)
    functions = [
        "random",
        "teacher_confidence",
        "least_student_confidence",
        "expected_utility",
        "pre_utility",
        "post_utility",
        "true_utility",
        "oracle",
    ]
    spec = scenario(seeds=[0, 1], budgets=[0.0, 1.0], functions=functions)
    result = await run(tmp_path, spec, SimulatedStudentBackend(p_pre=p_pre, p_post=p_post))
    # no teacher at all: only budget 0, so nothing is ever explained or answered again
    alone_spec = scenario(seeds=[0, 1], budgets=[0.0], functions=["random", "expected_utility"])
    alone = await run(
        tmp_path, alone_spec, SimulatedStudentBackend(p_pre=p_pre, p_post=p_post), "alone"
    )
    steps = [
        r["step"]
        for r in db_rows(
            tmp_path / "alone.db", "SELECT json_extract(hidden_json, '$.step') AS step FROM turns"
        )
    ]
    assert "explain" not in steps and "student_post" not in steps
    for seed in (0, 1):
        on_its_own = np.nanmean(alone.outcomes[seed]["unpersonalized"].pre_correct)
        outcomes = result.outcomes[seed]["unpersonalized"]
        assert np.nanmean(outcomes.pre_correct) == on_its_own  # the same student answers
    no_teacher = np.mean(
        [np.nanmean(alone.outcomes[s]["unpersonalized"].pre_correct) for s in (0, 1)]
    )
    always = np.mean(
        [np.nanmean(result.outcomes[s]["unpersonalized"].post_correct) for s in (0, 1)]
    )
    for curve in result.curves:
        assert curve.at(0.0) == pytest.approx(no_teacher)
        if curve.function != "oracle":  # every other function ranks every item
            assert curve.at(1.0) == pytest.approx(always)


async def test_oracle_explains_exactly_the_items_the_student_gets_wrong(tmp_path: Path) -> None:
    spec = scenario(seeds=[0, 1, 2], budgets=[0.1, 0.5, 1.0], functions=["oracle"])
    result = await run(tmp_path, spec, SimulatedStudentBackend(p_pre=spread(20, 9), p_post=0.9))
    for seed in (0, 1, 2):
        outcomes = result.outcomes[seed]["unpersonalized"]
        wrong = {i for i, c in zip(outcomes.item_ids, outcomes.pre_correct, strict=True) if c == 0}
        assert explained(result, seed, "unpersonalized", "oracle", 1.0) == wrong
        assert explained(result, seed, "unpersonalized", "oracle", 0.1) <= wrong
        assert len(explained(result, seed, "unpersonalized", "oracle", 0.1)) == min(2, len(wrong))


async def test_misaligned_teacher_drives_accuracy_down(tmp_path: Path) -> None:
    spec = scenario(
        seeds=[0, 1, 2], budgets=[0.0, 0.2, 0.6, 1.0], functions=["random"], misaligned=True
    )
    result = await run(tmp_path, spec, SimulatedStudentBackend(p_pre=0.7, p_post=0.95))
    bad = result.curve("misaligned")
    helpful = result.curve("random")
    assert bad.at(0.0) == helpful.at(0.0) > 0.5
    assert bad.at(0.0) > bad.at(0.2) > bad.at(0.6) > bad.at(1.0)
    assert bad.at(1.0) < 0.15  # below chance (1/4 and 1/2 options): it follows wrong answers
    assert helpful.at(1.0) > 0.85
    # the misleading explanations argue for a wrong option
    rows = db_rows(
        tmp_path / "run.db",
        "SELECT text, hidden_json FROM turns WHERE json_extract(hidden_json, '$.style') = "
        "'misaligned' AND json_extract(hidden_json, '$.step') = 'explain'",
    )
    items = {i.id: i for i in generated_items(20)}
    assert len(rows) == 3 * 20  # budget 1 explains every item, in every seed
    for row in rows:
        wrong = json.loads(row["hidden_json"])
        item = items[wrong["item_id"]]
        assert wrong["target"] != "ABCD"[item.answer]
        assert row["text"].endswith(
            f"So the answer is ({wrong['target']}) {item.options['ABCD'.index(wrong['target'])]}."
        )


async def test_the_student_never_sees_intervention_data(tmp_path: Path) -> None:
    spec = scenario(
        seeds=[0],
        budgets=[0.0, 0.3, 1.0],
        explanations=["unpersonalized", "personalized"],
        functions=["expected_utility", "least_student_confidence", "true_utility"],
        misaligned=True,
        data={"items": 12, "observe": 4},
        student={"demos": 2},
        teacher={"explanation_demos": 2, "mental_model_demos": 2},
    )
    sim = SimulatedStudentBackend(p_pre=spread(12, 10), p_post=spread(12, 11))
    await run(tmp_path, spec, sim)
    student = [r for r in sim.requests if r.tags["role"] == "student"]
    assert student and all(r.tags["agent"] == "student" for r in student)
    estimates = db_rows(
        tmp_path / "run.db", "SELECT c_pre, c_post, utility, score FROM interventions"
    )
    numbers = {f"{v:.4f}"[:6] for row in estimates for v in row.values() if v not in (None, 0, 1)}
    for request in student:
        prompt = request.rendered().lower()
        for word in (
            "utility",
            "budget",
            "rank",
            "intervention",
            "confidence",
            "predict",
            "simulat",
        ):
            assert word not in prompt
        assert not any(n in prompt for n in numbers if len(n) >= 5)
    # the student's prompts do not depend on budgets or functions at all
    other = scenario(
        **{
            **spec.model_dump(exclude={"budgets", "functions"}),
            "budgets": [1.0],
            "functions": ["random"],
        }
    )
    sim2 = SimulatedStudentBackend(p_pre=spread(12, 10), p_post=spread(12, 11))
    await run(tmp_path, other, sim2, "other")

    def prompts(s: SimulatedStudentBackend) -> set[tuple[str, str, str]]:
        return {
            (r.tags["item_id"], r.tags["step"], r.rendered())
            for r in s.requests
            if r.tags["role"] == "student"
        }

    assert prompts(sim) == prompts(sim2)
    # the teacher's private steps are hidden: their visible text is a stage direction
    private = db_rows(
        tmp_path / "run.db", "SELECT text FROM turns WHERE json_extract(hidden_json, '$.private')"
    )
    assert private and all(r["text"].startswith("[") for r in private)


async def test_every_step_is_logged_and_every_decision_recorded(tmp_path: Path) -> None:
    spec = scenario(
        seeds=[0, 1],
        budgets=[0.0, 0.25, 1.0],
        functions=["random", "true_utility"],
        data={"items": 8, "observe": 2},
        student={"demos": 1},
    )
    await run(tmp_path, spec, SimulatedStudentBackend(p_pre=0.5, p_post=0.8))
    db = tmp_path / "run.db"
    (runrow,) = db_rows(db, "SELECT * FROM runs")
    assert runrow["status"] == "complete"
    summary = json.loads(runrow["summary_json"])
    assert [c["function"] for c in summary["curves"]] == ["random", "true_utility"]
    episodes = db_rows(db, "SELECT * FROM episodes ORDER BY idx")
    # per seed: 2 observations, then every item assessed, then every item taught
    assert [e["idx"] for e in episodes] == list(range(2 * (2 + 8 + 8)))
    assert [e["stage"] for e in episodes[:18]] == [0] * 2 + [1] * 8 + [2] * 8
    assert {e["status"] for e in episodes} == {"complete"}

    def steps_of(kind: str) -> tuple[str, list[str]]:
        episode = next(e for e in episodes if f'"kind": "{kind}"' in e["condition_json"])
        rows = db_rows(
            db, "SELECT hidden_json FROM turns WHERE episode_id = ? ORDER BY idx",
            episode["episode_id"],
        )  # fmt: skip
        return episode["episode_id"], [json.loads(t["hidden_json"])["step"] for t in rows]

    assess_id, assess = steps_of("assess")
    teach_id, teach = steps_of("teach")
    assert assess == ["student_pre", "teacher_answer", "draft", "simulate_pre", "simulate_post"]
    assert teach == ["decide", "explain", "student_post"]
    for episode_id, n in ((assess_id, 5), (teach_id, 1)):
        calls = db_rows(
            db,
            "SELECT t.call_id FROM turns t JOIN llm_calls c USING (call_id) WHERE t.episode_id = ?",
            episode_id,
        )
        assert len(calls) == n  # every model step has its call logged
    # the teacher's private steps are heard by the teacher alone
    private = db_rows(db, "SELECT audience_json FROM turns WHERE text LIKE '[%'")
    assert private and {r["audience_json"] for r in private} == {'["teacher"]'}
    rows = db_rows(db, "SELECT * FROM interventions")
    assert len(rows) == 2 * 8 * 2 * 3  # seeds x items x functions x budgets
    assert {r["hindsight"] for r in rows if r["function"] == "true_utility"} == {1}
    for seed in (0, 1):
        for function in ("random", "true_utility"):
            for budget, k in ((0.0, 0), (0.25, 2), (1.0, 8)):
                chosen = [
                    r
                    for r in rows
                    if (r["seed"], r["function"], r["budget"]) == (seed, function, budget)
                ]
                assert len(chosen) == 8 and sum(r["decided"] for r in chosen) == k
                assert {r["budget_items"] for r in chosen} == {k}
                assert max(r["budget_used"] for r in chosen) == k


async def test_personalized_explanations_use_the_demonstrations_that_helped_this_student(
    tmp_path: Path,
) -> None:
    spec = scenario(
        explanations=["unpersonalized", "personalized"],
        functions=["random"],
        data={"items": 4, "observe": 6},
        student={"demos": 0},
        teacher={"explanation_demos": 2, "mental_model_demos": 3, "explain_toward": "gold"},
    )
    train = {i.id: i for i in generated_items(40, "train")}
    gains = {i: round(0.013 * k, 3) for k, i in enumerate(reversed(list(train)))}  # distinct
    p_pre = {i: 0.2 for i in train}
    p_post = {i: 0.2 + g for i, g in gains.items()}
    sim = SimulatedStudentBackend(p_pre=p_pre, p_post=p_post)
    await run(tmp_path, spec, sim)
    observed = [
        r.tags["item_id"]
        for r in sim.requests
        if r.tags["step"] == "student_pre" and r.tags["item_id"] in train
    ]
    assert len(observed) == 6
    helped = sorted(observed, key=lambda i: -gains[i])[:2]
    explain = [
        r
        for r in sim.requests
        if r.tags["step"] == "explain" and r.tags["item_id"].startswith("gen-test")
    ]
    personal = next(r.rendered() for r in explain if r.tags["style"] == "personalized")
    plain = next(r.rendered() for r in explain if r.tags["style"] == "unpersonalized")
    for item_id in helped:
        assert train[item_id].question in personal and train[item_id].question not in plain
    for item_id in set(observed) - set(helped):
        assert train[item_id].question not in personal
    # the mental model sees the student's own observed answers, alone and with explanations
    simulate = next(r.rendered() for r in sim.requests if r.tags["step"] == "simulate_pre")
    assert simulate.count("The student answered: (") == 3 + 3 + 1  # alone, explained, the query


async def test_multi_turn_uses_explained_items_as_demonstrations(tmp_path: Path) -> None:
    spec = scenario(
        budgets=[0.0, 0.5],
        functions=["random", "expected_utility"],
        multi_turn={"functions": ["random", "expected_utility"], "budgets": [0.3, 0.5], "demos": 2},
    )
    # alone the student is always wrong; with explained demonstrations always right
    sim = SimulatedStudentBackend(p_pre=0.0, p_post=1.0, p_demo=1.0)
    result = await run(tmp_path, spec, sim)
    assert len(result.multi_turn) == 4
    for row in result.multi_turn:
        unexplained = 20 - budget_items(20, row.budget)
        chosen = explained(result, 0, "unpersonalized", row.function, row.budget)
        first = min(int(i[-3:]) for i in chosen)  # items before it have no demonstrations
        assert row.baseline == 0.0 and row.n_items == unexplained
        assert row.accuracy == pytest.approx((unexplained - first) / unexplained)
    turns = [r for r in sim.requests if r.tags["step"] == "student_multi_turn"]
    assert turns
    for request in turns:
        prompt = request.rendered()
        assert "Teacher's explanation:" in prompt
        assert prompt.count("Question:") <= 3  # at most `demos` demonstrations + the question
    # each pass asks only about items its function did not explain, with earlier explained ones
    passes = db_rows(
        tmp_path / "run.db",
        "SELECT episode_id, condition_json FROM episodes WHERE condition_json LIKE '%multi_turn%'",
    )
    assert len(passes) == 4
    order = {f"gen-test-{i:03d}": i for i in range(20)}
    for p in passes:
        cond = json.loads(p["condition_json"])["teaching"]
        chosen = explained(result, 0, "unpersonalized", cond["function"], cond["budget"])
        for t in db_rows(
            tmp_path / "run.db",
            "SELECT hidden_json FROM turns WHERE episode_id = ?",
            p["episode_id"],
        ):
            hidden = json.loads(t["hidden_json"])
            assert hidden["item_id"] not in chosen
            assert set(hidden["demos"]) <= chosen
            assert all(order[d] < order[hidden["item_id"]] for d in hidden["demos"])


async def test_a_failing_item_does_not_stop_or_block_the_run(tmp_path: Path) -> None:
    class Flaky(SimulatedStudentBackend):
        async def generate(self, request: GenerationRequest) -> GenerationResult:
            item, step = request.tags.get("item_id"), request.tags.get("step")
            if (item, step) in {
                ("gen-test-002", "teacher_answer"),
                ("gen-test-005", "student_post"),
            }:
                raise RuntimeError("engine hiccup")
            return await super().generate(request)

    spec = scenario(data={"items": 8, "observe": 0}, budgets=[0.0, 0.5, 1.0])
    result = await run(tmp_path, spec, Flaky(p_pre=0.5, p_post=0.9))
    assert result.failed_items == 2
    failed = db_rows(tmp_path / "run.db", "SELECT error FROM episodes WHERE status = 'failed'")
    assert len(failed) == 2 and all("engine hiccup" in f["error"] for f in failed)
    outcomes = result.outcomes[0]["unpersonalized"]
    assert outcomes.n_items == 7  # gen-test-002 failed before the ranking
    assert np.isnan(outcomes.pre_correct[2]) and np.isnan(outcomes.pre_correct[5])
    assert all(not math.isnan(a) for c in result.curves for a in c.accuracy)


async def test_rerunning_into_the_same_database_resumes_and_gives_the_same_tables(
    tmp_path: Path,
) -> None:
    spec = scenario(data={"items": 6, "observe": 2}, student={"demos": 1})
    first = await run(tmp_path, spec, SimulatedStudentBackend(p_pre=0.4, p_post=0.9))
    sim = SimulatedStudentBackend(p_pre=0.4, p_post=0.9)
    again = await run(tmp_path, spec, sim)
    assert sim.requests == []  # every episode was complete: nothing ran again
    assert [c.accuracy for c in again.curves] == [c.accuracy for c in first.curves]
    runs = db_rows(tmp_path / "run.db", "SELECT status FROM runs")
    assert [r["status"] for r in runs] == ["complete", "complete"]


# -- scenario files and the CLI --------------------------------------------------------------


def test_shipped_scenario_is_valid() -> None:
    from personae.experiments import load_data

    spec = load_teaching_scenario(REPO / "scenarios" / "teaching_budget.yaml")
    assert spec.budgets == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and len(spec.seeds) == 2
    assert {"random", "expected_utility", "true_utility", "oracle"} <= set(spec.functions)
    test, pool = load_data(spec)
    assert len(test) == 30 and len(pool) >= 12


async def test_shipped_scenario_runs_on_the_simulated_student(tmp_path: Path) -> None:
    # the embedded backend's options (n_parallel, ...) do not go to another backend kind
    result = await arun_teaching(
        "teaching_budget", backend="simulated", items=6, seeds=[3], db=tmp_path / "s.db"
    )
    assert result.failed_items == 0 and len(result.curves) == 2 * 8 + 1
    assert [r.budget for r in result.multi_turn] == [0.2, 0.4, 0.2, 0.4]


def test_personae_run_points_teaching_scenarios_to_the_experiment_command() -> None:
    from personae.scenario import load_scenario

    with pytest.raises(UserError, match="personae experiment teaching"):
        load_scenario(REPO / "scenarios" / "teaching_budget.yaml")


def write_yaml(tmp_path: Path, data: dict[str, Any], name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


SMALL = {
    "name": "cli_teaching",
    "backend": "simulated",
    "backend_options": {"p_pre": 0.4, "p_post": 0.9},
    "data": {"items": 6, "observe": 2},
    "budgets": [0, 0.5, 1],
    "functions": ["random", "expected_utility", "oracle"],
    "misaligned": True,
    "student": {"demos": 1},
    "teacher": {"explanation_demos": 1, "mental_model_demos": 2},
}


def test_cli_prints_the_table_and_saves_the_plot(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from personae.cli import app

    db, png = tmp_path / "t.db", tmp_path / "curves.png"
    path = write_yaml(tmp_path, SMALL)
    out = CliRunner().invoke(
        app,
        [
            "experiment",
            "teaching",
            str(path),
            "--db",
            str(db),
            "--seeds",
            "0,1",
            "--plot",
            str(png),
            "-q",
        ],
    )
    assert out.exit_code == 0, out.output
    text = out.stdout
    for label in ("random", "expected_utility", "oracle", "misaligned", "0%", "50%", "100%"):
        assert label in text
    assert "2 seeds" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["seed"] for r in db_rows(db, "SELECT DISTINCT seed FROM interventions")} == {0, 1}


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the console entry point; assert exit code 2 and return the single stderr line."""
    from personae.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"functions": ["random", "expected_utilty"]},
            "unknown intervention function 'expected_utilty'",
        ),
        ({"budgets": [0, 1.5]}, "bad value for 'budgets.1'"),
        ({"data": {"test": "missing.jsonl"}}, "dataset file not found"),
        ({"data": {"test": "bad.jsonl", "demos": "generated"}}, r"bad\.jsonl:2: malformed JSON"),
        (
            {"teacher": {"explain_towards": "gold"}},
            "unknown key 'teacher.explain_towards' — did you mean 'explain_toward'",
        ),
        ({"backend": "simulatd"}, "unknown backend 'simulatd'"),
        ({"student": {"role": "teacher"}}, "role 'teacher' is not a student role"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, change: dict[str, Any], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": 1}\n{"question": \n')
    path = write_yaml(tmp_path, {**SMALL, **change})
    db = tmp_path / "never.db"
    line = cli_error(["experiment", "teaching", str(path), "--db", str(db)], capsys)
    assert re.search(message, line), line
    assert not db.exists()


def test_bad_seeds_and_plot_options_are_user_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path, SMALL)
    assert "bad seed 'x'" in cli_error(
        ["experiment", "teaching", str(path), "--seeds", "0,x"], capsys
    )
    line = cli_error(
        ["experiment", "teaching", str(path), "--plot", str(tmp_path / "c.txt")], capsys
    )
    assert "unsupported plot format" in line


# -- the real model --------------------------------------------------------------------------


@pytest.mark.model
def test_teaching_end_to_end_on_the_embedded_model(tmp_path: Path) -> None:
    from personae.experiments import run_teaching

    spec = scenario(
        backend="embedded?n_parallel=4&ctx_per_slot=2048",
        budgets=[0.0, 1.0],
        functions=["random", "expected_utility"],
        data={"test": "generated", "items": 6, "observe": 2},
        student={"demos": 2},
        teacher={
            "explanation_demos": 2,
            "mental_model_demos": 2,
            "explain_toward": "gold",
            "sampling": {"temperature": 0.7, "max_tokens": 16},
        },
    )
    db = tmp_path / "real.db"
    result = run_teaching(spec, db=db)
    assert result.failed_items == 0
    conn = sqlite3.connect(db)
    backends = {b for (b,) in conn.execute("SELECT DISTINCT backend FROM llm_calls")}
    assert backends == {"embedded:gemma-3-270m-q4_k_m"}
    # constrained choices: every answer is a valid option, with a confidence from logprobs
    hidden = [
        json.loads(h)
        for (h,) in conn.execute(
            "SELECT hidden_json FROM turns WHERE json_extract(hidden_json, '$.choice') IS NOT NULL"
        )
    ]
    assert hidden and all(h["choice"] in "ABCD" and h["from_logprobs"] for h in hidden)
    assert all(abs(sum(h["probs"]) - 1) < 1e-3 for h in hidden)
    explanations = [
        t
        for (t,) in conn.execute(
            "SELECT text FROM turns WHERE json_extract(hidden_json, '$.step') = 'explain'"
        )
    ]
    assert len(explanations) == 6 + 2  # test items and observed items
    assert all("So the answer is (" in t for t in explanations)
    assert conn.execute("SELECT count(*) FROM interventions").fetchone()[0] == 6 * 2 * 2
    for curve in result.curves:
        assert 0.0 <= curve.at(0.0) <= 1.0 and 0.0 <= curve.at(1.0) <= 1.0
    assert result.curve("random").at(0.0) == result.curve("expected_utility").at(0.0)


# -- resume after a crash --------------------------------------------------------------------


def _complete_episodes(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM episodes WHERE status = 'complete'")
            return int(row.fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def test_a_teaching_run_killed_mid_way_resumes_to_the_same_tables(tmp_path: Path) -> None:
    """kill -9 during the assessment stage, then the same command again: the episodes already
    complete are kept, the rest run, and the tables equal an uninterrupted run's."""
    spec = {
        "kind": "teaching",
        "name": "resume_teaching",
        "backend": "simulated",
        "backend_options": {"latency_s": 0.01, "p_pre": 0.4, "p_post": 0.8},
        "seeds": [0, 1],
        "data": {"items": 10, "observe": 2},
        "budgets": [0.0, 0.5, 1.0],
        "functions": ["random", "expected_utility", "true_utility"],
        "student": {"demos": 1},
        "teacher": {"explanation_demos": 1, "mental_model_demos": 2},
        "multi_turn": {"functions": ["random"], "budgets": [0.5], "demos": 2},
        "bootstrap": {"resamples": 200},
    }
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    command = [sys.executable, "-m", "personae", "experiment", "teaching", str(path), "-q",
               "--concurrency", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed, clean = tmp_path / "killed.db", tmp_path / "clean.db"
    proc = subprocess.Popen([*command, "--db", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while _complete_episodes(killed) < 12 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    total = 2 * (2 + 10 + 10 + 1)
    done = _complete_episodes(killed)
    assert 0 < done < total, done  # it was killed mid-way
    assert db_rows(killed, "SELECT status FROM runs")[0]["status"] == "running"
    resumed = subprocess.run([*command, "--db", str(killed)], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run([*command, "--db", str(clean)], env=env, check=True, capture_output=True,
                   timeout=120)  # fmt: skip

    def tables(db: Path) -> Any:
        summary = json.loads(db_rows(db, "SELECT summary_json FROM runs ORDER BY created_at")[-1]
                             ["summary_json"])  # fmt: skip
        return summary["curves"], summary["multi_turn"]

    assert tables(killed) == tables(clean)
    with sqlite3.connect(killed) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = [r[0] for r in conn.execute("SELECT status FROM episodes")]
        assert statuses == ["complete"] * total
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM turns GROUP BY episode_id, idx "
            "HAVING count(*) > 1)"
        ).fetchone()[0]
        assert dupes == 0
        decisions = conn.execute("SELECT count(*) FROM interventions").fetchone()[0]
    assert decisions == db_rows(clean, "SELECT count(*) AS n FROM interventions")[0]["n"]
    # the resumed run ran only what was missing
    runs = db_rows(killed, "SELECT run_id, status FROM runs ORDER BY created_at")
    assert [r["status"] for r in runs] == ["interrupted", "complete"]  # the killed run marked
    by_run = db_rows(killed, "SELECT run_id, count(*) AS n FROM episodes GROUP BY run_id")
    assert {r["run_id"]: r["n"] for r in by_run}[runs[-1]["run_id"]] == total - done
