"""The teaching experiment's graphs: one test item's steps, each a logged turn.

An item goes through two episodes (two stages of the run, so that every item is assessed before
any is explained, and a resumed run ranks from the stored assessments):

    assess:  student_pre → teacher_assess → END
    teach:   decide ─(explained)→ explain → student_post → END
                    └─(not explained)→ END

and an observation item (a pool item the teacher watches the student on) through one:

    observe: student_pre → teacher_assess → decide → explain → student_post → END

`student_pre`: the student answers alone (confidence from logprobs). `teacher_assess`: the teacher
answers itself, drafts one explanation per style (privately), and, for test items, its mental
model predicts the student without (ĉ_pre) and with (ĉ_post) each draft. `decide` logs the
decision the study made from every item's assessment (`TeachingSteps.explain`); `explain`
delivers each chosen explanation (a visible teacher turn); `student_post` has the student answer
again with it. The teacher's private steps are turns heard by the teacher alone (their visible
text a bracketed stage direction, their content in `hidden_json`). A `teaching_pass` episode
(multi-turn) asks the student later unexplained items with earlier explained ones as
demonstrations. Each episode's `ItemRecord` (answers, drafts, estimates) is its outcome, read by
the study's later stages. The student's prompt is built from demonstrations, the question and the
delivered explanation only: nothing from the interventions table reaches it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from personae.agents import Answer, Item, Shot, Student, Teacher, letters, read_answer
from personae.backends import GenerationResult
from personae.graphs._episode import Episode, call_id
from personae.graphs._registry import GraphKind, GraphOptions, register_graph

Phase = Literal["observe", "assess", "teach"]
PRIVATE = ("teacher",)


# -- records ---------------------------------------------------------------------------------


def answer_json(answer: Answer | None) -> dict[str, Any] | None:
    """An `Answer` as JSON (for outcomes)."""
    if answer is None:
        return None
    return {
        "choice": answer.choice,
        "probs": list(answer.probs),
        "from_logprobs": answer.from_logprobs,
    }


def answer_of(data: dict[str, Any] | None) -> Answer | None:
    """An `Answer` from `answer_json`'s output."""
    if data is None:
        return None
    return Answer(
        data["choice"], tuple(float(p) for p in data["probs"]), bool(data["from_logprobs"])
    )


@dataclass
class Draft:
    """An explanation the teacher wrote (delivered only if it intervenes)."""

    style: str
    target: int
    rationale: str
    text: str


@dataclass
class ItemRecord:
    """Everything an item's episodes produced (their outcome; kept outside graph state)."""

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
    error: str | None = None

    @property
    def assessed(self) -> bool:
        """Assessed, with the estimates every intervention function may read."""
        return self.error is None and self.pre is not None and self.teacher is not None

    def outcome(self) -> dict[str, Any]:
        """The record as JSON (the episode's `outcome_json`)."""
        return {
            "item_id": self.item.id,
            "pre": answer_json(self.pre),
            "teacher": answer_json(self.teacher),
            "drafts": {s: vars(d) for s, d in self.drafts.items()},
            "c_pre": None if math.isnan(self.c_pre) else self.c_pre,
            "c_post": self.c_post,
            "post": {s: answer_json(a) for s, a in self.post.items()},
            "delivered": self.delivered,
        }

    def absorb(self, outcome: dict[str, Any] | None) -> None:
        """Fill in what an earlier episode of this item stored (its `outcome`)."""
        if not outcome:
            return
        self.pre = answer_of(outcome.get("pre")) or self.pre
        self.teacher = answer_of(outcome.get("teacher")) or self.teacher
        self.drafts.update({s: Draft(**d) for s, d in (outcome.get("drafts") or {}).items()})
        c_pre = outcome.get("c_pre")
        if c_pre is not None:
            self.c_pre = float(c_pre)
        self.c_post.update({s: float(c) for s, c in (outcome.get("c_post") or {}).items()})
        for style, answer in (outcome.get("post") or {}).items():
            if (found := answer_of(answer)) is not None:
                self.post[style] = found
        self.delivered.extend(s for s in outcome.get("delivered") or [] if s not in self.delivered)


@dataclass
class SeedShots:
    """The demonstrations one seed's prompts use."""

    student: list[Shot]
    teacher_answer: list[Shot]
    explain: dict[str, list[Shot]]
    #: The student's observed answers, alone then with explanations (the mental model's shots).
    observed: list[Shot] = field(default_factory=list)


@dataclass(frozen=True)
class TeachingSettings:
    """What every item's steps share: styles and the temperatures and targets the spec sets."""

    styles: tuple[str, ...]
    student_temperature: float = 0.0
    teacher_temperature: float = 0.0
    explain_toward: str = "own_answer"


# -- one item's steps ----------------------------------------------------------------------------


@dataclass
class TeachingSteps(Episode):
    """The LangGraph context of one teaching item episode: its steps, each a logged turn.

    Attributes:
        record: The item's record (filled by this episode; prefilled from the assessment for
            `teach`); its `outcome()` becomes the episode's outcome.
        shots: The seed's demonstrations.
        settings: Styles, temperatures, targets.
        explain: `teach`: the styles to deliver (decided by the study from every assessment).
        decision: `teach`: what the `decide` turn records (hidden).
    """

    record: ItemRecord | None = None
    shots: SeedShots | None = None
    settings: TeachingSettings = TeachingSettings(("unpersonalized",))
    explain: list[str] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)
    observing: bool = False

    @property
    def item(self) -> Item:
        assert self.record is not None
        return self.record.item

    @property
    def student(self) -> Student:
        agent = self.agents["student"]
        assert isinstance(agent, Student)
        return agent

    @property
    def teacher(self) -> Teacher:
        agent = self.agents["teacher"]
        assert isinstance(agent, Teacher)
        return agent

    @property
    def seed_shots(self) -> SeedShots:
        assert self.shots is not None
        return self.shots

    def _tags(self, turn: int, step: str, **extra: Any) -> dict[str, Any]:
        cid = call_id(self.episode_id, turn)
        return {**self.tags(turn, cid), "item_id": self.item.id, "step": step, **extra}

    def _hidden(self, step: str, answer: Answer, **extra: Any) -> dict[str, Any]:
        gold, marks = self.item.answer, letters(len(self.item.options))
        return {
            "step": step,
            "item_id": self.item.id,
            "choice": marks[answer.choice] if answer.choice is not None else None,
            "probs": [round(p, 6) for p in answer.probs],
            "p_gold": round(answer.p(gold), 6),
            "correct": answer.correct(gold),
            "from_logprobs": answer.from_logprobs,
            **extra,
        }

    def said(self, answer: Answer, result: GenerationResult) -> str:
        """What the turn shows of an answer: the picked option."""
        if answer.choice is None:
            return result.text.strip() or "..."
        return (
            f"({letters(len(self.item.options))[answer.choice]}) {self.item.options[answer.choice]}"
        )

    def step(
        self,
        turn: int,
        name: str,
        text: str,
        hidden: dict[str, Any],
        call: str | None = None,
        *,
        private: bool = False,
    ) -> None:
        """Log one step as turn `turn` (a private one is heard by the teacher alone)."""
        line = self.utterance(name, text, "line", PRIVATE if private else None)
        self.log_turn(turn, line, hidden, call)

    async def _student(self, step: str, explanation: str | None, style: str | None) -> Answer:
        turn = self.reserve()
        extra = {"style": style} if style else {}
        request = self.student.answer_request(
            self.seed_shots.student,
            self.item.shot(explanation=explanation),
            temperature=self.settings.student_temperature,
            seed=self.seed_for(turn, "student"),
            tags=self._tags(turn, step, **extra),
        )
        result, cid = await self.call("student", turn, request)
        answer = read_answer(result, letters(len(self.item.options)))
        self.step(
            turn, "student", self.said(answer, result), self._hidden(step, answer, **extra), cid
        )
        return answer

    async def student_pre(self) -> None:
        """The student answers on its own."""
        assert self.record is not None
        self.record.pre = await self._student("student_pre", None, None)

    async def _teacher_answer(self) -> Answer:
        turn = self.reserve()
        request = self.teacher.answer_request(
            self.seed_shots.teacher_answer,
            self.item.shot(),
            temperature=self.settings.teacher_temperature,
            seed=self.seed_for(turn, "teacher"),
            tags=self._tags(turn, "teacher_answer"),
        )
        result, cid = await self.call("teacher", turn, request)
        answer = read_answer(result, letters(len(self.item.options)))
        hidden = self._hidden("teacher_answer", answer, private=True, output=result.text)
        self.step(turn, "teacher", "[answers privately]", hidden, cid, private=True)
        return answer

    def _target(self, style: str) -> int:
        record, gold = self.record, self.item.answer
        assert record is not None
        probs = record.teacher.probs if record.teacher else None
        if style == "misaligned":  # the non-gold option the teacher finds most plausible
            wrong = [i for i in range(len(self.item.options)) if i != gold]
            return max(wrong, key=lambda i: (probs[i] if probs else 0.0, -i))
        if self.settings.explain_toward == "gold" or record.teacher is None:
            return gold
        choice, probs = record.teacher.choice, record.teacher.probs
        return (
            choice if choice is not None else max(range(len(probs)), key=lambda i: (probs[i], -i))
        )

    async def _draft(self, style: str, turn: int) -> Draft:
        target = self._target(style)
        marks = letters(len(self.item.options))
        query = self.item.shot()
        request = self.teacher.explain_request(
            self.seed_shots.explain[style],
            query,
            target,
            seed=self.seed_for(turn, "teacher"),
            tags=self._tags(turn, "explain", style=style, target=marks[target]),
        )
        result, cid = await self.call("teacher", turn, request)
        text = self.teacher.finish_explanation(
            result.text, query, target, truncated=result.finish_reason == "length"
        )
        rationale = (
            text.rsplit(" So the answer is (", 1)[0] if " So the answer is (" in text else ""
        )
        hidden = {
            "step": "draft",
            "item_id": self.item.id,
            "style": style,
            "target": marks[target],
            "text": text,
            "private": True,
        }
        self.step(turn, "teacher", f"[drafts an explanation: {style}]", hidden, cid, private=True)
        return Draft(style, target, rationale, text)

    async def _simulate(self, turn: int, style: str | None) -> float:
        """The mental model's probability that the student answers correctly."""
        record = self.record
        assert record is not None
        draft = record.drafts.get(style) if style else None
        step = "simulate_post" if draft else "simulate_pre"
        extra = {"style": style} if style else {}
        request = self.teacher.simulate_request(
            self.seed_shots.observed,
            self.item.shot(explanation=draft.text if draft else None),
            seed=self.seed_for(turn, "teacher"),
            tags=self._tags(turn, step, **extra),
        )
        result, cid = await self.call("teacher", turn, request)
        answer = read_answer(result, letters(len(self.item.options)))
        label = f"[predicts the student: {'with ' + style if style else 'alone'}]"
        self.step(
            turn,
            "teacher",
            label,
            self._hidden(step, answer, private=True, **extra),
            cid,
            private=True,
        )
        return answer.p(self.item.answer)

    async def teacher_assess(self) -> None:
        """The teacher's private work: its own answer, a draft per style and, for test items,
        the mental model's ĉ_pre and ĉ_post."""
        record = self.record
        assert record is not None
        test = not self.observing
        if test or self.settings.explain_toward == "own_answer":
            record.teacher = await self._teacher_answer()
        styles = list(self.settings.styles) if test else ["unpersonalized"]
        turns = [self.reserve() for _ in styles]
        pre_turn = self.reserve() if test else None
        jobs: list[Any] = [self._draft(s, t) for s, t in zip(styles, turns, strict=True)]
        if pre_turn is not None:
            jobs.append(self._simulate(pre_turn, None))
        done = await asyncio.gather(*jobs)
        for style, draft in zip(styles, done, strict=False):
            record.drafts[style] = draft
        if not test:
            return
        record.c_pre = float(done[-1])
        post_turns = [self.reserve() for _ in styles]
        c_posts = await asyncio.gather(
            *(self._simulate(t, s) for s, t in zip(styles, post_turns, strict=True))
        )
        record.c_post = {s: float(c) for s, c in zip(styles, c_posts, strict=True)}

    def decide(self) -> list[str]:
        """Log the decision (made by the study from every item's assessment); return the styles
        whose explanation is delivered."""
        if self.observing:
            self.explain = ["unpersonalized"]
            hidden = {"step": "decide", "explain": self.explain, "reason": "observation"}
        else:
            hidden = {
                "step": "decide",
                "item_id": self.item.id,
                **self.decision,
                "explain": self.explain,
            }
        self.step(self.reserve(), "teacher", "[decides]", hidden, private=True)
        return list(self.explain)

    def deliver(self, styles: Sequence[str]) -> None:
        """Deliver each chosen explanation: a visible teacher turn."""
        record = self.record
        assert record is not None
        for style in styles:
            draft = record.drafts[style]
            hidden = {
                "step": "explain",
                "item_id": self.item.id,
                "style": style,
                "target": letters(len(self.item.options))[draft.target],
            }
            self.step(self.reserve(), "teacher", draft.text, hidden)
            record.delivered.append(style)

    async def student_post(self, styles: Sequence[str]) -> None:
        """The student answers again, once per delivered explanation."""
        record = self.record
        assert record is not None
        answers = await asyncio.gather(
            *(self._student("student_post", record.drafts[s].text, s) for s in styles)
        )
        for style, answer in zip(styles, answers, strict=True):
            record.post[style] = answer

    def finish_item(self, reason: str) -> None:
        """Record the episode's outcome and end reason."""
        assert self.record is not None
        self.outcome = self.record.outcome()
        self.end_reason = reason


class ItemState(TypedDict):
    """Graph state: only the explanation styles `decide` chose."""

    explain: list[str]


class TeachingItemOptions(GraphOptions):
    """Options of the `teaching_item` graph."""

    phase: Phase = Field("assess", description="observe | assess | teach")


@register_graph("teaching_item")
class TeachingItem(GraphKind):
    """One teaching item's steps (run by `personae experiment teaching`, not by scenarios)."""

    options_model = TeachingItemOptions
    standalone: ClassVar[bool] = False

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        assert isinstance(self.options, TeachingItemOptions)
        return build_item_graph(self.options.phase)

    def input(self) -> dict[str, Any]:
        return {"explain": []}


def build_item_graph(phase: Phase) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the steps of `phase`; run with `ainvoke({"explain": []}, context=steps)`."""

    async def student_pre(state: ItemState, runtime: Runtime[TeachingSteps]) -> dict[str, Any]:
        await runtime.context.student_pre()
        return {}

    async def teacher_assess(state: ItemState, runtime: Runtime[TeachingSteps]) -> dict[str, Any]:
        await runtime.context.teacher_assess()
        if phase == "assess":
            runtime.context.finish_item("assessed")
        return {}

    async def decide(state: ItemState, runtime: Runtime[TeachingSteps]) -> dict[str, Any]:
        styles = runtime.context.decide()
        if not styles:
            runtime.context.finish_item("not_explained")
        return {"explain": styles}

    async def explain(state: ItemState, runtime: Runtime[TeachingSteps]) -> dict[str, Any]:
        runtime.context.deliver(state["explain"])
        return {}

    async def student_post(state: ItemState, runtime: Runtime[TeachingSteps]) -> dict[str, Any]:
        steps = runtime.context
        await steps.student_post(state["explain"])
        steps.finish_item("observed" if phase == "observe" else "explained")
        return {}

    async def route(state: ItemState) -> str:
        return "explain" if state["explain"] else END

    builder: StateGraph[ItemState, TeachingSteps, ItemState, ItemState] = StateGraph(
        ItemState, context_schema=TeachingSteps
    )
    first = {"observe": "student_pre", "assess": "student_pre", "teach": "decide"}[phase]
    if phase in ("observe", "assess"):
        builder.add_node("student_pre", student_pre)
        builder.add_node("teacher_assess", teacher_assess)
        builder.add_edge("student_pre", "teacher_assess")
    if phase == "assess":
        builder.add_edge("teacher_assess", END)
    else:
        builder.add_node("decide", decide)
        builder.add_node("explain", explain)
        builder.add_node("student_post", student_post)
        if phase == "observe":
            builder.add_edge("teacher_assess", "decide")
        builder.add_conditional_edges("decide", route, ["explain", END])
        builder.add_edge("explain", "student_post")
        builder.add_edge("student_post", END)
    builder.add_edge(START, first)
    return builder.compile(name=f"teaching_{phase}")


# -- multi-turn passes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    """One question of a multi-turn pass: the item and the explained items before it."""

    index: int
    item: Item
    demos: tuple[Shot, ...]
    demo_ids: tuple[str, ...]


@dataclass
class PassSteps(Episode):
    """The LangGraph context of a multi-turn pass: the questions it asks."""

    asked: list[Asked] = field(default_factory=list)
    student_temperature: float = 0.0

    async def ask_all(self) -> None:
        """Ask every question (concurrently), each a logged turn; outcome: correct per item."""
        turns = [self.reserve() for _ in self.asked]
        answers = await asyncio.gather(
            *(self._ask(t, a) for t, a in zip(turns, self.asked, strict=True))
        )
        self.outcome = {
            "asked": {a.item.id: answers[i] for i, a in enumerate(self.asked)},
        }
        self.end_reason = "multi_turn"

    async def _ask(self, turn: int, asked: Asked) -> bool:
        student = self.agents["student"]
        assert isinstance(student, Student)
        item = asked.item
        cid = call_id(self.episode_id, turn)
        request = student.answer_request(
            asked.demos,
            item.shot(),
            temperature=self.student_temperature,
            seed=self.seed_for(turn, "student"),
            tags={**self.tags(turn, cid), "item_id": item.id, "step": "student_multi_turn"},
        )
        result, call = await self.call("student", turn, request)
        marks = letters(len(item.options))
        answer = read_answer(result, marks)
        said = (
            f"({marks[answer.choice]}) {item.options[answer.choice]}"
            if answer.choice is not None
            else result.text
        )
        hidden = {
            "step": "student_multi_turn",
            "item_id": item.id,
            "demos": list(asked.demo_ids),
            "p_gold": round(answer.p(item.answer), 6),
            "correct": answer.correct(item.answer),
        }
        self.log_turn(turn, self.utterance("student", said), hidden, call)
        return answer.correct(item.answer)


class PassState(TypedDict):
    """Graph state of a pass: nothing but the end reason."""

    end_reason: str | None


@register_graph("teaching_pass")
class TeachingPass(GraphKind):
    """A multi-turn pass of the teaching experiment (run by `personae experiment teaching`)."""

    standalone: ClassVar[bool] = False

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        async def ask(state: PassState, runtime: Runtime[PassSteps]) -> dict[str, Any]:
            await runtime.context.ask_all()
            return {"end_reason": "multi_turn"}

        builder: StateGraph[PassState, PassSteps, PassState, PassState] = StateGraph(
            PassState, context_schema=PassSteps
        )
        builder.add_node("ask", ask)
        builder.add_edge(START, "ask")
        builder.add_edge("ask", END)
        return builder.compile(name="teaching_pass")
