"""LangGraph state machines, one module per interaction shape.

`build_dyadic_graph` (two-party conversation). Every graph runs with an `Episode` as its
LangGraph context: agents, backends, the in-memory history and the turn-log writer.
"""

from personae.graphs._dyadic import DyadicState, build_dyadic_graph
from personae.graphs._episode import EMPTY_UTTERANCE, Episode, StopPredicate

__all__ = ["EMPTY_UTTERANCE", "DyadicState", "Episode", "StopPredicate", "build_dyadic_graph"]
