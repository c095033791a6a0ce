"""A two-party conversation as a LangGraph `StateGraph`: strict alternation.

One node per agent (after an optional node for the seed lines); after each line a router ends
the episode (max turns reached, a farewell by an agent whose role recognises one, or the user's
stop predicate) or hands the turn to the other agent. Graph state holds only the end reason; the
lines live in the `Episode` context and the turn log.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from personae.errors import UserError
from personae.graphs._conversation import (
    ConversationOptions,
    check_seed_lines,
    end_reason,
    say_seed_lines,
)
from personae.graphs._episode import Episode
from personae.graphs._registry import GraphKind, register_graph


class DyadicState(TypedDict):
    """Small per-episode state: why the episode ended (None while it goes on)."""

    end_reason: str | None


class DyadicOptions(ConversationOptions):
    """Options of the `dyadic` graph."""

    opener: str | None = Field(None, description="Agent that speaks first (default: the first).")


@register_graph("dyadic")
class Dyadic(GraphKind):
    """Two agents taking turns in strict alternation (counselor and client, buyer and seller)."""

    options_model = DyadicOptions

    @property
    def opts(self) -> DyadicOptions:
        assert isinstance(self.options, DyadicOptions)
        return self.options

    def check(self) -> None:
        speakers = self.cast.speakers
        if len(speakers) != 2:
            raise UserError(
                f"the dyadic graph needs exactly 2 agents that take turns, got {len(speakers)}",
                where=f"{self.cast.source}: agents",
                fix="define two agents (observers aside), or use graph kind 'group' for more",
            )
        if self.opts.opener is not None:
            self.cast.check_agent(self.opts.opener, "opener")
        check_seed_lines(self.opts, self.cast)

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        first = self.opts.opener or self.cast.speakers[0]
        second = next(n for n in self.cast.speakers if n != first)
        return compile_dyadic(first, second, self.opts)


def build_dyadic_graph(
    first: str, second: str, *, max_turns: int, end_on_farewell: bool = True
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the graph for agents `first` (opens) and `second`; run it with
    `ainvoke({"end_reason": None}, context=episode)`."""
    options = DyadicOptions(
        kind="dyadic", opener=first, max_turns=max_turns, end_on_farewell=end_on_farewell
    )
    return compile_dyadic(first, second, options)


def compile_dyadic(
    first: str, second: str, options: DyadicOptions
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the graph for `first` (opens) and `second` with `options`."""
    other = {first: second, second: first}

    def speaker_node(name: str) -> Any:
        async def speak(state: DyadicState, runtime: Runtime[Episode]) -> dict[str, Any]:
            episode = runtime.context
            utterance = await episode.take_turn(name)
            return {"end_reason": end_reason(episode, utterance, options)}

        speak.__name__ = f"speak_{name}"
        return speak

    # Routers are coroutines: LangGraph runs plain functions in a thread pool, which costs
    # more than the routing itself.
    def route(name: str) -> Any:
        async def next_speaker(state: DyadicState) -> str:
            return END if state.get("end_reason") else other[name]

        return next_speaker

    async def seed(state: DyadicState, runtime: Runtime[Episode]) -> dict[str, Any]:
        await say_seed_lines(runtime.context, options)
        return {}

    builder: StateGraph[DyadicState, Episode, DyadicState, DyadicState] = StateGraph(
        DyadicState, context_schema=Episode
    )
    for name in (first, second):
        builder.add_node(name, speaker_node(name))
        builder.add_conditional_edges(name, route(name), [other[name], END])
    if options.seed_lines:
        builder.add_node("seed_lines", seed)
        builder.add_edge(START, "seed_lines")
        builder.add_edge("seed_lines", first)
    else:
        builder.add_edge(START, first)
    return builder.compile(name="dyadic")
