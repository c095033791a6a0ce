"""The generic `persona` role: most new scenarios need no Python at all.

A persona is a name, a description, goals, private notes and a speaking style, plus any other
fields the scenario file gives (age, job, stance, …), rendered after the known ones in the order
the file lists them, so prompts stay stable from run to run. Everything here appears only in the
agent's own prompt.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from personae.agents._base import Agent
from personae.agents._registry import register_role


class Persona(BaseModel):
    """A free-form persona: known fields plus any extra ones (kept in file order)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = Field(None, description="Stable id (episode ids and exports use it).")
    name: str | None = Field(None, description="The character's name (default: the agent's).")
    description: str = ""
    goals: list[str] = Field(default_factory=list)
    private_notes: str = Field("", description="Known only to this agent.")
    speaking_style: str = ""
    max_sentences: int = Field(4, ge=1, le=50, description="Sentence cap per turn.")
    opening: str | None = Field(None, description="A fixed first line, when it opens.")
    setting: str = Field("", description="The scene, shown at the top of its prompt.")


def _render(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "; ".join(_render(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_render(v)}" for k, v in value.items())
    return str(value)


@register_role("persona")
class PersonaAgent(Agent):
    """A character described in YAML: name, description, goals, private notes, style, extras."""

    persona_model: ClassVar[type[BaseModel]] = Persona

    @property
    def profile(self) -> Persona:
        assert isinstance(self.persona, Persona)
        return self.persona

    def system_prompt(self) -> str:
        p = self.profile
        who = p.name or self.label
        lines = [p.setting.strip()] if p.setting.strip() else []
        lines.append(f"{self.label} is {who}." if who != self.label else f"About {who}:")
        if p.description:
            lines.append(p.description.strip())
        for key, value in (p.model_extra or {}).items():
            lines.append(f"{key.replace('_', ' ').capitalize()}: {_render(value)}")
        if p.goals:
            lines.append(f"{who}'s goals: {_render(p.goals)}")
        if p.private_notes:
            lines.append(f"Private notes (only {who} knows them): {p.private_notes.strip()}")
        if p.speaking_style:
            lines.append(f"How {who} talks: {p.speaking_style.strip()}")
        lines.append(f"{who} says at most {p.max_sentences} sentences per turn.")
        return "\n".join(lines)

    def opening(self) -> str | None:
        return self.profile.opening

    def max_sentences(self) -> int:
        return self.profile.max_sentences
