"""The per-item teaching graph: one item's steps, each a logged turn.

Each test item runs through a LangGraph `StateGraph`:

    student_pre → teacher_assess → decide ─(explained)→ explain → student_post → END
                                          └─(not explained)→ END

`student_pre`: the student answers alone (confidence from logprobs). `teacher_assess`: the teacher
answers itself, drafts one explanation per style (privately), and its mental model predicts the
student without (ĉ_pre) and with (ĉ_post) each draft. `decide`: waits until every item of the seed
is assessed (the `SeedRun` barrier in `personae.experiments._seed_run`), which ranks the items
with every intervention function and writes one `interventions` row per (style, function,
budget); it routes to `explain` when any of them explains this item (or a hindsight function
needs the outcome). `explain` delivers the explanation (a visible teacher turn) and
`student_post` has the student answer again with it. Every step is a turn in the turn log; the
teacher's private steps are turns whose text is a bracketed stage direction, their content in
`hidden_json`. Graph state (`ItemState`) holds only the styles to explain; everything else lives
in the `ItemRun` context and the log. The student's prompt is built from demonstrations, the
question and the delivered explanation only: nothing from the interventions table reaches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from personae.agents._teaching import letters
from personae.backends import GenerationResult
from personae.experiments._confidence import Answer, read_answer
from personae.experiments._records import Draft, ItemRecord, TeachingEpisode

if TYPE_CHECKING:
    from personae.experiments._seed_run import SeedRun

Mode = Literal["observe", "test"]


# -- one item through the graph --------------------------------------------------------------


@dataclass
class ItemRun:
    """The LangGraph context of one item: its steps, each a logged turn."""

    seed_run: SeedRun
    record: ItemRecord
    episode: TeachingEpisode
    mode: Mode

    def __post_init__(self) -> None:
        self.ctx = self.seed_run.ctx
        self.item = self.record.item
        self.letters = letters(len(self.record.item.options))

    def _tags(self, turn: int, step: str, **extra: Any) -> dict[str, Any]:
        return {
            "episode_id": self.episode.episode_id,
            "turn": turn,
            "item_id": self.item.id,
            "step": step,
            **extra,
        }

    def _hidden(self, step: str, answer: Answer, **extra: Any) -> dict[str, Any]:
        gold = self.item.answer
        return {
            "step": step,
            "item_id": self.item.id,
            "choice": self.letters[answer.choice] if answer.choice is not None else None,
            "probs": [round(p, 6) for p in answer.probs],
            "p_gold": round(answer.p(gold), 6),
            "correct": answer.correct(gold),
            "from_logprobs": answer.from_logprobs,
            **extra,
        }

    def _said(self, answer: Answer, result: GenerationResult) -> str:
        if answer.choice is None:
            return result.text.strip() or "..."
        return f"({self.letters[answer.choice]}) {self.item.options[answer.choice]}"

    async def _student(self, step: str, explanation: str | None, style: str | None) -> Answer:
        ep = self.episode
        turn = ep.reserve()
        shots = self.seed_run.shots.student
        extra = {"style": style} if style else {}
        request = self.ctx.student.answer_request(
            shots,
            self.item.shot(explanation=explanation),
            temperature=self.ctx.scenario.student.temperature,
            seed=ep.seed_for(turn, "student"),
            tags=self._tags(turn, step, **extra),
        )
        result, call_id = await ep.call("student", turn, request)
        answer = read_answer(result, self.letters)
        hidden = self._hidden(step, answer, **extra)
        ep.log_turn(turn, "student", self._said(answer, result), hidden, call_id)
        return answer

    async def student_pre(self) -> None:
        """The student answers on its own."""
        self.record.pre = await self._student("student_pre", None, None)

    async def _teacher_answer(self) -> Answer:
        ep = self.episode
        turn = ep.reserve()
        request = self.ctx.teacher.answer_request(
            self.seed_run.shots.teacher_answer,
            self.item.shot(),
            temperature=self.ctx.scenario.teacher.temperature,
            seed=ep.seed_for(turn, "teacher"),
            tags=self._tags(turn, "teacher_answer"),
        )
        result, call_id = await ep.call("teacher", turn, request)
        answer = read_answer(result, self.letters)
        hidden = self._hidden("teacher_answer", answer, private=True, output=result.text)
        ep.log_turn(turn, "teacher", "[answers privately]", hidden, call_id)
        return answer

    def _target(self, style: str) -> int:
        gold = self.item.answer
        probs = self.record.teacher.probs if self.record.teacher else None
        if style == "misaligned":  # the non-gold option the teacher finds most plausible
            wrong = [i for i in range(len(self.item.options)) if i != gold]
            return max(wrong, key=lambda i: (probs[i] if probs else 0.0, -i))
        if self.ctx.scenario.teacher.explain_toward == "gold" or self.record.teacher is None:
            return gold
        choice = self.record.teacher.choice
        return choice if choice is not None else int(np.argmax(self.record.teacher.probs))

    async def _draft(self, style: str, turn: int) -> Draft:
        ep = self.episode
        target = self._target(style)
        teacher = self.ctx.teacher
        query = self.item.shot()
        request = teacher.explain_request(
            self.seed_run.shots.explain[style],
            query,
            target,
            seed=ep.seed_for(turn, "teacher"),
            tags=self._tags(turn, "explain", style=style, target=self.letters[target]),
        )
        result, call_id = await ep.call("teacher", turn, request)
        text = teacher.finish_explanation(
            result.text, query, target, truncated=result.finish_reason == "length"
        )
        rationale = (
            text.rsplit(" So the answer is (", 1)[0] if " So the answer is (" in text else ""
        )
        hidden = {
            "step": "draft",
            "item_id": self.item.id,
            "style": style,
            "target": self.letters[target],
            "text": text,
            "private": True,
        }
        ep.log_turn(turn, "teacher", f"[drafts an explanation: {style}]", hidden, call_id)
        return Draft(style, target, rationale, text)

    async def _simulate(self, turn: int, style: str | None) -> float:
        """The mental model's probability that the student answers correctly."""
        ep = self.episode
        shots = self.seed_run.shots
        draft = self.record.drafts.get(style) if style else None
        observed = shots.observed
        step = "simulate_post" if draft else "simulate_pre"
        extra = {"style": style} if style else {}
        request = self.ctx.teacher.simulate_request(
            observed,
            self.item.shot(explanation=draft.text if draft else None),
            seed=ep.seed_for(turn, "teacher"),
            tags=self._tags(turn, step, **extra),
        )
        result, call_id = await ep.call("teacher", turn, request)
        answer = read_answer(result, self.letters)
        hidden = self._hidden(step, answer, private=True, **extra)
        label = f"[predicts the student: {'with ' + style if style else 'alone'}]"
        ep.log_turn(turn, "teacher", label, hidden, call_id)
        return answer.p(self.item.answer)

    async def teacher_assess(self) -> None:
        """The teacher's private work: its own answer, a draft per style and, for test items,
        the mental model's ĉ_pre and ĉ_post."""
        record, ep = self.record, self.episode
        test = self.mode == "test"
        if test or self.ctx.scenario.teacher.explain_toward == "own_answer":
            record.teacher = await self._teacher_answer()
        styles = self.ctx.styles if test else ["unpersonalized"]
        turns = [ep.reserve() for _ in styles]
        pre_turn = ep.reserve() if test else None
        jobs: list[Any] = [self._draft(s, t) for s, t in zip(styles, turns, strict=True)]
        if pre_turn is not None:
            jobs.append(self._simulate(pre_turn, None))
        done = await asyncio.gather(*jobs)
        for style, draft in zip(styles, done, strict=False):
            record.drafts[style] = draft
        if not test:
            return
        record.c_pre = float(done[-1])
        post_turns = [ep.reserve() for _ in styles]
        c_posts = await asyncio.gather(
            *(self._simulate(t, s) for s, t in zip(styles, post_turns, strict=True))
        )
        record.c_post = {s: float(c) for s, c in zip(styles, c_posts, strict=True)}

    async def decide(self) -> list[str]:
        """Wait for the seed's ranking, record every decision, and return the styles whose
        explanation is delivered."""
        ep, record = self.episode, self.record
        if self.mode == "observe":
            styles = ["unpersonalized"]
            ep.log_turn(ep.reserve(), "teacher", "[decides]",
                        {"step": "decide", "explain": styles, "reason": "observation"})  # fmt: skip
            return styles
        record.arrived = True
        self.seed_run.arrive()
        await self.seed_run.ranked()
        decided = self.seed_run._write_decisions(record, hindsight=False)
        needed = decided | self.ctx.hindsight_styles
        styles = [s for s in self.ctx.styles if s in needed]
        hidden = {
            "step": "decide",
            "item_id": self.item.id,
            "explain": styles,
            "counterfactual": sorted(needed - decided),
        }
        ep.log_turn(ep.reserve(), "teacher", "[decides]", hidden)
        return styles

    async def explain(self, styles: Sequence[str]) -> None:
        """Deliver each chosen explanation: a visible teacher turn."""
        for style in styles:
            draft = self.record.drafts[style]
            hidden = {"step": "explain", "item_id": self.item.id, "style": style,
                      "target": self.letters[draft.target]}  # fmt: skip
            self.episode.log_turn(self.episode.reserve(), "teacher", draft.text, hidden)
            self.record.delivered.append(style)

    async def student_post(self, styles: Sequence[str]) -> None:
        """The student answers again, once per delivered explanation."""
        answers = await asyncio.gather(
            *(self._student("student_post", self.record.drafts[s].text, s) for s in styles)
        )
        for style, answer in zip(styles, answers, strict=True):
            self.record.post[style] = answer


# -- the graph -------------------------------------------------------------------------------


class ItemState(TypedDict):
    """Graph state: only the explanation styles `decide` chose."""

    explain: list[str]


def build_teaching_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the per-item graph; run it with `ainvoke({"explain": []}, context=item_run)`."""

    async def student_pre(state: ItemState, runtime: Runtime[ItemRun]) -> dict[str, Any]:
        await runtime.context.student_pre()
        return {}

    async def teacher_assess(state: ItemState, runtime: Runtime[ItemRun]) -> dict[str, Any]:
        await runtime.context.teacher_assess()
        return {}

    async def decide(state: ItemState, runtime: Runtime[ItemRun]) -> dict[str, Any]:
        return {"explain": await runtime.context.decide()}

    async def explain(state: ItemState, runtime: Runtime[ItemRun]) -> dict[str, Any]:
        await runtime.context.explain(state["explain"])
        return {}

    async def student_post(state: ItemState, runtime: Runtime[ItemRun]) -> dict[str, Any]:
        await runtime.context.student_post(state["explain"])
        return {}

    def route(state: ItemState) -> str:
        return "explain" if state["explain"] else END

    builder: StateGraph[ItemState, ItemRun, ItemState, ItemState] = StateGraph(
        ItemState, context_schema=ItemRun
    )
    builder.add_node("student_pre", student_pre)
    builder.add_node("teacher_assess", teacher_assess)
    builder.add_node("decide", decide)
    builder.add_node("explain", explain)
    builder.add_node("student_post", student_post)
    builder.add_edge(START, "student_pre")
    builder.add_edge("student_pre", "teacher_assess")
    builder.add_edge("teacher_assess", "decide")
    builder.add_conditional_edges("decide", route, ["explain", END])
    builder.add_edge("explain", "student_post")
    builder.add_edge("student_post", END)
    return builder.compile(name="teaching")
