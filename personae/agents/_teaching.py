"""Teaching roles: a `student` that answers multiple-choice questions and a `teacher` that answers,
explains and predicts the student with a mental model (theory of mind).

Prompts are built from plain `Shot`s (question, options, optional explanation, answer), so these
agents know nothing about datasets, budgets or intervention decisions: the student's prompt holds
only demonstrations, the question, its options and, when the teacher intervenes, the teacher's
explanation. Every answer is a constrained choice among the option letters, so even a tiny base
model produces a valid answer, and the backend's logprobs give a probability per option
(`read_answer`: the first generated token's alternatives, renormalised over the options; letters
missing from the top k get the smallest logprob seen; without logprobs, as from scripted
backends, the picked option gets probability 1). An `Item` is one multiple-choice question.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from personae.agents._base import Agent
from personae.agents._personas import Strict
from personae.agents._registry import register_role
from personae.backends import GenerationRequest, GenerationResult, Message

#: Label of the teacher's explanation inside every prompt (the simulated student looks for it).
EXPLANATION_LABEL = "Teacher's explanation:"
_SPACES = re.compile(r"\s+")
_CUT = re.compile(r"\n\s*\n|\n\s*(Question|Options|Answer|Explanation)\s*:", re.IGNORECASE)


def letters(n: int) -> tuple[str, ...]:
    """The option letters A, B, ... for `n` options."""
    return tuple(chr(ord("A") + i) for i in range(n))


def conclusion(letter: str, option: str) -> str:
    """The sentence every explanation ends with: the answer it argues for."""
    return f"So the answer is ({letter}) {option}."


@dataclass(frozen=True, slots=True)
class Shot:
    """One demonstration or the question being asked.

    Args:
        question: The question text.
        options: The answer options, in display order.
        answer: Index of the answer shown with the demonstration (None for the question asked).
        explanation: An explanation shown with it, or None.
    """

    question: str
    options: tuple[str, ...]
    answer: int | None = None
    explanation: str | None = None

    def block(self, *, answer_label: str = "Answer:", with_answer: bool = True) -> str:
        """The shot as prompt text; ends with the answer line when it has an answer."""
        opts = " ".join(
            f"({ch}) {o}" for ch, o in zip(letters(len(self.options)), self.options, strict=True)
        )
        lines = [f"Question: {self.question}", f"Options: {opts}"]
        if self.explanation:
            lines.append(f"{EXPLANATION_LABEL} {self.explanation}")
        if with_answer and self.answer is not None:
            ch = letters(len(self.options))[self.answer]
            lines.append(f"{answer_label} ({ch})")
        return "\n".join(lines)


class StudentPersona(Strict):
    """Who the student is (shown in the student's own prompt only)."""

    id: str = Field("student", pattern=r"^[a-z0-9_]+$")
    name: str = "The student"
    description: str = ""


class TeacherPersona(Strict):
    """Who the teacher is (shown in the teacher's own prompts only)."""

    id: str = Field("teacher", pattern=r"^[a-z0-9_]+$")
    name: str = "The teacher"
    description: str = ""


class _ChoiceAgent(Agent):
    """Shared rendering: few-shot blocks, then the question, then a constrained choice."""

    def _header(self) -> str:
        description = str(getattr(self.persona, "description", "") or "").strip()
        return f"{self.transcript_title}\n{description}".strip()

    def answer_request(
        self,
        shots: Sequence[Shot],
        query: Shot,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        tags: dict[str, Any] | None = None,
        logprobs: int = 20,
    ) -> GenerationRequest:
        """The request for this agent's own answer to `query` (for the student, the query's
        explanation, if any, is the teacher's intervention)."""
        return self._choice_request(
            shots,
            query,
            answer_label="Answer:",
            instruction="Reply with the letter of the correct option only.",
            temperature=temperature,
            seed=seed,
            tags=tags or {},
            logprobs=logprobs,
        )

    def _choice_request(
        self,
        shots: Sequence[Shot],
        query: Shot,
        *,
        answer_label: str,
        instruction: str,
        temperature: float,
        seed: int | None,
        tags: dict[str, Any],
        logprobs: int,
        header: str | None = None,
    ) -> GenerationRequest:
        header = self._header() if header is None else header
        body = "\n\n".join(s.block(answer_label=answer_label) for s in shots)
        question = query.block(answer_label=answer_label, with_answer=False)
        common: dict[str, Any] = {
            "temperature": temperature,
            "max_tokens": 4,
            "seed": seed,
            "choices": letters(len(query.options)),
            "logprobs": logprobs,
            "tags": {**tags, "agent": self.name, "role": self.role},
        }
        if self.render_mode == "chat":
            user = "\n\n".join(p for p in (body, question, instruction) if p)
            return GenerationRequest(
                messages=(Message("system", header), Message("user", user)), **common
            )
        prompt = "\n\n".join(p for p in (header, body) if p)
        return GenerationRequest(prompt=f"{prompt}\n\n{question}\n{answer_label} (", **common)


@register_role("student")
class Student(_ChoiceAgent):
    """Answers multiple-choice questions from demonstrations, with or without an explanation."""

    persona_model: ClassVar[type[BaseModel]] = StudentPersona
    transcript_title = "A student answers multiple-choice questions."


@register_role("teacher")
class Teacher(_ChoiceAgent):
    """Answers questions itself, writes explanations toward an answer, and simulates a student
    from examples of that student's past answers (its mental model)."""

    persona_model: ClassVar[type[BaseModel]] = TeacherPersona
    transcript_title = "A teacher answers and explains multiple-choice questions."

    def explain_request(
        self,
        shots: Sequence[Shot],
        query: Shot,
        target: int,
        *,
        seed: int | None = None,
        tags: dict[str, Any] | None = None,
    ) -> GenerationRequest:
        """The request for an explanation of why `query`'s answer is option `target`.

        Demonstrations show question, options, answer, then the explanation; the model writes the
        explanation for the question asked. `finish_explanation` turns the output into the text
        the student sees.
        """
        ch = letters(len(query.options))
        blocks = [self._explained_block(s) for s in shots if s.answer is not None]
        asked = self._explained_block(Shot(query.question, query.options, target, None))
        common = self.request_options(seed, tags or {})
        if self.render_mode == "chat":
            user = "\n\n".join(
                [
                    *blocks,
                    asked,
                    f"Explain in two or three sentences why the answer is ({ch[target]}).",
                ]
            )
            return GenerationRequest(
                messages=(Message("system", self._header()), Message("user", user)), **common
            )
        prompt = "\n\n".join([self._header(), *blocks, asked])
        return GenerationRequest(
            prompt=f"{prompt}\nExplanation:", stop=("\n\n", "\nQuestion:"), **common
        )

    @staticmethod
    def _explained_block(shot: Shot) -> str:
        assert shot.answer is not None
        ch = letters(len(shot.options))[shot.answer]
        head = Shot(shot.question, shot.options).block(with_answer=False)
        text = f"{head}\nAnswer: ({ch}) {shot.options[shot.answer]}"
        return f"{text}\nExplanation: {shot.explanation}" if shot.explanation else text

    def finish_explanation(
        self, raw: str, query: Shot, target: int, *, truncated: bool = False
    ) -> str:
        """The explanation the student sees: the model's reasoning (first paragraph, at most four
        sentences, a half sentence cut by the token limit dropped) followed by the conclusion
        naming option `target`."""
        cut = _CUT.search(raw)
        text = _SPACES.sub(" ", raw[: cut.start()] if cut else raw).strip()
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        if truncated and len(sentences) > 1 and not re.search(r"[.!?]$", text):
            sentences = sentences[:-1]
        text = " ".join(sentences[:4]).strip()
        end = conclusion(letters(len(query.options))[target], query.options[target])
        return f"{text} {end}".strip()

    def simulate_request(
        self,
        observed: Sequence[Shot],
        query: Shot,
        *,
        seed: int | None = None,
        tags: dict[str, Any] | None = None,
        logprobs: int = 20,
    ) -> GenerationRequest:
        """The mental model: predict the student's answer to `query` (with the explanation it
        carries, if any) from `observed`, the student's own past answers (each shot's `answer`
        is what the student answered, right or wrong)."""
        return self._choice_request(
            observed,
            query,
            answer_label="The student answered:",
            instruction="Which option will this student choose? Reply with its letter only.",
            temperature=0.0,
            seed=seed,
            tags=tags or {},
            logprobs=logprobs,
            header="A teacher predicts how a particular student answers multiple-choice "
            "questions, from the student's past answers.",
        )


# -- items and answers ----------------------------------------------------------------------


class Item(BaseModel):
    """One multiple-choice test item.

    Attributes:
        id: Stable id (from the file's `id` field, else `<file stem>-<line or row>`).
        question: The question text.
        options: The answer options in display order (2 to 26).
        answer: Index of the gold option.
        explanation: A human explanation, if the data has one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    options: tuple[str, ...] = Field(min_length=2, max_length=26)
    answer: int = Field(ge=0)
    explanation: str | None = None

    @model_validator(mode="after")
    def _answer_in_range(self) -> Item:
        if self.answer >= len(self.options):
            raise ValueError(f"answer index {self.answer} but only {len(self.options)} options")
        if len(set(self.options)) != len(self.options):
            raise ValueError("options must be distinct")
        return self

    @property
    def gold(self) -> str:
        """The gold option's text."""
        return self.options[self.answer]

    def shot(self, *, answer: int | None = None, explanation: str | None = None) -> Shot:
        """This item as a prompt block (question and options, optional answer/explanation)."""
        return Shot(self.question, self.options, answer, explanation)


@dataclass(frozen=True, slots=True)
class Answer:
    """One constrained answer.

    Attributes:
        choice: Index of the picked option, or None when the output named no option.
        probs: Probability of each option (sums to 1).
        from_logprobs: Whether `probs` came from logprobs (False: one-hot or uniform).
    """

    choice: int | None
    probs: tuple[float, ...]
    from_logprobs: bool = False

    def p(self, index: int) -> float:
        """Probability of option `index`."""
        return self.probs[index]

    @property
    def confidence(self) -> float:
        """Probability of the picked option (0 when none was picked)."""
        return self.probs[self.choice] if self.choice is not None else 0.0

    def correct(self, gold: int) -> bool:
        """Whether the picked option is `gold`."""
        return self.choice == gold


def _key(token: str) -> str:
    return token.strip().lstrip("(").strip().upper()


def parse_choice(text: str, letters: Sequence[str]) -> int | None:
    """Index of the option letter `text` names ("B", " B", "(B)", "b) ..."), or None."""
    key = _key(text)[:1]
    return letters.index(key) if key in letters else None


def read_answer(result: GenerationResult, letters: Sequence[str]) -> Answer:
    """The picked option and per-option probabilities of a constrained choice result."""
    choice = parse_choice(result.text, letters)
    first = next((t for t in result.logprobs or () if t.token.strip()), None)
    if first is not None:
        scores: dict[str, float] = {}
        alternatives = dict(first.top)
        alternatives.setdefault(first.token, first.logprob)
        for token, logprob in alternatives.items():
            key = _key(token)
            if key in letters:
                scores[key] = max(scores.get(key, -math.inf), logprob)
        if scores:
            floor = min(alternatives.values())
            logs = [scores.get(ch, floor) for ch in letters]
            top = max(logs)
            weights = [math.exp(v - top) for v in logs]
            total = sum(weights)
            return Answer(choice, tuple(w / total for w in weights), True)
    n = len(letters)
    if choice is None:
        return Answer(None, tuple(1.0 / n for _ in letters))
    return Answer(choice, tuple(1.0 if i == choice else 0.0 for i in range(n)))
