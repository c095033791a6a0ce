"""A two-party conversation as a LangGraph `StateGraph`.

One node per agent; after each line a router ends the episode (max turns reached, a farewell by an
agent whose role recognises one, or the user's stop predicate) or hands the turn to the other
agent: strict alternation. Graph state holds only the turn counter and the end reason; the lines
themselves live in the `Episode` context and the turn log.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from personae.graphs._episode import Episode


class DyadicState(TypedDict):
    """Small per-episode state: next turn index and why the episode ended."""

    turn: int
    end_reason: str | None


def build_dyadic_graph(
    first: str, second: str, *, max_turns: int, end_on_farewell: bool = True
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the graph for agents `first` (opens) and `second`.

    Run it with `graph.ainvoke({"turn": 0, "end_reason": None}, context=episode)`. Starting at
    turn K > 0 (a fork, with `episode.history` holding the first K lines) hands the first line
    to `first` when K is even and to `second` when K is odd.
    """
    other = {first: second, second: first}

    def speaker_node(name: str) -> Any:
        async def speak(state: DyadicState, runtime: Runtime[Episode]) -> dict[str, Any]:
            episode = runtime.context
            utterance = await episode.take_turn(name, state["turn"])
            turn = state["turn"] + 1
            if end_on_farewell and episode.agents[name].is_farewell(utterance.text):
                return {"turn": turn, "end_reason": "farewell"}
            if episode.stop_when is not None and episode.stop_when(episode.history):
                return {"turn": turn, "end_reason": "predicate"}
            if turn >= max_turns:
                return {"turn": turn, "end_reason": "max_turns"}
            return {"turn": turn}

        speak.__name__ = f"speak_{name}"
        return speak

    # Routers are coroutines: LangGraph runs plain functions in a thread pool, which costs
    # more than the routing itself.
    def route(name: str) -> Any:
        async def next_speaker(state: DyadicState) -> str:
            return END if state.get("end_reason") else other[name]

        return next_speaker

    async def opener(state: DyadicState) -> str:
        return first if state["turn"] % 2 == 0 else second

    builder: StateGraph[DyadicState, Episode, DyadicState, DyadicState] = StateGraph(
        DyadicState, context_schema=Episode
    )
    for name in (first, second):
        builder.add_node(name, speaker_node(name))
        builder.add_conditional_edges(name, route(name), [other[name], END])
    builder.add_conditional_edges(START, opener, [first, second])
    return builder.compile(name="dyadic")
