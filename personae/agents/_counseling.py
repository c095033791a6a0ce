"""Counseling roles: a counselor (CBT, motivational interviewing or integrative) and a client
simulated from a PATIENT-Ψ style cognitive model.

The client's cognitive model is private: it appears only in the client's own prompt, with the
instruction to reveal concerns gradually and never recite it. The counselor sees only the
conversation and its own approach.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel

from personae.agents._base import Agent
from personae.agents._personas import (
    STYLE_BEHAVIOUR,
    STYLE_SENTENCE_CAP,
    ClientProfile,
    CounselorPersona,
)
from personae.agents._registry import register_role

_APPROACH = {
    "cbt": "cognitive behavioural therapy (CBT)",
    "motivational_interviewing": "motivational interviewing",
    "integrative": "an integrative approach",
}

_FAREWELL = re.compile(
    r"\b(good\s*-?\s*bye\b|see you (next|again|soon)\b|until next (time|week|session)\b|"
    r"take care\b|let'?s (stop|end|wrap up) (here|for today)\b|"
    r"(end|close) (our|the|this) session\b)",
    re.IGNORECASE,
)
_SENTENCES = re.compile(r"[^.!?]+[.!?]*")


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


@register_role("counselor")
class Counselor(Agent):
    """A counselor following one therapeutic approach; says goodbye to end the session."""

    persona_model: ClassVar[type[BaseModel]] = CounselorPersona
    transcript_title = "Transcript of a counseling session."

    @property
    def profile(self) -> CounselorPersona:
        assert isinstance(self.persona, CounselorPersona)
        return self.persona

    def system_prompt(self) -> str:
        p = self.profile
        return (
            f"The counselor, {p.name}, works with {_APPROACH[p.approach]}. {p.description}\n"
            f"Techniques the counselor uses:\n{_bullets(p.techniques)}\n"
            "The counselor asks one question at a time and replies in one to three sentences. "
            "When the session is over, the counselor says goodbye."
        )

    def opening(self) -> str | None:
        return self.profile.opening

    def max_sentences(self) -> int:
        return 4

    def is_farewell(self, text: str) -> bool:
        """A farewell phrase in a sentence that is not a question ("Goodbye, take care.")."""
        return any(
            _FAREWELL.search(s) and not s.rstrip().endswith("?") for s in _SENTENCES.findall(text)
        )


@register_role("client")
class Client(Agent):
    """A simulated client with a hidden cognitive model and a conversation style."""

    persona_model: ClassVar[type[BaseModel]] = ClientProfile
    transcript_title = "Transcript of a counseling session."

    @property
    def profile(self) -> ClientProfile:
        assert isinstance(self.persona, ClientProfile)
        return self.persona

    def system_prompt(self) -> str:
        p = self.profile
        beliefs = [
            f"{group}: {'; '.join(items)}"
            for group, items in p.core_beliefs.model_dump().items()
            if items
        ]
        age = f", {p.age}" if p.age else ""
        return (
            f"Private notes on the client, {p.name}{age} (the counselor has not seen them).\n"
            f"History: {p.history}\n"
            f"Core beliefs:\n{_bullets(beliefs)}\n"
            f"Intermediate beliefs:\n{_bullets(p.intermediate_beliefs)}\n"
            "Intermediate beliefs during depression:\n"
            f"{_bullets(p.intermediate_beliefs_during_depression)}\n"
            f"Coping strategies:\n{_bullets(p.coping_strategies)}\n"
            f"Recent situation: {p.situation}\n"
            f"Automatic thoughts:\n{_bullets(p.automatic_thoughts)}\n"
            f"Emotions: {', '.join(p.emotions)}\n"
            f"Behaviour: {p.behavior}\n"
            f"How {p.name} talks: {p.name} {STYLE_BEHAVIOUR[p.style]} "
            f"{p.name} never recites these notes, speaks in everyday words, reveals concerns "
            f"gradually as trust grows, and says at most {self.max_sentences()} sentences "
            "per turn."
        )

    def max_sentences(self) -> int:
        return STYLE_SENTENCE_CAP[self.profile.style]
