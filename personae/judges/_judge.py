"""Judges: agents that rate other agents' lines (or whole episodes) with structured output.

A judge is an `Agent` whose role is registered with `@register_judge`. It observes the agents it
watches: it sees their lines (whoever they were addressed to) and every line addressed to it or to
everyone, and answers with a rubric's bounded structured output. `parse` turns a reply into a
`Judgment` (valid or not, never an exception), so a model that cannot follow the format leaves a
recorded parse failure instead of a crash. A judge that needs no model overrides `evaluate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personae.agents import Agent, Utterance, register_role
from personae.backends import GenerationRequest, Message
from personae.judges._rubric import Rubric
from personae.registry import Registry


@dataclass(frozen=True, slots=True)
class Judgment:
    """A judge's verdict on one line or one episode.

    Attributes:
        parsed: The structured reply (`{"rationale": …, DIMENSION: score, …}` or
            `{"code": LABEL}`), or None when it did not parse.
        valid: True when the reply matched the rubric.
        error: Why it did not parse (None when valid).
        score: Mean of the dimension scores (None for codes or an invalid reply).
    """

    parsed: dict[str, Any] | None
    valid: bool
    error: str | None = None
    score: float | None = None


class JudgePersona(BaseModel):
    """Who the judge is and its rubric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("judge", pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = "The rater"
    description: str = ""
    rubric: Rubric


JUDGES: Registry[type[JudgeAgent]] = Registry("judge")


def register_judge(name: str) -> Callable[[type[JudgeAgent]], type[JudgeAgent]]:
    """Class decorator registering a `JudgeAgent` subclass as judge (and role) `name`."""

    def decorate(cls: type[JudgeAgent]) -> type[JudgeAgent]:
        register_role(name)(cls)
        return JUDGES.add(name, cls)

    return decorate


def get_judge(name: str, *, where: str | None = None) -> type[JudgeAgent]:
    """The judge class registered as `name` (`UserError` with a suggestion if unknown)."""
    return JUDGES.get(name, where=where)


def _line(u: Utterance) -> str:
    return f"{u.label}: {u.text}"


@register_judge("judge")
class JudgeAgent(Agent):
    """An LLM rater: a rubric (scored dimensions or a code list) applied to watched lines."""

    persona_model: ClassVar[type[BaseModel]] = JudgePersona
    transcript_title = "A rater reads a conversation and rates it."
    #: Attempts per judgment before a parse failure is recorded.
    max_attempts: ClassVar[int] = 2

    #: Whether its end-of-episode verdict also goes into the episode's outcome
    #: (`outcome["verdicts"][NAME]`: the parsed verdict, None when invalid).
    in_outcome: ClassVar[bool] = False
    #: Agents whose lines this judge reads whoever they were addressed to (set by the graph).
    watches: frozenset[str] = frozenset()

    @property
    def judge_persona(self) -> JudgePersona:
        assert isinstance(self.persona, JudgePersona)
        return self.persona

    @property
    def rubric(self) -> Rubric:
        """The rubric this judge applies."""
        return self.judge_persona.rubric

    def view(self, history: Sequence[Utterance]) -> list[Utterance]:
        seen = [
            u
            for u in history
            if u.kind != "pass" and (u.visible_to(self.name) or u.agent in self.watches)
        ]
        return seen[-self.window :] if self.window else seen

    def intro(self) -> str:
        """Who the judge is: the first part of its system prompt."""
        return self.judge_persona.description.strip()

    def system_prompt(self) -> str:
        return self._instructions(self.rubric)

    def _instructions(self, rubric: Rubric) -> str:
        """Who the judge is, the rubric, and the reply format."""
        if rubric.kind == "codes":
            fmt = "Reply with the label only."
        else:
            what = "your choice" if rubric.kind == "choice" else "an integer per dimension"
            first = "a short rationale first, then " if rubric.rationale else ""
            fmt = f"Reply with JSON: {first}{what}."
        parts = [self.intro(), self.context.strip(), rubric.text(), fmt]
        return "\n".join(x for x in parts if x)

    def _ask(self, target: Utterance | None) -> str:
        if target is None:
            return "Rate the whole conversation."
        return f"Rate the last line, by {target.label}."

    def judgment_request(
        self,
        history: Sequence[Utterance],
        target: Utterance | None,
        *,
        seed: int | None,
        tags: dict[str, Any],
    ) -> GenerationRequest:
        """The request rating `target` (the last line of `history`) or, when None, the whole
        conversation in `history`."""
        seen = self.view(history)
        options = self.request_options(seed, tags)
        options["max_tokens"] = max(options["max_tokens"], self.rubric.max_tokens())
        conversation = "\n".join(_line(u) for u in seen) or "(no lines)"
        return self._request(
            self.rubric,
            self.transcript_title,
            f"Conversation:\n{conversation}",
            self._ask(target),
            options,
        )

    def _request(
        self, rubric: Rubric, title: str, body: str, ask: str, options: dict[str, Any]
    ) -> GenerationRequest:
        """A request asking `ask` about `body` under `rubric`'s output rules."""
        if rubric.kind == "codes":
            options["choices"] = tuple(rubric.codes)
        else:
            options["json_schema"] = rubric.json_schema()
        system = self._instructions(rubric)
        if self.render_mode == "chat":
            return GenerationRequest(
                messages=(Message("system", system), Message("user", f"{body}\n\n{ask}")),
                **options,
            )
        answer = {"codes": "Label:", "choice": "Choice (JSON):"}.get(rubric.kind, "Rating (JSON):")
        prompt = f"{title}\n\n{system}\n\n{body}\n\n{ask}\n{answer} "
        return GenerationRequest(prompt=prompt, **options)

    def choice_request(
        self,
        seen: Sequence[Utterance],
        speaker: str,
        candidates: Sequence[tuple[str, str]],
        *,
        seed: int | None,
        tags: dict[str, Any],
    ) -> GenerationRequest:
        """The request choosing the next line of `speaker` (a speaker tag) among `candidates`
        (id, text; an empty text is an abstention), after the lines in `seen` (the speaker's
        own view). The reply is a choice among the ids (`parse(text, candidate_ids)`)."""
        rubric = self.rubric.with_codes([cid for cid, _ in candidates])
        options = self.request_options(seed, tags)
        options["max_tokens"] = max(options["max_tokens"], rubric.max_tokens())
        conversation = "\n".join(_line(u) for u in seen) or "(no lines yet)"
        proposals = "\n".join(f"[{cid}] {text or '(says nothing)'}" for cid, text in candidates)
        body = (
            f"Conversation:\n{conversation}\n\n"
            f"Candidate replies for {speaker}'s next line:\n{proposals}"
        )
        title = "A supervisor reads a conversation and chooses the best next reply."
        return self._request(
            rubric, title, body, f"Which reply should {speaker} say next?", options
        )

    def evaluate(
        self, history: Sequence[Utterance], target: Utterance | None
    ) -> dict[str, Any] | None:
        """A verdict computed without a model, or None to ask the model (the default)."""
        return None

    def parse(self, text: str, codes: Sequence[str] | None = None) -> Judgment:
        """A reply as a `Judgment` (invalid replies are recorded, not raised); `codes`
        replaces the rubric's code list (a supervisor's candidate ids)."""
        rubric = self.rubric if codes is None else self.rubric.with_codes(codes)
        raw = text.strip()
        if rubric.kind == "codes":
            if raw in rubric.codes:
                return Judgment({"code": raw}, True)
            return Judgment(None, False, f"not one of the codes: {raw[:60]!r}")
        try:
            parsed = rubric.output_model.model_validate_json(raw).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return Judgment(None, False, f"{where + ': ' if where else ''}{err['msg']}")
        return Judgment(parsed, True, None, rubric.score(parsed))

    def judge_parsed(self, parsed: dict[str, Any]) -> Judgment:
        """A `Judgment` for a verdict `evaluate` computed, validated like a model reply (a
        missing rationale is empty; one the rubric has no room for is dropped)."""
        if self.rubric.kind == "codes":
            return self.parse(str(parsed.get("code", "")))
        verdict = dict(parsed)
        if self.rubric.rationale:
            verdict.setdefault("rationale", "")
        else:
            verdict.pop("rationale", None)
        return self.parse(json.dumps(verdict))

    def feedback(self, judgment: Judgment) -> str:
        """The text of the private line sent to the agents this judge's output is routed to."""
        parsed = judgment.parsed or {}
        if self.rubric.kind != "scores":
            rationale = str(parsed.get("rationale") or "").strip()
            code = str(parsed.get("code", ""))
            return f"{code}: {rationale}" if rationale else code
        scores = ", ".join(
            f"{d.name} {parsed.get(d.name)}/{d.scale[1]}" for d in self.rubric.dimensions
        )
        rationale = str(parsed.get("rationale") or "").strip()
        return f"{rationale} ({scores})" if rationale else scores
