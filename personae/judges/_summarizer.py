"""The session summarizer: a judge that writes a session's summary as constrained JSON.

It reads the whole session once it ends (`observes: all`, `when: end`) and answers with JSON
holding the main themes, the client's state at the end, the homework agreed, the plan for next
time, and the client's progress 0-10 on each situation of the client's profile (`progress_1`,
`progress_2`, ... in the order `situations` lists them). Its verdict is stored in `judgments`
like any judge's (score: the mean progress) and in the episode's outcome, which the next session
of a course is given (`personae.runner._course`). The situations are set per episode by the
course (`situations`); without them it rates one overall `progress`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)

from personae.agents import Utterance
from personae.backends import GenerationRequest, Message
from personae.judges._judge import JudgeAgent, Judgment, register_judge
from personae.judges._rubric import Dimension, Rubric

#: The text fields of a summary, in the order the model writes them, with what each holds.
SUMMARY_FIELDS: dict[str, str] = {
    "themes": "the main themes of the session",
    "client_state": "how the client is at the end of the session",
    "homework": "the homework agreed (or 'none')",
    "plan": "the plan for the next session",
}


class SummarizerPersona(BaseModel):
    """Who writes the summaries, and how long each field may be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("session_summarizer", pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = "The note taker"
    description: str = (
        "A clinical supervisor who writes short case notes after each counseling session."
    )
    rubric_id: str = Field("session_summary_v1", pattern=r"^[A-Za-z0-9_.-]+$")
    max_chars: int = Field(200, ge=20, le=1000, description="Longest text field.")


@register_judge("session_summarizer")
class SessionSummarizer(JudgeAgent):
    """Writes each session's summary (themes, state, homework, plan, progress per situation)."""

    persona_model: ClassVar[type[BaseModel]] = SummarizerPersona
    transcript_title = "A supervisor reads a counseling session and writes its case notes."
    #: Its end-of-episode verdict goes into the episode's outcome (`outcome["verdicts"]`).
    in_outcome: ClassVar[bool] = True
    _situations: tuple[str, ...] = ()
    _models: tuple[Rubric, type[BaseModel]] | None = None

    @property
    def situations(self) -> tuple[str, ...]:
        """The client's situations whose progress it rates (set per episode by the course)."""
        return self._situations

    @situations.setter
    def situations(self, value: Sequence[str]) -> None:
        self._situations = tuple(value)
        self._models = None

    @property
    def summarizer(self) -> SummarizerPersona:
        assert isinstance(self.persona, SummarizerPersona)
        return self.persona

    def progress_keys(self) -> list[str]:
        """The progress fields: `progress_1..N` per situation, or `progress`."""
        if not self.situations:
            return ["progress"]
        return [f"progress_{i}" for i in range(1, len(self.situations) + 1)]

    def _progress_texts(self) -> tuple[str, ...]:
        return self.situations or ("the client's difficulties overall",)

    def _built(self) -> tuple[Rubric, type[BaseModel]]:
        """The rubric and the reply model for the current situations (built once each)."""
        if self._models is None:
            pairs = list(zip(self.progress_keys(), self._progress_texts(), strict=True))
            rubric = Rubric(
                id=self.summarizer.rubric_id,
                rationale=0,
                dimensions=[
                    Dimension(
                        name=k,
                        description=f"progress on: {t}",
                        scale=(0, 10),
                        anchors={0: "no change", 10: "resolved"},
                    )
                    for k, t in pairs
                ],
            )
            text = Annotated[str, StringConstraints(max_length=self.summarizer.max_chars)]
            fields: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS, (text, ...))
            for key, _ in pairs:
                fields[key] = (Literal[tuple(range(11))], ...)
            model = create_model("SessionSummary", __config__=ConfigDict(extra="forbid"), **fields)
            self._models = (rubric, model)
        return self._models

    @property
    def rubric(self) -> Rubric:
        """What its judgments are stored under: the progress scales (0-10) it scores."""
        return self._built()[0]

    def output_model(self) -> type[BaseModel]:
        """The pydantic model a summary must validate against."""
        return self._built()[1]

    def system_prompt(self) -> str:
        lines = [f"- {k}: {v}" for k, v in SUMMARY_FIELDS.items()]
        lines += [
            f"- {k}: the client's progress on {t.strip()} (0 = no change, 10 = resolved)"
            for k, t in zip(self.progress_keys(), self._progress_texts(), strict=True)
        ]
        parts = [
            self.summarizer.description.strip(),
            self.context.strip(),
            "Write the notes on the session as JSON with these fields:\n" + "\n".join(lines),
            f"Each text field in at most {self.summarizer.max_chars} characters.",
        ]
        return "\n".join(p for p in parts if p)

    def judgment_request(
        self,
        history: Sequence[Utterance],
        target: Utterance | None,
        *,
        seed: int | None,
        tags: dict[str, Any],
    ) -> GenerationRequest:
        seen = self.view(history)
        options = self.request_options(seed, tags)
        budget = 24 + len(SUMMARY_FIELDS) * self.summarizer.max_chars // 3
        options["max_tokens"] = max(options["max_tokens"], budget + 8 * len(self.progress_keys()))
        options["json_schema"] = self.output_model().model_json_schema()
        conversation = "\n".join(f"{u.label}: {u.text}" for u in seen) or "(no lines)"
        return self._notes_request(f"Session:\n{conversation}", options)

    def _notes_request(self, body: str, options: dict[str, Any]) -> GenerationRequest:
        ask = "Write the case notes of this session."
        system = self.system_prompt()
        if self.render_mode == "chat":
            return GenerationRequest(
                messages=(Message("system", system), Message("user", f"{body}\n\n{ask}")),
                **options,
            )
        prompt = f"{self.transcript_title}\n\n{system}\n\n{body}\n\n{ask}\nNotes (JSON): "
        return GenerationRequest(prompt=prompt, **options)

    def parse(self, text: str, codes: Sequence[str] | None = None) -> Judgment:
        try:
            parsed = self.output_model().model_validate_json(text.strip()).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return Judgment(None, False, f"{where + ': ' if where else ''}{err['msg']}")
        scores = [parsed[k] for k in self.progress_keys()]
        return Judgment(parsed, True, None, sum(scores) / len(scores))

    def judge_parsed(self, parsed: dict[str, Any]) -> Judgment:
        return self.parse(json.dumps(parsed))
