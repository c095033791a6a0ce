"""What a teaching run's seeds share: stable episode ids, and the demonstrations each seed draws.

`split_pool` draws a seed's disjoint demonstrations and observation items from the pool;
`base_shots` turns them into the prompts' shots before the student is observed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from personae.agents._teaching import Item
from personae.experiments._spec import TeachingScenario
from personae.graphs._teaching import SeedShots
from personae.store import episode_key


def teaching_episode_id(scenario: str, kind: str, seed: int, index: int, **extra: Any) -> str:
    """Stable id of one teaching episode (observation, test item or multi-turn pass)."""
    return episode_key(scenario, {"teaching": {"kind": kind, **extra}}, seed, index)


def split_pool(
    pool: Sequence[Item], seed: int, scenario: TeachingScenario
) -> dict[str, list[Item]]:
    """A seed's disjoint draw from the demonstration pool: `student` demos, the teacher's
    `explain` demos (items with human explanations first) and the items to `observe`."""
    order = list(pool)
    random.Random(f"pool|{seed}").shuffle(order)
    n_explain = scenario.teacher.explanation_demos
    explained = [i for i in order if i.explanation] + [i for i in order if not i.explanation]
    explain = explained[:n_explain]
    rest = [i for i in order if i not in explain]
    n_student = scenario.student.demos
    return {
        "student": rest[:n_student],
        "explain": explain,
        "observe": rest[n_student : n_student + scenario.data.observe],
    }


def base_shots(draw: dict[str, list[Item]]) -> SeedShots:
    """Shots before the student is observed (personalized demos come later)."""
    human = [i.shot(answer=i.answer, explanation=i.explanation) for i in draw["explain"]]
    return SeedShots(
        student=[i.shot(answer=i.answer) for i in draw["student"]],
        teacher_answer=[i.shot(answer=i.answer) for i in draw["explain"]],
        explain={"unpersonalized": human, "personalized": human, "misaligned": human},
    )
