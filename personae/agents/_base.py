"""Agents: a role, a persona, a prompt renderer and sampling settings.

An agent never calls another agent or a backend: the graph hands it the conversation as seen from
its side and sends the `GenerationRequest` it builds to the backend. Prompts are prefix-stable:
the private header (system text and persona) comes first and never changes, history is appended,
so the prompt at turn t+1 extends the prompt at turn t and engines reuse their prefix cache.

Two render modes: `transcript` (base models: a screenplay ending in this agent's speaker tag, with
stop strings at every speaker tag) and `chat` (instruct models: system + alternating messages, own
lines as `assistant`).

What an agent may see is decided in one place, `Utterance.visible_to` (through `Agent.view`):
every line has an audience (everyone, or named agents), and an agent's prompt — in both render
modes, live, in training exports and in replays — holds only the lines whose audience includes
it, cut to its context window.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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


#: Kinds of logged lines: a spoken `line`, a fixed `seed` line from the scenario (no model call),
#: a `pass` (an abstention: shown to nobody), a judge's `feedback` routed to named agents, an
#: environment's `observation` (what a computer-use agent sees after an action; no model call).
LineKind = Literal["line", "seed", "pass", "feedback", "observation"]


@dataclass(frozen=True, slots=True)
class Utterance:
    """A line of the conversation as the graph hands it to agents.

    Attributes:
        agent: Who said it (agent name).
        label: The speaker tag shown in prompts.
        text: The visible text.
        audience: Agents who hear it besides the speaker; None: everyone.
        kind: See `LineKind`.
    """

    agent: str
    label: str
    text: str
    audience: tuple[str, ...] | None = None
    kind: LineKind = "line"

    def visible_to(self, name: str) -> bool:
        """Whether agent `name` may see this line (the one audience rule of personae)."""
        if self.kind == "pass":
            return False
        return self.audience is None or name == self.agent or name in self.audience

    @property
    def private(self) -> bool:
        """True when only named agents hear it."""
        return self.audience is not None


def visible_history(
    history: Sequence[Utterance], name: str, window: int | None = None
) -> list[Utterance]:
    """The lines of `history` agent `name` may see, the last `window` of them when set."""
    seen = [u for u in history if u.visible_to(name)]
    return seen[-window:] if window else seen


def default_label(name: str) -> str:
    """The speaker tag an agent gets from its name: `buyer_advisor` -> `Buyer Advisor`."""
    return name.replace("_", " ").replace("-", " ").title()


class Agent:
    """Base class of every role.

    Subclasses set `role` and `persona_model`, and override `system_prompt` (private header).
    They may override `opening` (a fixed first line), `max_sentences` and `is_farewell`.

    Args:
        name: The agent's name in the scenario (unique within an episode).
        persona: A validated instance of `persona_model`.
        sampling: Sampling settings.
        render_mode: "transcript" or "chat".
        label: The speaker tag shown in transcripts (default: the agent's name, capitalised).
        window: See only the last `window` visible lines (None: the whole history).
        multi_party: More than two agents talk: chat prompts name the speaker of every line.
        audience: Who hears this agent's lines besides itself (None: everyone).
        context: Text given to this agent for the whole episode, after its own instructions
            (e.g. notes from earlier sessions of a course); part of its private header.
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
        window: int | None = None,
        multi_party: bool = False,
        audience: Sequence[str] | None = None,
        context: str = "",
    ) -> None:
        self.name = name
        self.context = context
        self.persona = persona
        self.sampling = sampling or Sampling()
        self.render_mode: RenderMode = render_mode
        self.label = label or self.persona_label() or default_label(name)
        self.window = window
        self.multi_party = multi_party
        self.audience: tuple[str, ...] | None = tuple(audience) if audience is not None else None

    @functools.cached_property
    def _system_text(self) -> str:
        """`system_prompt()` then the episode's `context`, stripped, computed once (both are
        constant for the episode)."""
        parts = (self.system_prompt().strip(), self.context.strip())
        return "\n\n".join(p for p in parts if p)

    @functools.cached_property
    def _folded_header(self) -> str:
        return _SPACES.sub(" ", self._system_text)

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

    def persona_label(self) -> str | None:
        """A speaker tag taken from the persona (e.g. a username), used when the scenario sets
        no label; None: the tag comes from the agent's name."""
        return None

    def takes_turns(self) -> bool:
        """Whether this agent speaks in this episode (a facilitator whose strategy is `none`
        does not: the graph then never gives it the turn)."""
        return True

    def hidden_state(self) -> dict[str, Any]:
        """Private per-turn state to log next to the visible text (hidden from others)."""
        return {}

    # -- rendering -------------------------------------------------------------------------
    def view(self, history: Sequence[Utterance]) -> list[Utterance]:
        """The lines of `history` this agent sees: its audience, within its window."""
        return visible_history(history, self.name, self.window)

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
            history: Every line so far, in order (the agent's `view` of it is rendered).
            labels: Speaker tags of every participant (for stop strings).
            seed: The call's seed.
            tags: Who is asking (episode id, turn, ...); passed through to the backend.
        """
        common = self.request_options(seed, tags)
        seen = self.view(history)
        if self.render_mode == "chat":
            return GenerationRequest(messages=self.render_messages(seen), **common)
        stops = (*dict.fromkeys(f"\n{label}:" for label in labels), "\n\n")
        return GenerationRequest(prompt=self.render_transcript(seen), stop=stops, **common)

    def chat_messages(self, history: Sequence[Utterance]) -> tuple[Message, ...]:
        """This agent's chat prompt over its view of `history` (what training exports use)."""
        return self.render_messages(self.view(history))

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

    def _tag(self, u: Utterance) -> str:
        """How a line's speaker is shown: others' private lines are marked as such."""
        return f"{u.label} (privately)" if u.private and u.agent != self.name else u.label

    def render_transcript(self, history: Sequence[Utterance]) -> str:
        """Screenplay prompt: title, private header, the lines seen so far, then this agent's
        tag. `history` is what this agent sees (see `view`)."""
        parts = [self.transcript_title]
        if self._system_text:
            parts.append(self._system_text)
        lines = [f"{self._tag(u)}: {u.text}" for u in history]
        lines.append(f"{self.label}:")
        return "\n\n".join(parts) + "\n\n" + "\n".join(lines)

    def render_messages(self, history: Sequence[Utterance]) -> tuple[Message, ...]:
        """Chat prompt: system text, then others' lines as `user` and own lines as `assistant`
        (consecutive lines of one side merged, as chat templates expect alternation). Others'
        lines carry their speaker's tag when several agents talk or the line is private.
        `history` is what this agent sees (see `view`)."""
        messages = [Message("system", self._system_text)]
        if not history or history[0].agent == self.name:  # this agent opens
            messages.append(Message("user", "(The conversation begins.)"))
        for u in history:
            own = u.agent == self.name
            text = (
                u.text
                if own or not (self.multi_party or u.private)
                else f"{self._tag(u)}: {u.text}"
            )
            role: Literal["assistant", "user"] = "assistant" if own else "user"
            if messages[-1].role == role:
                messages[-1] = Message(role, f"{messages[-1].content}\n{text}")
            else:
                messages.append(Message(role, text))
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
