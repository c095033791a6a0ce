"""Records of a teaching run: the episode context, what each item produced, and the
demonstrations each seed uses.

`TeachingEpisode` extends `Episode` with single-step turns (a model call or a decision) whose
indices are reserved in a fixed order. `ItemRecord` holds an item's answers, drafts and
mental-model estimates outside graph state. `split_pool` draws a seed's disjoint demonstrations
and observation items from the pool.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from personae.agents import Shot
from personae.backends import GenerationRequest, GenerationResult
from personae.experiments._confidence import Answer
from personae.experiments._data import Item
from personae.experiments._interventions import ItemEstimate
from personae.experiments._spec import TeachingScenario
from personae.graphs import Episode
from personae.seeds import derive_seed
from personae.store import episode_key


def utc() -> str:
    """UTC timestamp with milliseconds, as the turn log stores them."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def teaching_episode_id(scenario: str, kind: str, seed: int, index: int, **extra: Any) -> str:
    """Stable id of one teaching episode (observation, test item or multi-turn pass)."""
    return episode_key(scenario, {"teaching": {"kind": kind, **extra}}, seed, index)


@dataclass
class TeachingEpisode(Episode):
    """An `Episode` whose turns are single steps: one model call, or a decision.

    Reuses `Episode`'s retrying `_generate` and its `llm_calls` logging; adds turn reservation
    (turn indices are fixed before concurrent steps run, so the log order is deterministic) and
    access to the `GenerationResult` (for logprobs).
    """

    next_turn: int = 0

    def reserve(self) -> int:
        """The next turn index."""
        turn = self.next_turn
        self.next_turn += 1
        return turn

    def seed_for(self, turn: int, name: str) -> int:
        """The call seed of `name`'s turn `turn`."""
        return derive_seed(self.run_seed, self.episode_id, turn, name)

    async def call(
        self, name: str, turn: int, request: GenerationRequest
    ) -> tuple[GenerationResult, str]:
        """Send `request` for agent `name` (retrying backend errors) and log the call."""
        agent, backend = self.agents[name], self.backends[name]
        result, attempts, cache_hit = await self._generate(backend, request)
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        call_id = f"{self.episode_id}-{turn:04d}"
        self._log_call(call_id, agent, turn, backend, request, result, attempts, cache_hit)
        return result, call_id

    def log_turn(
        self, turn: int, name: str, text: str, hidden: dict[str, Any], call_id: str | None = None
    ) -> None:
        """Queue the `turns` row of turn `turn`."""
        if self.writer is None:
            return
        self.writer.insert(
            "turns",
            {
                "episode_id": self.episode_id,
                "idx": turn,
                "agent": name,
                "role": self.agents[name].role,
                "text": text,
                "hidden_json": json.dumps(hidden) if hidden else None,
                "call_id": call_id,
                "created_at": utc(),
            },
        )


# -- records ---------------------------------------------------------------------------------


@dataclass
class Draft:
    """An explanation the teacher wrote (delivered only if it intervenes)."""

    style: str
    target: int
    rationale: str
    text: str


@dataclass
class ItemRecord:
    """Everything one item's graph produced (kept outside graph state)."""

    item: Item
    index: int
    episode_id: str
    pre: Answer | None = None
    teacher: Answer | None = None
    drafts: dict[str, Draft] = field(default_factory=dict)
    c_pre: float = math.nan
    c_post: dict[str, float] = field(default_factory=dict)
    post: dict[str, Answer] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    arrived: bool = False
    error: str | None = None

    @property
    def assessed(self) -> bool:
        """Reached `decide` with the estimates every function may read."""
        return self.error is None and self.pre is not None and self.teacher is not None

    def estimate(self, style: str) -> ItemEstimate:
        """What intervention functions see for this item and `style`."""
        assert self.pre is not None and self.teacher is not None
        gold = self.item.answer
        post = self.post.get(style)
        return ItemEstimate(
            item_id=self.item.id,
            index=self.index,
            teacher_confidence=self.teacher.p(gold),
            student_confidence=self.pre.confidence,
            student_p_gold=self.pre.p(gold),
            student_correct=self.pre.correct(gold),
            c_pre=self.c_pre,
            c_post=self.c_post.get(style, math.nan),
            student_post_p_gold=post.p(gold) if post is not None else None,
        )


@dataclass
class SeedShots:
    """The demonstrations one seed's prompts use."""

    student: list[Shot]
    teacher_answer: list[Shot]
    explain: dict[str, list[Shot]]
    #: The student's observed answers, alone then with explanations (the mental model's shots).
    observed: list[Shot] = field(default_factory=list)


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
