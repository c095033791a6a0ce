"""Persona models for the counseling roles, loaded from YAML data files.

A `ClientProfile` follows the PATIENT-Ψ cognitive-model layout (history, core beliefs grouped
helpless / unlovable / worthless, intermediate beliefs, coping strategies, one situation with its
automatic thoughts, emotions and behaviour). A `ConversationStyle` sets how the client talks and
how many sentences it may say per turn. A `CounselorPersona` names a therapeutic approach and the
instructions that go with it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personae.agents._ccd_lists import CoreBeliefItem, EmotionCategory


class Strict(BaseModel):
    """Base for spec models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConversationStyle(StrEnum):
    """How a simulated client talks (PATIENT-Ψ conversational styles)."""

    plain = "plain"
    upset = "upset"
    verbose = "verbose"
    reserved = "reserved"
    tangent = "tangent"
    pleasing = "pleasing"


#: Behaviour text shown to the client model for each style.
STYLE_BEHAVIOUR: dict[ConversationStyle, str] = {
    ConversationStyle.plain: "answers directly and openly, in an everyday tone.",
    ConversationStyle.upset: (
        "is frustrated and guarded, may push back on the counselor, doubts that talking helps, "
        "and answers curtly."
    ),
    ConversationStyle.verbose: (
        "talks at length, adding details and side remarks, and takes a while to reach the point."
    ),
    ConversationStyle.reserved: (
        "says little, gives short or vague answers, and opens up only when feeling safe."
    ),
    ConversationStyle.tangent: (
        "drifts to loosely related topics and needs the counselor to bring them back."
    ),
    ConversationStyle.pleasing: (
        "tries to please the counselor, agrees readily and plays down their own difficulties."
    ),
}

#: Maximum sentences per client turn for each style.
STYLE_SENTENCE_CAP: dict[ConversationStyle, int] = {
    ConversationStyle.plain: 5,
    ConversationStyle.upset: 3,
    ConversationStyle.verbose: 8,
    ConversationStyle.reserved: 3,
    ConversationStyle.tangent: 5,
    ConversationStyle.pleasing: 5,
}


class CoreBeliefs(Strict):
    """Core beliefs grouped into the three Beck categories."""

    helpless: list[str] = Field(default_factory=list)
    unlovable: list[str] = Field(default_factory=list)
    worthless: list[str] = Field(default_factory=list)


class ClientProfile(Strict):
    """A simulated client's cognitive model (hidden from the counselor)."""

    id: str = Field(pattern=r"^[a-z0-9_]+$", description="Stable id used in episode ids.")
    name: str
    age: int | None = None
    history: str
    core_beliefs: CoreBeliefs
    intermediate_beliefs: list[str]
    intermediate_beliefs_during_depression: list[str]
    coping_strategies: list[str]
    situation: str
    automatic_thoughts: list[str]
    emotions: list[str]
    behavior: str
    style: ConversationStyle = ConversationStyle.plain
    #: The core beliefs as items of the CCD's closed lists (what a CCD is scored against).
    core_belief_items: list[CoreBeliefItem] = Field(default_factory=list)
    #: The emotions as the CCD's nine categories (what a CCD is scored against).
    emotion_categories: list[EmotionCategory] = Field(default_factory=list)


class CounselorPersona(Strict):
    """A counselor's name, approach and working instructions."""

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    name: str
    approach: Literal["cbt", "motivational_interviewing", "integrative"]
    description: str
    techniques: list[str]
    opening: str = Field(description="The counselor's first line when it opens the session.")
