"""Run-wide and per-seed orchestration of the teaching experiment.

`RunContext` holds what every item of a run shares (scenario, agents, backends, turn-log writer,
the (style, function, budget) decision grid and the compiled per-item graph) and writes the
`episodes` rows. `SeedRun` drives one seed: `observe()` runs the observation items and builds the
mental model's examples and personalized explanation demos, `test()` runs every test item through
the per-item graph (`personae.experiments._teaching`), whose `decide` step meets the others at
this seed's barrier (`arrive`/`ranked`); the last arrival ranks the items with every intervention
function, and `decisions` turns those rankings into `interventions` rows. Afterwards
`outcomes`, `explained` and `multi_turn` (the passes listed by `multi_turn_passes`) read the
per-item results for scoring. Nothing here talks to the student or teacher about a single item
except the multi-turn passes; the per-item steps live in `ItemRun`.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from personae.agents import Student, Teacher
from personae.agents._teaching import letters
from personae.backends import Backend
from personae.experiments._confidence import Answer, read_answer
from personae.experiments._data import Item
from personae.experiments._interventions import (
    budget_items,
    explained_at,
    get_intervention,
)
from personae.experiments._records import (
    ItemRecord,
    TeachingEpisode,
    base_shots,
    teaching_episode_id,
    utc,
)
from personae.experiments._scoring import StyleOutcomes
from personae.experiments._spec import TeachingScenario
from personae.experiments._teaching import ItemRun, Mode, build_teaching_graph
from personae.store import TurnLogWriter

Arm = tuple[str, str]
Ranking = list[tuple[str, float]]


# -- run-wide and per-seed state -------------------------------------------------------------


@dataclass
class RunContext:
    """What every item of a run shares: spec, agents, backends, writer and bookkeeping."""

    scenario: TeachingScenario
    run_id: str
    student: Student
    teacher: Teacher
    backends: dict[str, Backend]
    writer: TurnLogWriter | None
    episode_index: dict[str, int]
    on_episode: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        spec = self.scenario
        self.styles = spec.styles()
        self.arms: list[Arm] = spec.arms()
        main = [(s, f, b) for s, f in self.arms for b in spec.budgets]
        #: Every (style, function, budget) a decision is recorded for.
        self.grid = list(dict.fromkeys(main + multi_turn_passes(spec)))
        ranked = dict.fromkeys((s, f) for s, f, _ in self.grid)
        self.ranked_arms: list[Arm] = list(ranked)
        self.hindsight_styles = {
            s for s, f in self.ranked_arms if get_intervention(f).needs_student_post
        }
        self.graph = build_teaching_graph()

    def episode(self, episode_id: str, seed: int) -> TeachingEpisode:
        """A fresh turn log context for one episode."""
        agents = {"student": self.student, "teacher": self.teacher}
        return TeachingEpisode(
            episode_id=episode_id,
            agents=dict(agents),
            backends=dict(self.backends),
            writer=self.writer,
            run_seed=seed,
        )

    def start_episode(self, episode_id: str, seed: int, condition: dict[str, Any]) -> None:
        """Queue the episode's row (status `running`)."""
        if self.writer is None:
            return
        self.writer.upsert(
            "episodes",
            {
                "episode_id": episode_id,
                "run_id": self.run_id,
                "idx": self.episode_index.get(episode_id, 0),
                "scenario": self.scenario.name,
                "condition_json": json.dumps({"teaching": condition}),
                "personas_json": json.dumps(
                    {
                        "student": self.student.persona.model_dump(mode="json"),
                        "teacher": self.teacher.persona.model_dump(mode="json"),
                    }
                ),
                "seed": seed,
                "status": "running",
                "started_at": utc(),
            },
        )

    def finish_episode(
        self, episode_id: str, *, end_reason: str, n_turns: int, error: str | None = None
    ) -> None:
        """Queue the episode's final status."""
        if self.writer is not None:
            self.writer.upsert(
                "episodes",
                {
                    "episode_id": episode_id,
                    "status": "failed" if error else "complete",
                    "end_reason": "error" if error else end_reason,
                    "error": error,
                    "n_turns": n_turns,
                    "finished_at": utc(),
                },
            )
        self.on_episode()


class SeedRun:
    """One seed of the experiment: its demonstrations, items, barrier and rankings."""

    def __init__(
        self, ctx: RunContext, seed: int, items: Sequence[Item], draw: dict[str, list[Item]]
    ) -> None:
        self.ctx = ctx
        self.seed = seed
        self.draw = draw
        self.shots = base_shots(draw)
        name = ctx.scenario.name
        self.records = [
            ItemRecord(item, i, teaching_episode_id(name, "item", seed, i, item=item.id))
            for i, item in enumerate(items)
        ]
        self.observations = [
            ItemRecord(item, i, teaching_episode_id(name, "observe", seed, i, item=item.id))
            for i, item in enumerate(draw["observe"])
        ]
        self.rankings: dict[Arm, Ranking] = {}
        self._positions: dict[Arm, dict[str, tuple[int, float]]] = {}
        self.n_ranked = 0
        self._pending = len(self.records)
        self._ranked = asyncio.Event()

    # -- phases --------------------------------------------------------------------------------
    async def observe(self) -> None:
        """Observe the student on pool items alone and with the teacher's explanation; build
        the mental model's examples and the personalized explanation demos from that."""
        await asyncio.gather(*(self._run(r, "observe") for r in self.observations))
        seen = [r for r in self.observations if r.error is None and r.pre and r.post]
        k = self.ctx.scenario.teacher.mental_model_demos
        alone, explained = [], []
        for r in seen[:k]:
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
            for r in helpful[: self.ctx.scenario.teacher.explanation_demos]
        ]
        if personal:
            self.shots.explain["personalized"] = personal

    async def test(self) -> None:
        """Run every test item's graph (they meet at the `decide` barrier), then rank the
        hindsight functions."""
        await asyncio.gather(*(self._run(r, "test") for r in self.records))
        self._rank(hindsight=True)
        for record in self.records:
            if record.assessed:
                self._write_decisions(record, hindsight=True)

    async def _run(self, record: ItemRecord, mode: Mode) -> None:
        ctx = self.ctx
        episode = ctx.episode(record.episode_id, self.seed)
        kind = "observe" if mode == "observe" else "item"
        ctx.start_episode(
            record.episode_id, self.seed, {"kind": kind, "item": record.item.id, "seed": self.seed}
        )
        error = None
        try:
            await ctx.graph.ainvoke({"explain": []}, context=ItemRun(self, record, episode, mode))
        except Exception as exc:  # one item's failure must not stop the run
            error = f"{type(exc).__name__}: {exc}"
            record.error = error
            if mode == "test" and not record.arrived:
                record.arrived = True
                self.arrive()
        reason = (
            "observed"
            if mode == "observe"
            else ("explained" if record.delivered else "not_explained")
        )
        ctx.finish_episode(
            record.episode_id, end_reason=reason, n_turns=episode.next_turn, error=error
        )

    # -- the barrier and the rankings ----------------------------------------------------------
    def arrive(self) -> None:
        """One more item is assessed (or failed); the last one triggers the ranking."""
        self._pending -= 1
        if self._pending == 0:
            self._rank(hindsight=False)
            self._ranked.set()

    async def ranked(self) -> None:
        """Wait until every item is assessed and ranked."""
        await self._ranked.wait()

    def _rank(self, *, hindsight: bool) -> None:
        assessed = [r for r in self.records if r.assessed]
        if not hindsight:
            self.n_ranked = len(assessed)
        for style, function in self.ctx.ranked_arms:
            intervention = get_intervention(function)
            if intervention.needs_student_post != hindsight:
                continue
            estimates = [r.estimate(style) for r in assessed]
            rng = random.Random(f"{self.seed}|{style}|{function}")
            ranking = intervention.rank(estimates, rng)
            self.rankings[(style, function)] = ranking
            self._positions[(style, function)] = {
                item: (i, score) for i, (item, score) in enumerate(ranking)
            }

    def decisions(
        self, record: ItemRecord, *, hindsight: bool
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The `interventions` rows of `record` and the styles some decision explains."""
        rows: list[dict[str, Any]] = []
        explain: set[str] = set()
        n = self.n_ranked
        for style, function, budget in self.ctx.grid:
            if get_intervention(function).needs_student_post != hindsight:
                continue
            ranking = self.rankings[(style, function)]
            position = self._positions[(style, function)].get(record.item.id)
            rank, score = position if position is not None else (None, None)
            k = budget_items(n, budget)
            decided = rank is not None and rank < k
            used = (min(rank, k) + int(decided)) if rank is not None else min(len(ranking), k)
            if decided:
                explain.add(style)
            estimate = record.estimate(style)
            rows.append(
                {
                    "run_id": self.ctx.run_id,
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
                    "c_pre": _finite(estimate.c_pre),
                    "c_post": _finite(estimate.c_post),
                    "utility": _finite(estimate.utility),
                    "teacher_confidence": estimate.teacher_confidence,
                    "student_confidence": estimate.student_confidence,
                    "hindsight": int(hindsight),
                    "created_at": utc(),
                }
            )
        return rows, explain

    def _write_decisions(self, record: ItemRecord, *, hindsight: bool) -> set[str]:
        rows, explain = self.decisions(record, hindsight=hindsight)
        if self.ctx.writer is not None:
            for row in rows:
                self.ctx.writer.insert("interventions", row)
        return explain

    # -- results -------------------------------------------------------------------------------
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

    def explained(self, style: str, function: str, budget: float) -> set[str]:
        """Items explained by `function` at `budget` with `style` explanations."""
        return explained_at(self.rankings[(style, function)], self.n_ranked, budget)

    # -- multi-turn ----------------------------------------------------------------------------
    async def multi_turn(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each pass of `multi_turn_passes`: per-item correctness on the unexplained items
        with the earlier explained items as demonstrations, and alone (NaN elsewhere)."""
        cache: dict[tuple[str, tuple[str, ...]], asyncio.Task[tuple[Answer, str, str]]] = {}
        passes = multi_turn_passes(self.ctx.scenario)
        return list(
            await asyncio.gather(
                *(self._multi_turn_pass(j, s, f, b, cache) for j, (s, f, b) in enumerate(passes))
            )
        )

    async def _multi_turn_pass(
        self,
        index: int,
        style: str,
        function: str,
        budget: float,
        cache: dict[tuple[str, tuple[str, ...]], asyncio.Task[tuple[Answer, str, str]]],
    ) -> tuple[np.ndarray, np.ndarray]:
        ctx = self.ctx
        mt = ctx.scenario.multi_turn
        assert mt is not None
        extra = {"style": style, "function": function, "budget": budget}
        episode_id = teaching_episode_id(ctx.scenario.name, "multi_turn", self.seed, index, **extra)
        ctx.start_episode(episode_id, self.seed, {"kind": "multi_turn", **extra, "seed": self.seed})
        ep = ctx.episode(episode_id, self.seed)
        explained = self.explained(style, function, budget)
        n = len(self.records)
        with_demos, alone = np.full(n, np.nan), np.full(n, np.nan)
        asked: list[tuple[int, int, ItemRecord, list[ItemRecord]]] = []
        for i, record in enumerate(self.records):
            if not record.assessed or record.item.id in explained or style not in record.drafts:
                continue
            assert record.pre is not None
            alone[i] = float(record.pre.correct(record.item.answer))
            prior = [r for r in self.records[:i] if r.item.id in explained and style in r.drafts][
                -mt.demos :
            ]
            if not prior:
                with_demos[i] = alone[i]
                continue
            asked.append((i, ep.reserve(), record, prior))
        error = None
        try:
            for i, turn, record, prior in asked:
                key = (record.item.id, tuple(p.item.id for p in prior))
                first = key not in cache
                if first:
                    cache[key] = asyncio.ensure_future(
                        self._demo_answer(ep, turn, record, prior, style)
                    )
                answer, call_id, text = await cache[key]
                with_demos[i] = float(answer.correct(record.item.answer))
                hidden = {
                    "step": "student_multi_turn",
                    "item_id": record.item.id,
                    "demos": list(key[1]),
                    "p_gold": round(answer.p(record.item.answer), 6),
                    "correct": answer.correct(record.item.answer),
                    "reused_call": not first,
                }
                ep.log_turn(turn, "student", text, hidden, call_id)
        except Exception as exc:  # a failed pass must not stop the run
            error = f"{type(exc).__name__}: {exc}"
        ctx.finish_episode(episode_id, end_reason="multi_turn", n_turns=len(asked), error=error)
        if error:
            with_demos[:] = np.nan
        return with_demos, alone

    async def _demo_answer(
        self,
        ep: TeachingEpisode,
        turn: int,
        record: ItemRecord,
        prior: list[ItemRecord],
        style: str,
    ) -> tuple[Answer, str, str]:
        shots = [
            r.item.shot(answer=r.drafts[style].target, explanation=r.drafts[style].text)
            for r in prior
        ]
        item = record.item
        request = self.ctx.student.answer_request(
            shots,
            item.shot(),
            temperature=self.ctx.scenario.student.temperature,
            seed=ep.seed_for(turn, "student"),
            tags={"episode_id": ep.episode_id, "turn": turn, "item_id": item.id,
                  "step": "student_multi_turn", "style": style},
        )  # fmt: skip
        result, call_id = await ep.call("student", turn, request)
        marks = letters(len(item.options))
        answer = read_answer(result, marks)
        said = (
            f"({marks[answer.choice]}) {item.options[answer.choice]}"
            if answer.choice is not None
            else result.text
        )
        return answer, call_id, said


def multi_turn_passes(scenario: TeachingScenario) -> list[tuple[str, str, float]]:
    """(style, function, budget) of every multi-turn pass, in order (none without `multi_turn`)."""
    mt = scenario.multi_turn
    if mt is None:
        return []
    style = mt.explanations or scenario.explanations[0]
    return [(style, f, b) for f in mt.functions for b in mt.budgets]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
