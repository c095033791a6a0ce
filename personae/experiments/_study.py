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
budget from the per-item outcomes with `score`, the one scoring path: a report of a finished
database (`teaching_report`) calls it too, on the outcomes stored there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from personae.agents import Item, Sampling, Student, Teacher, get_role
from personae.backends import Backend, parse_spec
from personae.errors import UserError
from personae.experiments._interventions import get_intervention
from personae.experiments._records import base_shots, split_pool, teaching_episode_id
from personae.experiments._scoring import MultiTurnRow, score_curves, score_multi_turn
from personae.experiments._seeds import Arm, SeedState
from personae.experiments._simulated import SimulatedStudentBackend
from personae.experiments._spec import TeachingScenario, load_data, load_persona, parse_teaching
from personae.graphs import Cast, get_graph
from personae.graphs._teaching import ItemRecord, PassSteps, TeachingSettings, TeachingSteps
from personae.runner import EpisodeJob, Services, Study, register_study
from personae.scenario import EpisodePlan
from personae.store import TurnLogWriter

if TYPE_CHECKING:
    from personae.experiments._runner import TeachingResult

OBSERVE, ASSESS, TEACH, PASS = 0, 1, 2, 3
_KINDS = {OBSERVE: "observe", ASSESS: "assess", TEACH: "teach", PASS: "multi_turn"}


def multi_turn_passes(scenario: TeachingScenario) -> list[tuple[str, str, float]]:
    """(style, function, budget) of every multi-turn pass, in order (none without `multi_turn`)."""
    mt = scenario.multi_turn
    if mt is None:
        return []
    style = mt.explanations or scenario.explanations[0]
    return [(style, f, b) for f in mt.functions for b in mt.budgets]


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
                assess_ids=[self.episode_id(ASSESS, seed, i, it) for i, it in enumerate(self.test)],
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
            old = row.get("condition", {}).get("teaching", {}).get("kind") == "item"
            raise UserError(
                f"episode {row['episode_id']} is not part of the stored teaching experiment "
                + ("(it was run by an earlier personae, whose teaching runs had other episodes)"
                   if old else "(its data files or seeds changed since)"),
                where=f"episode {row['episode_id']}",
                fix="step through it with 'personae replay DB EPISODE --print' or export it"
                if old else "replay it with the data it was run on",
            )  # fmt: skip
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
        self.rebuild(stage, outcomes, writer, run_id)

    def rebuild(
        self,
        stage: int,
        outcomes: Mapping[str, Any],
        writer: TurnLogWriter | None = None,
        run_id: str = "",
    ) -> None:
        """Every seed's state before `stage`, from the stored `outcomes` (the teach stage's
        decisions are queued on `writer` when one is given)."""
        teacher, mt = self.spec.teacher, self.spec.multi_turn
        for state in self.state.values():
            if stage >= ASSESS:
                state.observed(outcomes, mental_model_demos=teacher.mental_model_demos,
                               explanation_demos=teacher.explanation_demos)  # fmt: skip
            if stage >= TEACH:
                state.assessed(outcomes)
                state.rank(self.ranked_arms, hindsight=False)
            if stage == TEACH:
                for record in state.records:
                    if not record.assessed:
                        continue
                    rows, explain = state.decisions_for(record, self.grid, hindsight=False,
                                                        run_id=run_id)  # fmt: skip
                    needed = explain | self.hindsight_styles
                    styles = [s for s in self.styles if s in needed]
                    state.decisions[record.item.id] = (
                        styles, {"counterfactual": sorted(needed - explain)}
                    )  # fmt: skip
                    _write(writer, rows)
            if stage >= PASS:
                state.taught(outcomes)
                state.rank(self.ranked_arms, hindsight=True)
                if mt is not None:
                    state.plan_passes(multi_turn_passes(self.spec), mt.demos)

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
    async def finish(
        self, outcomes: Mapping[str, Any], writer: TurnLogWriter | None = None, run_id: str = ""
    ) -> dict[str, Any]:
        """Score every arm at every budget from the outcomes (kept in `result`), then record
        the hindsight decisions."""
        self.result = self.score(outcomes)
        for state in self.state.values():
            for record in state.records:
                if record.assessed:
                    hindsight = state.decisions_for(
                        record, self.grid, hindsight=True, run_id=run_id
                    )
                    _write(writer, hindsight[0])
        # the runner records the run's own seconds; the result's are not known yet
        return {k: v for k, v in self.result.summary().items() if k != "elapsed_s"}

    def score(self, outcomes: Mapping[str, Any]) -> TeachingResult:
        """The accuracy tables of the spec's arms, budgets and bootstrap, from the stored
        outcomes of the episodes (by id): what a run ends with and what a report of its
        database recomputes, through this one path. Writes nothing.

        Raises:
            MissingOutcomes: an arm explains an item at a budget with no with-explanation
                outcome among `outcomes` (scoring it would need model calls).
        """
        from personae.experiments._runner import TeachingResult

        self.rebuild(PASS, outcomes)
        spec, boot = self.spec, self.spec.bootstrap
        per_seed = {
            s: {st: state.outcomes(st) for st in self.styles} for s, state in self.state.items()
        }
        rankings = {s: dict(state.rankings) for s, state in self.state.items()}
        curves = score_curves(per_seed, rankings, self.arms, spec.budgets, resamples=boot.resamples,
                              confidence=boot.confidence, seed=boot.seed)  # fmt: skip
        rows: list[MultiTurnRow] = []
        for j, (style, function, budget) in enumerate(multi_turn_passes(spec)):
            ids = {s: self.episode_id(PASS, s, j, style=style, function=function, budget=budget)
                   for s in self.state}  # fmt: skip
            with_demos = [st.pass_outcome(j, outcomes.get(ids[s])) for s, st in self.state.items()]
            alone = [st.passes[j][2] for st in self.state.values()]
            rows.append(score_multi_turn(with_demos, alone, style=style, function=function,
                                         budget=budget, resamples=boot.resamples,
                                         confidence=boot.confidence, seed=boot.seed))  # fmt: skip
        failed = sum(r.error is not None for state in self.state.values() for r in state.records)
        return TeachingResult(
            run_id="",
            db_path=Path(),
            scenario=spec.name,
            curves=curves,
            multi_turn=rows,
            outcomes=per_seed,
            rankings=rankings,
            n_items=len(self.test),
            failed_items=failed,
            elapsed_s=0.0,
            budgets=tuple(spec.budgets),
            confidence=boot.confidence,
        )


def _write(writer: TurnLogWriter | None, rows: Sequence[dict[str, Any]]) -> None:
    if writer is not None:
        for row in rows:
            writer.upsert("interventions", row)


@register_study("teaching")
def _load(spec: dict[str, Any], base_dir: Path) -> Study:
    return TeachingStudy(
        parse_teaching(
            spec, source=f"stored teaching scenario {spec.get('name')!r}", base_dir=base_dir
        )
    )
