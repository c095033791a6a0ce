"""The `formulator` judge: writes the cognitive model (CCD) it infers from a session.

A formulator observes a counselor (`when: end`) and answers with the CCD as constrained JSON
(the closed lists as enums, each free-text field capped); its verdict (rubric
`ccd_formulation`, `parsed_json`: the CCD) is what `personae ccd score` scores against the
client's profile, as it scores a trainee's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from personae.agents import Utterance
from personae.agents._ccd import FREE_TEXT, CognitiveModel
from personae.agents._ccd_lists import CORE_BELIEFS, EMOTIONS
from personae.backends import GenerationRequest, Message
from personae.judges._judge import JudgeAgent, JudgePersona, Judgment, register_judge
from personae.judges._rubric import Rubric

#: The rubric id of a formulator's verdict (its CCD).
FORMULATION = "ccd_formulation"
_FORMULATION_RUBRIC = Rubric(id=FORMULATION, codes=["ccd"], rationale=0)
_FORMULATION_TEXT = 160  # characters per free-text field a formulator may write


class FormulatorPersona(JudgePersona):
    """A formulator: who it is (its rubric is fixed: the CCD)."""

    id: str = "formulator"
    name: str = "Case formulator"
    rubric: Rubric = _FORMULATION_RUBRIC


def formulation_schema() -> dict[str, Any]:
    """The JSON schema a formulator answers under: the CCD's closed lists as enums, each
    free-text field capped at 160 characters."""
    schema = CognitiveModel.model_json_schema()
    for name in FREE_TEXT:
        schema["properties"][name] = {"type": "string", "maxLength": _FORMULATION_TEXT}
    return schema


@register_judge("formulator")
class FormulatorAgent(JudgeAgent):
    """Writes the cognitive model (CCD) it infers from a session, as constrained JSON."""

    persona_model: ClassVar[type[BaseModel]] = FormulatorPersona
    transcript_title = "A CBT supervisor reads a first session and formulates the client's case."

    def system_prompt(self) -> str:
        beliefs = "; ".join(f"{c}: {', '.join(items)}" for c, items in CORE_BELIEFS.items())
        return "\n".join(
            x
            for x in (
                self.intro(),
                "Write the client's cognitive conceptualization diagram from what the client "
                "said: core-belief categories and items (from these lists: "
                f"{beliefs}), emotions (from: {', '.join(EMOTIONS)}), and short notes on "
                f"{', '.join(n.replace('_', ' ') for n in FREE_TEXT)}.",
                "Reply with JSON.",
            )
            if x
        )

    def judgment_request(
        self,
        history: Sequence[Utterance],
        target: Utterance | None,
        *,
        seed: int | None,
        tags: dict[str, Any],
    ) -> GenerationRequest:
        options = self.request_options(seed, tags)
        options["json_schema"] = formulation_schema()
        options["max_tokens"] = max(
            options["max_tokens"], 160 + len(FREE_TEXT) * _FORMULATION_TEXT // 3
        )
        seen = self.view(history)
        conversation = "\n".join(f"{u.label}: {u.text}" for u in seen) or "(no lines)"
        if self.render_mode == "chat":
            return GenerationRequest(
                messages=(
                    Message("system", self.system_prompt()),
                    Message("user", f"Session:\n{conversation}\n\nThe client's CCD?"),
                ),
                **options,
            )
        prompt = (
            f"{self.transcript_title}\n\n{self.system_prompt()}\n\n"
            f"Session:\n{conversation}\n\nCCD (JSON): "
        )
        return GenerationRequest(prompt=prompt, **options)

    def parse(self, text: str, codes: Sequence[str] | None = None) -> Judgment:
        try:
            model = CognitiveModel.model_validate_json(text.strip())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return Judgment(None, False, f"{where + ': ' if where else ''}{first['msg']}")
        return Judgment(model.model_dump(), True)
