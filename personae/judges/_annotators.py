"""Annotators of online comments: an LLM `annotator` with its own sociodemographic persona, and
`profanity_check`, a deterministic baseline toxicity score that needs no model.

An annotator rates one comment (in the context its window gives it, e.g. the previous three) on
a rubric whose every scale is anchored at both ends — ratings without anchors do not mean the same
thing to two annotators. The baseline is the linear classifier of the `alt-profanity-check`
package, whose weights ship inside its wheel (neural classifiers such as Detoxify, or the
Perspective API, need a download or a network and cannot run offline).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from personae.agents import Utterance
from personae.judges._judge import JudgeAgent, JudgePersona, Judgment, register_judge
from personae.judges._rubric import Dimension, Rubric


class AnnotatorPersona(JudgePersona):
    """An annotator: who they are (it may colour their ratings) and an anchored rubric."""

    age: int | None = Field(None, ge=16, le=120)
    sex: str = ""
    education: str = ""
    occupation: str = ""
    political_leaning: str = ""

    @model_validator(mode="after")
    def _anchored(self) -> AnnotatorPersona:
        for d in self.rubric.dimensions:
            low, high = d.scale
            if low not in d.anchors or high not in d.anchors:
                raise ValueError(
                    f"rubric dimension {d.name!r} needs anchors at both ends of its scale "
                    f"({low} and {high})"
                )
        return self


@register_judge("annotator")
class Annotator(JudgeAgent):
    """An LLM annotator with a sociodemographic persona."""

    persona_model: ClassVar[type[BaseModel]] = AnnotatorPersona
    transcript_title = "An annotator rates comments from an online discussion."

    def intro(self) -> str:
        p = self.judge_persona
        assert isinstance(p, AnnotatorPersona)
        facts = [
            f"{p.age} years old" if p.age else "",
            p.sex,
            p.education,
            p.occupation,
            f"politically {p.political_leaning}" if p.political_leaning else "",
        ]
        who = f"The annotator is {p.name}: " + ", ".join(f for f in facts if f) + "."
        return "\n".join(x for x in (who, p.description.strip()) if x)


class BaselinePersona(BaseModel):
    """The baseline needs no persona; an id names it in `judgments`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("profanity_check", pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = "profanity-check"


#: The rubric the baseline's judgments are stored under (`toxicity`: a probability in [0, 1]).
BASELINE_RUBRIC = Rubric(
    id="alt_profanity_check",
    instructions="Probability that the comment is offensive (linear classifier, no model call).",
    dimensions=[Dimension(name="toxicity", scale=(0, 1))],
    rationale=0,
)


@functools.cache
def _classifier() -> Callable[[list[str]], Any]:
    from profanity_check import predict_prob

    return predict_prob  # type: ignore[no-any-return]


@register_judge("profanity_check")
class ProfanityCheck(JudgeAgent):
    """Baseline toxicity: the probability `alt-profanity-check` gives a comment."""

    persona_model: ClassVar[type[BaseModel]] = BaselinePersona

    @property
    def rubric(self) -> Rubric:
        return BASELINE_RUBRIC

    def evaluate(
        self, history: Sequence[Utterance], target: Utterance | None
    ) -> dict[str, Any] | None:
        if target is None:
            texts = [u.text for u in history if u.kind == "line"]
            return {"toxicity": float(max(_classifier()(texts))) if texts else 0.0}
        return {"toxicity": float(_classifier()([target.text])[0])}

    def judge_parsed(self, parsed: dict[str, Any]) -> Judgment:
        value = round(float(parsed["toxicity"]), 6)
        return Judgment({"toxicity": value}, True, None, value)
