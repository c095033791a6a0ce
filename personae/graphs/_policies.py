"""Turn policies: who speaks next in a group conversation, registered by name.

A policy sees the agents that take turns, the topology's candidates (the successors of the last
speaker, so a forbidden reply is impossible by construction), the speakers so far and a random
generator derived from (run seed, episode, turn) — so a replay or a fork at any turn draws the
same. It returns a `Decision`: who speaks, by which rule, among which candidates, with which
draw; the decision is stored with the turn. Built in: `round_robin`, `random`, `respond`
(SynDisco's rule), `selector` (an LLM names the next speaker, constrained to the candidates) and
`scripted` (a fixed order). Add your own with `@register_turn_policy`.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from personae.backends import GenerationRequest, Message
from personae.errors import UserError
from personae.registry import Registry

if TYPE_CHECKING:
    from personae.graphs._episode import Episode


class PolicyOptions(BaseModel):
    """Options every turn policy has; subclasses add their own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="The registered turn policy.")


@dataclass(frozen=True, slots=True)
class Decision:
    """Who speaks next and why (stored with the turn as `decision_json`).

    Attributes:
        speaker: The chosen agent.
        policy: The policy's name.
        rule: Which of its rules decided (e.g. `reply` or `uniform` for `respond`).
        candidates: Whom it could choose from.
        draw: The random number the rule used, if any.
        pick: A second draw that picked among several candidates, if any (e.g. `respond`'s
            uniform choice after its reply draw failed).
        call_id: The model call that chose (the `selector`), if any.
    """

    speaker: str
    policy: str
    rule: str
    candidates: tuple[str, ...]
    draw: float | None = None
    pick: float | None = None
    call_id: str | None = None

    def json(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict."""
        data = asdict(self)
        data["candidates"] = list(self.candidates)
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class TurnContext:
    """What a policy decides from.

    Attributes:
        speakers: Agents that take turns, in scenario order.
        candidates: Who may speak now (the topology's successors of the last speaker).
        previous: Speakers of the turns so far (lines and passes; seed lines excluded).
        turn: The index of the turn being decided.
        rng: Random numbers for this decision only.
        episode: The running episode (for policies that call a model).
        last_speaker: Whoever spoke last, seed lines included (None: nobody yet).
    """

    speakers: tuple[str, ...]
    candidates: tuple[str, ...]
    previous: list[str]
    turn: int
    rng: random.Random
    episode: Episode
    last_speaker: str | None = None

    @property
    def last(self) -> str | None:
        """Whoever spoke last, a seed line's speaker included."""
        if self.last_speaker is not None:
            return self.last_speaker
        return self.previous[-1] if self.previous else None

    def others(self) -> tuple[str, ...]:
        """Candidates other than the last speaker (all candidates when none is left)."""
        rest = tuple(c for c in self.candidates if c != self.last)
        return rest or self.candidates


class TurnPolicy(abc.ABC):
    """A rule for choosing the next speaker.

    Args:
        options: Validated options (an instance of `options_model`).
        speakers: The agents that take turns, in scenario order.
        topology: Who may speak after whom.
        where: Where the policy was configured, for error messages.
    """

    name: ClassVar[str] = ""
    options_model: ClassVar[type[PolicyOptions]] = PolicyOptions

    def __init__(
        self, options: PolicyOptions, speakers: Sequence[str], topology: nx.DiGraph, where: str
    ) -> None:
        self.options = options
        self.speakers = tuple(speakers)
        self.topology = topology
        self.where = where
        self.check()

    def check(self) -> None:  # noqa: B027 - optional hook
        """Validate the options against the speakers and topology (raise `UserError`)."""

    @abc.abstractmethod
    async def choose(self, ctx: TurnContext) -> Decision:
        """The next speaker, among `ctx.candidates`."""

    def decision(self, ctx: TurnContext, speaker: str, rule: str, **extra: Any) -> Decision:
        """A `Decision` by this policy."""
        return Decision(speaker, self.name, rule, ctx.candidates, **extra)


POLICIES: Registry[type[TurnPolicy]] = Registry("turn policy")


def register_turn_policy(name: str) -> Callable[[type[TurnPolicy]], type[TurnPolicy]]:
    """Class decorator registering a `TurnPolicy` subclass as policy `name`."""

    def decorate(cls: type[TurnPolicy]) -> type[TurnPolicy]:
        cls.name = name
        return POLICIES.add(name, cls)

    return decorate


# -- the built-in policies ---------------------------------------------------------------------


class RoundRobinOptions(PolicyOptions):
    """Options of `round_robin`."""

    random_start: bool = Field(False, description="Draw the first speaker at random.")


@register_turn_policy("round_robin")
class RoundRobin(TurnPolicy):
    """Everyone in scenario order (the next allowed one after the last speaker)."""

    options_model = RoundRobinOptions

    async def choose(self, ctx: TurnContext) -> Decision:
        assert isinstance(self.options, RoundRobinOptions)
        if not ctx.previous and self.options.random_start:
            pick, draw = _uniform(ctx, ctx.others())
            return self.decision(ctx, pick, "random_start", draw=draw)
        if ctx.last is None:
            return self.decision(ctx, ctx.candidates[0], "first")
        start = self.speakers.index(ctx.last)
        for step in range(1, len(self.speakers) + 1):
            name = self.speakers[(start + step) % len(self.speakers)]
            if name in ctx.others():
                return self.decision(ctx, name, "next")
        return self.decision(ctx, ctx.candidates[0], "next")  # pragma: no cover


def _uniform(ctx: TurnContext, among: Sequence[str]) -> tuple[str, float]:
    draw = ctx.rng.random()
    return among[min(int(draw * len(among)), len(among) - 1)], draw


@register_turn_policy("random")
class RandomPolicy(TurnPolicy):
    """Uniformly at random among the allowed agents, never the last speaker twice in a row."""

    async def choose(self, ctx: TurnContext) -> Decision:
        pick, draw = _uniform(ctx, ctx.others())
        return self.decision(ctx, pick, "uniform", draw=draw)


class RespondOptions(PolicyOptions):
    """Options of `respond`."""

    p: float = Field(0.4, ge=0.0, le=1.0, description="Chance the speaker before last replies.")


@register_turn_policy("respond")
class Respond(TurnPolicy):
    """The first two speakers uniform and distinct; then with probability p the speaker before
    last replies, otherwise anyone but the last speaker, uniformly."""

    options_model = RespondOptions

    async def choose(self, ctx: TurnContext) -> Decision:
        assert isinstance(self.options, RespondOptions)
        if len(ctx.previous) >= 2:
            before_last = ctx.previous[-2]
            draw = ctx.rng.random()
            if draw < self.options.p and before_last in ctx.others() and before_last != ctx.last:
                return self.decision(ctx, before_last, "reply", draw=draw)
            choice, second = _uniform(ctx, ctx.others())
            return self.decision(ctx, choice, "uniform", draw=draw, pick=second)
        pick, draw = _uniform(ctx, ctx.others())
        return self.decision(ctx, pick, "opening" if not ctx.previous else "second", draw=draw)


class ScriptedOptions(PolicyOptions):
    """Options of `scripted`."""

    order: list[str] = Field(min_length=1, description="Speakers in order, cycled.")


@register_turn_policy("scripted")
class Scripted(TurnPolicy):
    """A fixed order of speakers, cycled."""

    options_model = ScriptedOptions

    def check(self) -> None:
        assert isinstance(self.options, ScriptedOptions)
        order = self.options.order
        for i, name in enumerate(order):
            if name not in self.speakers:
                raise UserError(
                    f"scripted order names {name!r}, which is not an agent that takes turns",
                    where=f"{self.where}.order[{i}]",
                    fix=f"use: {', '.join(self.speakers)}",
                )
        for i, name in enumerate(order):
            nxt = order[(i + 1) % len(order)]
            # a one-name order is checked too: it cycles onto itself, and no one follows itself
            if not self.topology.has_edge(name, nxt):
                raise UserError(
                    f"the topology does not let {nxt!r} speak after {name!r}",
                    where=f"{self.where}.order[{(i + 1) % len(order)}]",
                    fix="change the order or the topology",
                )

    async def choose(self, ctx: TurnContext) -> Decision:
        assert isinstance(self.options, ScriptedOptions)
        order = self.options.order
        return self.decision(ctx, order[len(ctx.previous) % len(order)], "order")


class SelectorOptions(PolicyOptions):
    """Options of `selector`."""

    agent: str | None = Field(
        None, description="Whose backend picks the speaker (default: the first agent's)."
    )
    instructions: str = Field(
        "Who should speak next?", description="The question put to the model."
    )
    max_tokens: int = Field(8, ge=1, le=64)


@register_turn_policy("selector")
class Selector(TurnPolicy):
    """A model reads the public conversation and names the next speaker (a constrained choice
    among the candidates' labels, so even a tiny model names a valid one)."""

    options_model = SelectorOptions

    def check(self) -> None:
        assert isinstance(self.options, SelectorOptions)
        agent = self.options.agent
        if agent is not None and agent not in self.speakers:
            raise UserError(
                f"selector agent {agent!r} is not an agent that takes turns",
                where=f"{self.where}.agent",
                fix=f"use one of: {', '.join(self.speakers)}",
            )

    async def choose(self, ctx: TurnContext) -> Decision:
        from personae.graphs._episode import call_id

        assert isinstance(self.options, SelectorOptions)
        episode = ctx.episode
        chooser = self.options.agent or self.speakers[0]
        agents = episode.agents
        labels = {agents[c].label: c for c in ctx.others()}
        public = [u for u in episode.history if u.audience is None and u.kind != "pass"]
        lines = "\n".join(f"{u.label}: {u.text}" for u in public) or "(nobody has spoken yet)"
        roster = ", ".join(labels)
        cid = call_id(episode.episode_id, ctx.turn, "select")
        common: dict[str, Any] = {
            "temperature": 0.0,
            "max_tokens": self.options.max_tokens,
            "seed": episode.seed_for(ctx.turn, "selector"),
            "choices": tuple(labels),
            "tags": {**episode.tags(ctx.turn, cid, purpose="select"), "agent": "selector"},
        }
        ask = f"{self.options.instructions} Choose one of: {roster}."
        request = (
            GenerationRequest(
                messages=(
                    Message("system", "You moderate a conversation and pick the next speaker."),
                    Message("user", f"Conversation:\n{lines}\n\n{ask}"),
                ),
                **common,
            )
            if agents[chooser].render_mode == "chat"
            else GenerationRequest(
                prompt=f"A moderator picks who speaks next.\n\nConversation:\n{lines}\n\n"
                f"{ask}\nNext speaker:",
                **common,
            )
        )
        result, _ = await episode.call(chooser, ctx.turn, request, purpose="select")
        text = result.text.strip()
        pick = labels.get(text) or next(
            (name for label, name in labels.items() if text.lower().startswith(label.lower())),
            None,
        )
        if pick is None:  # an engine without constrained decoding answered off the list
            return self.decision(ctx, ctx.others()[0], "selector_fallback", call_id=cid)
        return self.decision(ctx, pick, "selector", call_id=cid)
