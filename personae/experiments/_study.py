"""The teacher-student budget experiment as a `Study`: what the one runner runs, in four stages.

    stage 0  observe   per seed, the student is observed on pool items (alone and with the
                       teacher's explanation): the mental model's examples and the
                       personalized explanation demonstrations come from these
    stage 1  assess    per seed and test item: the student answers alone; the teacher answers,
                       drafts an explanation per style, and predicts the student (ĉ_pre, ĉ_post)
    stage 2  teach     per seed and test item: the decision (made before the stage from every
                       item's assessment, by every intervention function at every budget, one
                       `interventions` row each), the explanation delivered, the student again
    stage 3  pass      per seed and multi-turn pass: explained items as demonstrations for the
                       student on later unexplained items

Between stages `prepare` rebuilds each seed's state from the stored outcomes of the episodes
before — so a run killed at any point resumes (complete episodes are kept, decisions recomputed
from the stored assessments and upserted by a stable id) — and `finish` scores every arm at every
budget from the per-item outcomes.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from personae.agents import Item, Sampling, Student, Teacher, get_role
from personae.backends import Backend, parse_spec
from personae.errors import UserError
from personae.experiments._interventions import budget_items, explained_at, get_intervention
from personae.experiments._records import base_shots, split_pool, teaching_episode_id, utc
from personae.experiments._scoring import (
    MultiTurnRow,
    StyleOutcomes,
    score_curves,
    score_multi_turn,
)
from personae.experiments._simulated import SimulatedStudentBackend
from personae.experiments._spec import TeachingScenario, load_data, load_persona, parse_teaching
from personae.graphs import Cast, get_graph
from personae.graphs._teaching import (
    Asked,
    ItemRecord,
    PassSteps,
    SeedShots,
    TeachingSettings,
    TeachingSteps,
)
from personae.runner import EpisodeJob, Services, Study, register_study
from personae.scenario import EpisodePlan
from personae.store import TurnLogWriter

Arm = tuple[str, str]
Ranking = list[tuple[str, float]]
OBSERVE, ASSESS, TEACH, PASS = 0, 1, 2, 3
_KINDS = {OBSERVE: "observe", ASSESS: "assess", TEACH: "teach", PASS: "multi_turn"}


def multi_turn_passes(scenario: TeachingScenario) -> list[tuple[str, str, float]]:
    """(style, function, budget) of every multi-turn pass, in order (none without `multi_turn`)."""
    mt = scenario.multi_turn
    if mt is None:
        return []
    style = mt.explanations or scenario.explanations[0]
    return [(style, f, b) for f in mt.functions for b in mt.budgets]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class SeedState:
    """One seed's demonstrations, items, rankings and pass inputs, rebuilt from outcomes."""

    seed: int
    draw: dict[str, list[Item]]
    shots: SeedShots
    records: list[ItemRecord]
    observations: list[ItemRecord]
    rankings: dict[Arm, Ranking] = field(default_factory=dict)
    positions: dict[Arm, dict[str, tuple[int, float]]] = field(default_factory=dict)
    n_ranked: int = 0
    #: teach stage: item id -> (styles to deliver, what the decide turn records)
    decisions: dict[str, tuple[list[str], dict[str, Any]]] = field(default_factory=dict)
    #: pass stage: pass index -> questions, and per item the outcome without any question
    passes: dict[int, tuple[list[Asked], np.ndarray, np.ndarray]] = field(default_factory=dict)


class TeachingStudy(Study):
    """A validated teaching scenario, its data and its seeds, as stages of episodes."""

    kind = "teaching"

    def __init__(self, spec: TeachingScenario, *, items: int | None = None) -> None:
        if items is not None:  # the effective spec is stored, so a resume reads the same items
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"items": items})})
        self.spec = spec
        self.name = spec.name
        self.seed = spec.seeds[0]
        self.base_dir = spec.base_dir
        self.test, self.pool = load_data(spec)
        self.personas: dict[str, BaseModel] = {
            n: load_persona(spec, n) for n in ("student", "teacher")
        }
        self.styles = spec.styles()
        self.arms: list[Arm] = spec.arms()
        main = [(s, f, b) for s, f in self.arms for b in spec.budgets]
        #: Every (style, function, budget) a decision is recorded for.
        self.grid = list(dict.fromkeys(main + multi_turn_passes(spec)))
        self.ranked_arms: list[Arm] = list(dict.fromkeys((s, f) for s, f, _ in self.grid))
        self.hindsight_styles = {
            s for s, f in self.ranked_arms if get_intervention(f).needs_student_post
        }
        self.step_settings = TeachingSettings(
            tuple(self.styles),
            spec.student.temperature,
            spec.teacher.temperature,
            spec.teacher.explain_toward,
        )
        cast = Cast(("student", "teacher"), source=str(spec.base_dir))
        self.graphs = {
            phase: get_graph("teaching_item").options_model.model_validate(
                {"kind": "teaching_item", "phase": phase}
            )
            for phase in ("observe", "assess", "teach")
        }
        item_kind = get_graph("teaching_item")
        self.kinds = {phase: item_kind(options, cast) for phase, options in self.graphs.items()}
        pass_kind = get_graph("teaching_pass")
        self.pass_kind = pass_kind(pass_kind.options_model(kind="teaching_pass"), cast)
        self.state: dict[int, SeedState] = {}
        for seed in spec.seeds:
            draw = split_pool(self.pool, seed, spec)
            self.state[seed] = SeedState(
                seed=seed,
                draw=draw,
                shots=base_shots(draw),
                records=[
                    ItemRecord(it, i, self.episode_id(TEACH, seed, i, it))
                    for i, it in enumerate(self.test)
                ],
                observations=[
                    ItemRecord(it, i, self.episode_id(OBSERVE, seed, i, it))
                    for i, it in enumerate(draw["observe"])
                ],
            )
        self._plans: list[EpisodePlan] | None = None
        #: episode id -> (kind, index: of the item in its list, or of the pass)
        self._where: dict[str, tuple[str, int]] = {}
        self.result: Any = None

    # -- the plan ----------------------------------------------------------------------------
    def episode_id(
        self, stage: int, seed: int, index: int, item: Item | None = None, **extra: Any
    ) -> str:
        """Stable id of one episode of the study."""
        if item is not None:
            extra = {"item": item.id, **extra}
        return teaching_episode_id(self.name, _KINDS[stage], seed, index, **extra)

    def spec_json(self) -> str:
        return self.spec.model_dump_json()

    def backend_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        spec = self.spec
        default_kind = parse_spec(spec.backend)[0]
        specs: dict[str, tuple[str, dict[str, Any]]] = {}
        for name in ("student", "teacher"):
            own = getattr(spec, name).backend
            chosen = own or spec.backend
            # backend_options belong to the scenario's backend: another kind gets none
            same = parse_spec(chosen)[0] == default_kind and not own
            specs[name] = (chosen, dict(spec.backend_options) if same else {})
        return specs

    def plan(self) -> list[EpisodePlan]:
        if self._plans is not None:
            return self._plans
        plans: list[EpisodePlan] = []

        def add(stage: int, seed: int, index: int, episode_id: str, extra: dict[str, Any]) -> None:
            condition = {"kind": _KINDS[stage], **extra, "seed": seed}
            self._where[episode_id] = (_KINDS[stage], index)
            plans.append(
                EpisodePlan(
                    len(plans),
                    0,
                    episode_id,
                    {"teaching": condition},
                    dict(self.personas),
                    stage,
                    seed,
                )
            )

        for seed, state in self.state.items():
            for r in state.observations:
                add(OBSERVE, seed, r.index, r.episode_id, {"item": r.item.id})
            for i, item in enumerate(self.test):
                add(ASSESS, seed, i, self.episode_id(ASSESS, seed, i, item), {"item": item.id})
            for r in state.records:
                add(TEACH, seed, r.index, r.episode_id, {"item": r.item.id})
            for j, (style, function, budget) in enumerate(multi_turn_passes(self.spec)):
                pass_id = self.episode_id(
                    PASS, seed, j, style=style, function=function, budget=budget
                )
                add(
                    PASS, seed, j, pass_id, {"style": style, "function": function, "budget": budget}
                )
        self._plans = plans
        return plans

    def restore(self, row: dict[str, Any]) -> EpisodePlan:
        plans = {p.episode_id: p for p in self.plan()}
        found = plans.get(row["episode_id"]) or plans.get(row.get("parent_episode_id") or "")
        if found is None:
            raise UserError(
                f"episode {row['episode_id']} is not part of the stored teaching experiment "
                "(its data or seeds changed)",
                where=f"episode {row['episode_id']}",
                fix="replay it with the data it was run on",
            )
        # a fork plays its parent's part under its own id
        return dataclasses.replace(found, episode_id=row["episode_id"], index=found.index)

    def on_backends(self, backends: Mapping[str, Backend]) -> None:
        for backend in backends.values():
            if isinstance(backend, SimulatedStudentBackend):
                backend.add_items([*self.test, *self.pool])

    # -- between stages ------------------------------------------------------------------------
    async def prepare(
        self,
        stage: int,
        outcomes: Mapping[str, Any],
        writer: TurnLogWriter | None,
        run_id: str = "",
    ) -> None:
        for state in self.state.values():
            if stage == ASSESS:
                self._observed(state, outcomes)
            elif stage == TEACH:
                self._assessed(state, outcomes)
                self._rank(state, hindsight=False)
                for record in state.records:
                    if record.assessed:
                        rows, explain = self._decisions(
                            state, record, hindsight=False, run_id=run_id
                        )
                        needed = explain | self.hindsight_styles
                        styles = [s for s in self.styles if s in needed]
                        state.decisions[record.item.id] = (
                            styles,
                            {"counterfactual": sorted(needed - explain)},
                        )
                        _write(writer, rows)
            elif stage == PASS:
                self._taught(state, outcomes)
                self._rank(state, hindsight=True)
                self._plan_passes(state)

    def _observed(self, state: SeedState, outcomes: Mapping[str, Any]) -> None:
        """Mental-model shots and personalized demos from the observation episodes."""
        for r in state.observations:
            fresh = ItemRecord(r.item, r.index, r.episode_id)
            fresh.absorb(outcomes.get(r.episode_id))
            state.observations[r.index] = fresh
        seen = [r for r in state.observations if r.pre and r.post.get("unpersonalized")]
        k = self.spec.teacher.mental_model_demos
        alone, explained = [], []
        for r in seen[:k]:
            assert r.pre is not None
            if r.pre.choice is not None:
                alone.append(r.item.shot(answer=r.pre.choice))
            post = r.post["unpersonalized"]
            if post.choice is not None:
                draft = r.drafts["unpersonalized"].text
                explained.append(r.item.shot(answer=post.choice, explanation=draft))
        state.shots.observed = alone + explained

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
            for r in helpful[: self.spec.teacher.explanation_demos]
        ]
        if personal:
            state.shots.explain["personalized"] = personal

    def _assessed(self, state: SeedState, outcomes: Mapping[str, Any]) -> None:
        self._observed(state, outcomes)
        for i, r in enumerate(state.records):
            fresh = ItemRecord(r.item, r.index, r.episode_id)
            assess_id = self.episode_id(ASSESS, state.seed, i, r.item)
            if assess_id in outcomes:
                fresh.absorb(outcomes[assess_id])
            else:
                fresh.error = "the assessment episode did not complete"
            state.records[i] = fresh

    def _taught(self, state: SeedState, outcomes: Mapping[str, Any]) -> None:
        self._assessed(state, outcomes)
        self._rank(state, hindsight=False)
        for r in state.records:
            if not r.assessed:
                continue
            if r.episode_id in outcomes:
                r.absorb(outcomes[r.episode_id])
            else:
                r.error = "the teaching episode did not complete"

    def _rank(self, state: SeedState, *, hindsight: bool) -> None:
        assessed = [r for r in state.records if r.assessed]
        if not hindsight:
            state.n_ranked = len(assessed)
        for style, function in self.ranked_arms:
            intervention = get_intervention(function)
            if intervention.needs_student_post != hindsight:
                continue
            estimates = [_estimate(r, style) for r in assessed]
            rng = random.Random(f"{state.seed}|{style}|{function}")
            ranking = intervention.rank(estimates, rng)
            state.rankings[(style, function)] = ranking
            state.positions[(style, function)] = {
                item: (i, score) for i, (item, score) in enumerate(ranking)
            }

    def _decisions(
        self, state: SeedState, record: ItemRecord, *, hindsight: bool, run_id: str
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The `interventions` rows of `record` and the styles some decision explains."""
        rows: list[dict[str, Any]] = []
        explain: set[str] = set()
        n = state.n_ranked
        for style, function, budget in self.grid:
            if get_intervention(function).needs_student_post != hindsight:
                continue
            ranking = state.rankings[(style, function)]
            position = state.positions[(style, function)].get(record.item.id)
            rank, score = position if position is not None else (None, None)
            k = budget_items(n, budget)
            decided = rank is not None and rank < k
            used = (min(rank, k) + int(decided)) if rank is not None else min(len(ranking), k)
            if decided:
                explain.add(style)
            estimate = _estimate(record, style)
            rows.append(
                {
                    "decision_id": "|".join(
                        (record.episode_id, style, function, str(budget), str(int(hindsight)))
                    ),
                    "run_id": run_id,
                    "episode_id": record.episode_id,
                    "item_id": record.item.id,
                    "seed": state.seed,
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

    def explained(self, state: SeedState, style: str, function: str, budget: float) -> set[str]:
        """Items explained by `function` at `budget` with `style` explanations."""
        return explained_at(state.rankings[(style, function)], state.n_ranked, budget)

    def _plan_passes(self, state: SeedState) -> None:
        mt = self.spec.multi_turn
        if mt is None:
            return
        n = len(state.records)
        for j, (style, function, budget) in enumerate(multi_turn_passes(self.spec)):
            explained = self.explained(state, style, function, budget)
            with_demos, alone = np.full(n, np.nan), np.full(n, np.nan)
            asked: list[Asked] = []
            for i, record in enumerate(state.records):
                if not record.assessed or record.item.id in explained or style not in record.drafts:
                    continue
                assert record.pre is not None
                alone[i] = float(record.pre.correct(record.item.answer))
                prior = [
                    r for r in state.records[:i] if r.item.id in explained and style in r.drafts
                ][-mt.demos :]
                if not prior:
                    with_demos[i] = alone[i]
                    continue
                shots = tuple(
                    r.item.shot(answer=r.drafts[style].target, explanation=r.drafts[style].text)
                    for r in prior
                )
                asked.append(Asked(i, record.item, shots, tuple(r.item.id for r in prior)))
            state.passes[j] = (asked, with_demos, alone)

    # -- episodes ------------------------------------------------------------------------------
    def _agents(self, backends: Mapping[str, Backend]) -> dict[str, Any]:
        spec = self.spec
        student = get_role(spec.student.role)(
            "student",
            self.personas["student"],
            sampling=Sampling(temperature=spec.student.temperature, max_tokens=4),
            render_mode=spec.render or backends["student"].render_mode,
            label=spec.student.label,
        )
        teacher = get_role(spec.teacher.role)(
            "teacher",
            self.personas["teacher"],
            sampling=spec.teacher.sampling,
            render_mode=spec.render or backends["teacher"].render_mode,
            label=spec.teacher.label,
        )
        assert isinstance(student, Student) and isinstance(teacher, Teacher)
        return {"student": student, "teacher": teacher}

    def job(self, plan: EpisodePlan, services: Services) -> EpisodeJob:
        self.plan()
        own = self._where.get(plan.episode_id)
        kind, index = own if own is not None else self._part(plan)
        state = self.state[plan.seed]
        common: dict[str, Any] = {
            "episode_id": plan.episode_id,
            "agents": self._agents(services.backends),
            "backends": dict(services.backends),
            "writer": services.writer,
            "run_seed": plan.seed,
            "cache": services.cache,
            "on_turn": services.on_turn,
        }
        if kind == "multi_turn":
            asked = state.passes[index][0] if index in state.passes else []
            passes = PassSteps(
                **common, asked=list(asked), student_temperature=self.spec.student.temperature
            )
            return EpisodeJob(
                self.pass_kind.graph, passes, self.pass_kind.input(), self.pass_kind.config()
            )
        if kind == "observe":
            record = ItemRecord(state.draw["observe"][index], index, plan.episode_id)
        elif kind == "assess":
            record = ItemRecord(self.test[index], index, plan.episode_id)
        else:
            base = state.records[index]
            record = ItemRecord(base.item, base.index, plan.episode_id)
            record.pre, record.teacher = base.pre, base.teacher
            record.drafts, record.c_pre, record.c_post = (
                dict(base.drafts),
                base.c_pre,
                dict(base.c_post),
            )
        steps = TeachingSteps(
            **common,
            record=record,
            shots=state.shots,
            settings=self.step_settings,
            observing=kind == "observe",
        )
        if kind == "teach":
            styles, decision = state.decisions.get(record.item.id, ([], {}))
            steps.explain, steps.decision = list(styles), dict(decision)
        graph = self.kinds["observe" if kind == "observe" else kind]
        return EpisodeJob(graph.graph, steps, graph.input(), graph.config())

    def _part(self, plan: EpisodePlan) -> tuple[str, int]:
        """(kind, index) of an episode planned elsewhere (a fork): its condition says."""
        condition = plan.condition["teaching"]
        kind = str(condition["kind"])
        if kind == "multi_turn":
            key = (condition["style"], condition["function"], condition["budget"])
            return kind, multi_turn_passes(self.spec).index(key)
        items = self.state[plan.seed].draw["observe"] if kind == "observe" else self.test
        return kind, next(i for i, it in enumerate(items) if it.id == condition["item"])

    # -- results -------------------------------------------------------------------------------
    def outcomes_of(self, state: SeedState, style: str) -> StyleOutcomes:
        """Per-item outcomes of one seed for `style` (failed items NaN)."""
        n = len(state.records)
        pre_c, pre_p = np.full(n, np.nan), np.full(n, np.nan)
        post_c, post_p = np.full(n, np.nan), np.full(n, np.nan)
        for i, r in enumerate(state.records):
            if r.error is not None or r.pre is None:
                continue
            gold = r.item.answer
            pre_c[i], pre_p[i] = float(r.pre.correct(gold)), r.pre.p(gold)
            post = r.post.get(style)
            if post is not None:
                post_c[i], post_p[i] = float(post.correct(gold)), post.p(gold)
        ids = tuple(r.item.id for r in state.records)
        return StyleOutcomes(ids, pre_c, pre_p, post_c, post_p, state.n_ranked)

    async def finish(
        self, outcomes: Mapping[str, Any], writer: TurnLogWriter | None = None, run_id: str = ""
    ) -> dict[str, Any]:
        """Record the hindsight decisions, then score every arm at every budget from the
        outcomes (and keep the result in `result`)."""
        from personae.experiments._runner import TeachingResult

        for stage in (ASSESS, TEACH, PASS):
            await self.prepare(stage, outcomes, None)
        for state in self.state.values():
            for record in state.records:
                if record.assessed:
                    _write(writer, self._decisions(state, record, hindsight=True, run_id=run_id)[0])
        spec, boot = self.spec, self.spec.bootstrap
        outcome = {
            s: {st: self.outcomes_of(state, st) for st in self.styles}
            for s, state in self.state.items()
        }
        rankings = {s: dict(state.rankings) for s, state in self.state.items()}
        curves = score_curves(
            outcome,
            rankings,
            self.arms,
            spec.budgets,
            resamples=boot.resamples,
            confidence=boot.confidence,
        )
        rows: list[MultiTurnRow] = []
        passes = multi_turn_passes(spec)
        for j, (style, function, budget) in enumerate(passes):
            with_demos, alone = [], []
            for state in self.state.values():
                asked, base, solo = state.passes[j]
                pass_id = self.episode_id(
                    PASS, state.seed, j, style=style, function=function, budget=budget
                )
                values = base.copy()
                found = outcomes.get(pass_id)
                if found is None:
                    values[:] = np.nan
                else:
                    for a in asked:
                        values[a.index] = float(found["asked"][a.item.id])
                with_demos.append(values)
                alone.append(solo)
            rows.append(
                score_multi_turn(
                    with_demos,
                    alone,
                    style=style,
                    function=function,
                    budget=budget,
                    resamples=boot.resamples,
                    confidence=boot.confidence,
                )
            )
        failed = sum(
            1 for state in self.state.values() for r in state.records if r.error is not None
        )
        self.result = TeachingResult(
            run_id="",
            db_path=Path(),
            scenario=spec.name,
            curves=curves,
            multi_turn=rows,
            outcomes=outcome,
            rankings=rankings,
            n_items=len(self.test),
            failed_items=failed,
            elapsed_s=0.0,
            budgets=tuple(spec.budgets),
            confidence=boot.confidence,
        )
        summary: dict[str, Any] = self.result.summary()
        return summary


def _write(writer: TurnLogWriter | None, rows: Sequence[dict[str, Any]]) -> None:
    if writer is not None:
        for row in rows:
            writer.upsert("interventions", row)


def _estimate(record: ItemRecord, style: str) -> Any:
    from personae.experiments._interventions import ItemEstimate

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


@register_study("teaching")
def _load(spec: dict[str, Any], base_dir: Path) -> Study:
    return TeachingStudy(
        parse_teaching(
            spec, source=f"stored teaching scenario {spec.get('name')!r}", base_dir=base_dir
        )
    )
