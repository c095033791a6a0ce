"""Agents: a role, a persona, a prompt renderer and sampling settings.

An agent never calls another agent or a backend: the graph hands it the conversation as seen from
its side and sends the `GenerationRequest` it builds to the backend. Prompts are prefix-stable:
the private header (system text and persona) comes first and never changes, history is appended,
so the prompt at turn t+1 extends the prompt at turn t and engines reuse their prefix cache.

Two render modes: `transcript` (base models: a screenplay ending in this agent's speaker tag, with
stop strings at every speaker tag) and `chat` (instruct models: system + alternating messages, own
lines as `assistant`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from personae.backends import GenerationRequest, Message, RenderMode

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"')\]])\s+")
# A speaker tag: one to three capitalised words at the start of a line, then a colon.
_SPEAKER_TAG = re.compile(r"(?:^|\n)\s*\**[A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2}\**\s*:")
_SPACES = re.compile(r"\s+")
_ABBREVIATION = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Prof|St|Jr|Sr|vs|etc|e\.g|i\.e)\.$", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (an abbreviation such as "Dr." does not end one)."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if not piece.strip():
            continue
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return sentences


class Sampling(BaseModel):
    """Sampling settings for an agent's calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int = Field(120, ge=1, le=8192)


@dataclass(frozen=True, slots=True)
class Utterance:
    """A line of the conversation as the graph hands it to agents."""

    agent: str
    label: str
    text: str


class Agent:
    """Base class of every role.

    Subclasses set `role` and `persona_model`, and override `system_prompt` (private header).
    They may override `opening` (a fixed first line), `max_sentences` and `is_farewell`.

    Args:
        name: The agent's name in the scenario (unique within an episode).
        persona: A validated instance of `persona_model`.
        sampling: Sampling settings.
        render_mode: "transcript" or "chat".
        label: The speaker tag shown in transcripts (default: the role, capitalised).
    """

    role: ClassVar[str] = "agent"
    persona_model: ClassVar[type[BaseModel]] = BaseModel
    #: Preamble of a transcript prompt, before the private header.
    transcript_title: ClassVar[str] = "Transcript of a conversation."

    def __init__(
        self,
        name: str,
        persona: BaseModel,
        *,
        sampling: Sampling | None = None,
        render_mode: RenderMode = "transcript",
        label: str | None = None,
    ) -> None:
        self.name = name
        self.persona = persona
        self.sampling = sampling or Sampling()
        self.render_mode: RenderMode = render_mode
        self.label = label or self.role.replace("_", " ").title()

    @functools.cached_property
    def _folded_header(self) -> str:
        return _SPACES.sub(" ", self.system_prompt())

    # -- what subclasses specialise -------------------------------------------------------
    def system_prompt(self) -> str:
        """Private instructions and persona; constant for the whole episode."""
        return ""

    def opening(self) -> str | None:
        """A fixed first line when this agent opens the conversation, or None to generate it."""
        return None

    def max_sentences(self) -> int:
        """Sentence cap applied to each of this agent's turns."""
        return 5

    def is_farewell(self, text: str) -> bool:
        """True when `text` ends the conversation from this agent's side."""
        return False

    def hidden_state(self) -> dict[str, Any]:
        """Private per-turn state to log next to the visible text (hidden from others)."""
        return {}

    # -- rendering -------------------------------------------------------------------------
    def request(
        self,
        history: Sequence[Utterance],
        labels: Sequence[str],
        *,
        seed: int | None,
        tags: dict[str, Any],
    ) -> GenerationRequest:
        """The request for this agent's next line, given the conversation so far.

        Args:
            history: Every line so far, in order.
            labels: Speaker tags of every participant (for stop strings).
            seed: The call's seed.
            tags: Who is asking (episode id, turn, ...); passed through to the backend.
        """
        common = self.request_options(seed, tags)
        if self.render_mode == "chat":
            return GenerationRequest(messages=self.render_messages(history), **common)
        stops = (*dict.fromkeys(f"\n{label}:" for label in labels), "\n\n")
        return GenerationRequest(prompt=self.render_transcript(history), stop=stops, **common)

    def request_options(self, seed: int | None, tags: dict[str, Any]) -> dict[str, Any]:
        """`GenerationRequest` keyword arguments shared by all of this agent's calls: its
        sampling settings, the seed, and `tags` plus who is asking (agent name and role)."""
        return {
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "presence_penalty": self.sampling.presence_penalty,
            "frequency_penalty": self.sampling.frequency_penalty,
            "max_tokens": self.sampling.max_tokens,
            "seed": seed,
            "tags": {**tags, "agent": self.name, "role": self.role},
        }

    def render_transcript(self, history: Sequence[Utterance]) -> str:
        """Screenplay prompt: title, private header, the lines so far, then this agent's tag."""
        parts = [self.transcript_title]
        header = self.system_prompt().strip()
        if header:
            parts.append(header)
        lines = [f"{u.label}: {u.text}" for u in history]
        lines.append(f"{self.label}:")
        return "\n\n".join(parts) + "\n\n" + "\n".join(lines)

    def render_messages(self, history: Sequence[Utterance]) -> tuple[Message, ...]:
        """Chat prompt: system text, then others' lines as `user` and own lines as `assistant`."""
        messages = [Message("system", self.system_prompt().strip())]
        if not history or history[0].agent == self.name:  # this agent opens
            messages.append(Message("user", "(The conversation begins.)"))
        for u in history:
            messages.append(Message("assistant" if u.agent == self.name else "user", u.text))
        return tuple(messages)

    # -- output cleaning -------------------------------------------------------------------
    def clean(self, raw: str, *, truncated: bool = False) -> str:
        """Visible text from a raw completion: cut at any speaker tag, fold whitespace, keep
        at most `max_sentences()` sentences and drop a dangling half-sentence when the output
        was cut by the token limit. Returns "" (the graph then retries) for empty output and
        for output copied from the agent's own private header."""
        text = raw
        tag = _SPEAKER_TAG.search(text)
        if tag and tag.start() > 0:
            text = text[: tag.start()]
        elif tag:  # starts with a tag such as "Client:" — drop the tag itself
            text = text[tag.end() :]
            nxt = _SPEAKER_TAG.search(text)
            text = text[: nxt.start()] if nxt else text
        text = _SPACES.sub(" ", text).strip().strip('"').strip()
        if len(text) > 20 and text in self._folded_header:
            return ""  # the model parroted its private instructions: treat as no output
        sentences = split_sentences(text)
        if truncated and len(sentences) > 1 and not re.search(r"[.!?…][\"')\]]*$", text):
            sentences = sentences[:-1]
        return " ".join(sentences[: self.max_sentences()]).strip()
