"""One seed of a teaching run: its demonstrations, item records, rankings and decisions, rebuilt
from the stored outcomes of the episodes run so far.

`SeedState` is what the study knows between stages: `observed` turns the observation episodes
into the mental model's examples and the personalized demonstrations, `assessed` and `taught`
fill each test item's record from its assessment and teaching episodes (a missing one marks the
item failed), `rank` ranks the items with every intervention function, `decisions` turns a
ranking into `interventions` rows, `plan_passes` the multi-turn questions, and `outcomes` the
per-item results every budget is scored from. Everything is recomputed from outcomes, so it is
the same whether the episodes ran now or in an interrupted run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from personae.agents import Item
from personae.experiments._interventions import (
    ItemEstimate,
    budget_items,
    explained_at,
    get_intervention,
)
from personae.experiments._scoring import StyleOutcomes
from personae.graphs._teaching import Asked, ItemRecord, SeedShots

Arm = tuple[str, str]
Ranking = list[tuple[str, float]]
#: (style, function, budget) of a decision or a multi-turn pass.
Cell = tuple[str, str, float]


def utc() -> str:
    """UTC timestamp with milliseconds, as the turn log stores them."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def estimate(record: ItemRecord, style: str) -> ItemEstimate:
    """What intervention functions see for an assessed item and `style`."""
    assert record.pre is not None and record.teacher is not None
    gold = record.item.answer
    post = record.post.get(style)
    return ItemEstimate(
        item_id=record.item.id,
        index=record.index,
        teacher_confidence=record.teacher.p(gold),
        student_confidence=record.pre.confidence,
        student_p_gold=record.pre.p(gold),
        student_correct=record.pre.correct(gold),
        c_pre=record.c_pre,
        c_post=record.c_post.get(style, math.nan),
        student_post_p_gold=post.p(gold) if post is not None else None,
    )


@dataclass
class SeedState:
    """One seed's demonstrations, items, rankings and pass inputs.

    Attributes:
        seed: The seed.
        draw: Its disjoint draw from the pool (`student`, `explain`, `observe` items).
        shots: The demonstrations its prompts use.
        records: One record per test item (ids are its teaching episodes').
        observations: One record per observed pool item.
        assess_ids: The assessment episode of each test item.
    """

    seed: int
    draw: dict[str, list[Item]]
    shots: SeedShots
    records: list[ItemRecord]
    observations: list[ItemRecord]
    assess_ids: list[str]
    rankings: dict[Arm, Ranking] = field(default_factory=dict)
    positions: dict[Arm, dict[str, tuple[int, float]]] = field(default_factory=dict)
    n_ranked: int = 0
    #: teach stage: item id -> (styles to deliver, what the decide turn records)
    decisions: dict[str, tuple[list[str], dict[str, Any]]] = field(default_factory=dict)
    #: pass index -> (questions, per-item outcome with demonstrations where none is asked, alone)
    passes: dict[int, tuple[list[Asked], np.ndarray, np.ndarray]] = field(default_factory=dict)

    def observed(
        self, outcomes: Mapping[str, Any], *, mental_model_demos: int, explanation_demos: int
    ) -> None:
        """The mental model's shots and the personalized demos, from the observations."""
        for r in self.observations:
            fresh = ItemRecord(r.item, r.index, r.episode_id)
            fresh.absorb(outcomes.get(r.episode_id))
            self.observations[r.index] = fresh
        seen = [r for r in self.observations if r.pre and r.post.get("unpersonalized")]
        alone, explained = [], []
        for r in seen[:mental_model_demos]:
            assert r.pre is not None
            if r.pre.choice is not None:
                alone.append(r.item.shot(answer=r.pre.choice))
            post = r.post["unpersonalized"]
            if post.choice is not None:
                draft = r.drafts["unpersonalized"].text
                explained.append(r.item.shot(answer=post.choice, explanation=draft))
        self.shots.observed = alone + explained

        def gain(r: ItemRecord) -> float:
            assert r.pre is not None
            g = r.item.answer
            return r.post["unpersonalized"].p(g) - r.pre.p(g)

        helpful = sorted(seen, key=lambda r: (-gain(r), r.index))
        personal = [
            r.item.shot(
                answer=r.drafts["unpersonalized"].target,
                explanation=r.drafts["unpersonalized"].rationale or r.item.explanation,
            )
            for r in helpful[:explanation_demos]
        ]
        if personal:
            self.shots.explain["personalized"] = personal

    def assessed(self, outcomes: Mapping[str, Any]) -> None:
        """Fill every test item's record from its assessment (missing: the item failed)."""
        for i, r in enumerate(self.records):
            fresh = ItemRecord(r.item, r.index, r.episode_id)
            if self.assess_ids[i] in outcomes:
                fresh.absorb(outcomes[self.assess_ids[i]])
            else:
                fresh.error = "the assessment episode did not complete"
            self.records[i] = fresh

    def taught(self, outcomes: Mapping[str, Any]) -> None:
        """Add each assessed item's teaching outcome (missing: the item failed)."""
        for r in self.records:
            if not r.assessed:
                continue
            if r.episode_id in outcomes:
                r.absorb(outcomes[r.episode_id])
            else:
                r.error = "the teaching episode did not complete"

    def rank(self, arms: Sequence[Arm], *, hindsight: bool) -> None:
        """Rank the assessed items with every function of `arms` of that kind (functions that
        read the student's outcome with the explanation rank in hindsight)."""
        assessed = [r for r in self.records if r.assessed]
        if not hindsight:
            self.n_ranked = len(assessed)
        for style, function in arms:
            intervention = get_intervention(function)
            if intervention.needs_student_post != hindsight:
                continue
            estimates = [estimate(r, style) for r in assessed]
            ranking = intervention.rank(estimates, random.Random(f"{self.seed}|{style}|{function}"))
            self.rankings[(style, function)] = ranking
            self.positions[(style, function)] = {
                item: (i, score) for i, (item, score) in enumerate(ranking)
            }

    def decisions_for(
        self, record: ItemRecord, grid: Sequence[Cell], *, hindsight: bool, run_id: str
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The `interventions` rows of `record` and the styles some decision explains."""
        rows: list[dict[str, Any]] = []
        explain: set[str] = set()
        n = self.n_ranked
        for style, function, budget in grid:
            if get_intervention(function).needs_student_post != hindsight:
                continue
            ranking = self.rankings[(style, function)]
            position = self.positions[(style, function)].get(record.item.id)
            rank, score = position if position is not None else (None, None)
            k = budget_items(n, budget)
            decided = rank is not None and rank < k
            used = (min(rank, k) + int(decided)) if rank is not None else min(len(ranking), k)
            if decided:
                explain.add(style)
            guess = estimate(record, style)
            key = (record.episode_id, style, function, str(budget), str(int(hindsight)))
            rows.append(
                {
                    "decision_id": "|".join(key),
                    "run_id": run_id,
                    "episode_id": record.episode_id,
                    "item_id": record.item.id,
                    "seed": self.seed,
                    "explanation": style,
                    "function": function,
                    "budget": budget,
                    "n_items": n,
                    "budget_items": k,
                    "rank": rank,
                    "score": score,
                    "decided": int(decided),
                    "budget_used": used,
                    "c_pre": _finite(guess.c_pre),
                    "c_post": _finite(guess.c_post),
                    "utility": _finite(guess.utility),
                    "teacher_confidence": guess.teacher_confidence,
                    "student_confidence": guess.student_confidence,
                    "hindsight": int(hindsight),
                    "created_at": utc(),
                }
            )
        return rows, explain

    def explained(self, style: str, function: str, budget: float) -> set[str]:
        """Items explained by `function` at `budget` with `style` explanations."""
        return explained_at(self.rankings[(style, function)], self.n_ranked, budget)

    def plan_passes(self, passes: Sequence[Cell], demos: int) -> None:
        """The questions of every multi-turn pass: each unexplained item, with the last `demos`
        explained items before it as demonstrations (an item with none is scored alone)."""
        n = len(self.records)
        for j, (style, function, budget) in enumerate(passes):
            explained = self.explained(style, function, budget)
            with_demos, alone = np.full(n, np.nan), np.full(n, np.nan)
            asked: list[Asked] = []
            for i, record in enumerate(self.records):
                if not record.assessed or record.item.id in explained or style not in record.drafts:
                    continue
                assert record.pre is not None
                alone[i] = float(record.pre.correct(record.item.answer))
                prior = [
                    r for r in self.records[:i] if r.item.id in explained and style in r.drafts
                ][-demos:]
                if not prior:
                    with_demos[i] = alone[i]
                    continue
                shots = tuple(
                    r.item.shot(answer=r.drafts[style].target, explanation=r.drafts[style].text)
                    for r in prior
                )
                asked.append(Asked(i, record.item, shots, tuple(r.item.id for r in prior)))
            self.passes[j] = (asked, with_demos, alone)

    def pass_outcome(self, j: int, outcome: Mapping[str, Any] | None) -> np.ndarray:
        """Per-item correctness of pass `j` (NaN everywhere when the pass failed)."""
        asked, base, _ = self.passes[j]
        values = base.copy()
        if outcome is None:
            values[:] = np.nan
            return values
        for a in asked:
            values[a.index] = float(outcome["asked"][a.item.id])
        return values

    def outcomes(self, style: str) -> StyleOutcomes:
        """Per-item outcomes for `style` (failed items NaN)."""
        n = len(self.records)
        pre_c, pre_p = np.full(n, np.nan), np.full(n, np.nan)
        post_c, post_p = np.full(n, np.nan), np.full(n, np.nan)
        for i, r in enumerate(self.records):
            if r.error is not None or r.pre is None:
                continue
            gold = r.item.answer
            pre_c[i], pre_p[i] = float(r.pre.correct(gold)), r.pre.p(gold)
            post = r.post.get(style)
            if post is not None:
                post_c[i], post_p[i] = float(post.correct(gold)), post.p(gold)
        ids = tuple(r.item.id for r in self.records)
        return StyleOutcomes(ids, pre_c, pre_p, post_c, post_p, self.n_ranked)
