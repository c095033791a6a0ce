"""Roles of an online discussion: `participant` (a commenter with an intent) and `facilitator`
(a moderator following one of the shipped strategies, or none).

A participant is a sociodemographic persona (username, age, sex, education, occupation,
political leaning, personality, how they write) with an **intent**: `neutral`, `troll` (derails,
provokes, breaks the rules) or `community` (upholds the community's norms). A facilitator follows
a **strategy** from `scenarios/discussion/strategies.yaml` — the community rules appended where
the strategy says so — and may abstain with the pass token; strategy `none` means it never takes
a turn. Intents and strategies are checked against the shipped files, so a typo is a one-line
error naming the choices.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from personae._shipped import scenarios_dir
from personae._yaml import load_yaml
from personae.agents._base import Agent
from personae.agents._registry import register_role

#: What a forum comment thread looks like to every discussion role.
FORUM = "An online discussion board. Users reply to each other in one comment thread."


@functools.cache
def discussion_data(name: str) -> dict[str, Any]:
    """A shipped discussion data file (`intents`, `strategies`), parsed once."""
    data = load_yaml(scenarios_dir() / "discussion" / f"{name}.yaml", "discussion data file")
    assert isinstance(data, dict), f"discussion/{name}.yaml must be a mapping"
    return data


def intents() -> dict[str, dict[str, str]]:
    """Intent name -> {description, instructions}."""
    return discussion_data("intents")


def strategies() -> dict[str, dict[str, Any]]:
    """Strategy name -> {description, instructions, show_rules}."""
    return dict(discussion_data("strategies")["strategies"])


def community_rules() -> list[str]:
    """The discussion board's rules."""
    return list(discussion_data("strategies")["rules"])


def _choice(value: str, known: dict[str, Any], what: str) -> str:
    if value not in known:
        close = difflib.get_close_matches(value, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {what} {value!r}{hint}; choose from: {', '.join(known)}")
    return value


class ParticipantPersona(BaseModel):
    """A commenter: who they are, how they write and what they want from the thread."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    username: str = Field(pattern=r"^[A-Za-z0-9_]{1,32}$", description="Shown with each comment.")
    age: int | None = Field(None, ge=13, le=120)
    sex: str = ""
    education: str = ""
    occupation: str = ""
    political_leaning: str = ""
    personality: list[str] = Field(default_factory=list)
    special_instructions: str = ""
    intent: str = Field("neutral", description="neutral | troll | community")
    max_sentences: int = Field(3, ge=1, le=20)

    @field_validator("intent")
    @classmethod
    def _known_intent(cls, value: str) -> str:
        return _choice(value, intents(), "intent")


def _profile(p: ParticipantPersona) -> str:
    facts = [f"{p.age}-year-old" if p.age else "", p.sex]
    who = " ".join(f for f in facts if f) or "person"
    parts = [f"a {who}"]
    if p.education:
        parts.append(f"education: {p.education}")
    if p.occupation:
        parts.append(f"works as {p.occupation}")
    if p.political_leaning:
        parts.append(f"politically {p.political_leaning}")
    if p.personality:
        parts.append(f"personality: {', '.join(p.personality)}")
    return "; ".join(parts)


@register_role("participant")
class Participant(Agent):
    """A commenter in an online discussion; its speaker tag is its username."""

    persona_model: ClassVar[type[BaseModel]] = ParticipantPersona
    transcript_title = "Transcript of an online comment thread."

    @property
    def profile(self) -> ParticipantPersona:
        assert isinstance(self.persona, ParticipantPersona)
        return self.persona

    def persona_label(self) -> str | None:
        return self.profile.username

    def system_prompt(self) -> str:
        p = self.profile
        lines = [FORUM, f"{self.label} is {_profile(p)}."]
        if p.special_instructions:
            lines.append(f"How {self.label} writes: {p.special_instructions.strip()}")
        lines.append(
            f"Instructions for {self.label}: {intents()[p.intent]['instructions'].strip()}"
        )
        lines.append(f"{self.label} writes one comment of at most {p.max_sentences} sentences.")
        return "\n".join(lines)

    def max_sentences(self) -> int:
        return self.profile.max_sentences

    def hidden_state(self) -> dict[str, Any]:
        return {"intent": self.profile.intent}


class FacilitatorPersona(BaseModel):
    """A facilitator: its strategy, optionally its own instructions and rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("facilitator", pattern=r"^[A-Za-z0-9_.-]+$")
    username: str = Field("moderator", pattern=r"^[A-Za-z0-9_]{1,32}$")
    strategy: str = Field(description="A strategy of discussion/strategies.yaml (none: absent).")
    instructions: str | None = Field(None, description="Replaces the strategy's instructions.")
    rules: list[str] | None = Field(None, description="Replaces the community rules.")
    max_sentences: int = Field(3, ge=1, le=20)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return _choice(value, strategies(), "strategy")


@register_role("facilitator")
class Facilitator(Agent):
    """The discussion's moderator: given the turn after every comment, it may abstain."""

    persona_model: ClassVar[type[BaseModel]] = FacilitatorPersona
    transcript_title = "Transcript of an online comment thread."

    @property
    def profile(self) -> FacilitatorPersona:
        assert isinstance(self.persona, FacilitatorPersona)
        return self.persona

    def persona_label(self) -> str | None:
        return self.profile.username

    def takes_turns(self) -> bool:
        return self.profile.strategy != "none"

    def system_prompt(self) -> str:
        p = self.profile
        strategy = strategies()[p.strategy]
        lines = [FORUM, f"{self.label} is the moderator of the thread."]
        instructions = p.instructions if p.instructions is not None else strategy["instructions"]
        if instructions.strip():
            lines.append(instructions.strip())
        if strategy.get("show_rules"):
            rules = p.rules if p.rules is not None else community_rules()
            lines.append("Community rules:\n" + "\n".join(f"- {r}" for r in rules))
        lines.append(f"{self.label} writes at most {p.max_sentences} sentences.")
        return "\n".join(lines)

    def max_sentences(self) -> int:
        return self.profile.max_sentences

    def hidden_state(self) -> dict[str, Any]:
        return {"strategy": self.profile.strategy}
