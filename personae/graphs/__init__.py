"""LangGraph state machines, one module per interaction shape, registered by kind.

Built in: `dyadic` (two agents, strict alternation), `group` (N agents, a turn policy, an
optional topology) and `discussion` (participants under a turn policy, a facilitator after every
comment, seed comments drawn from a pool) and `computer_use` (an agent acting in a sandboxed
environment until it stops); the teaching experiment's item graphs live here
too. Add your own with `@register_graph`. Every graph runs with an `Episode` as its LangGraph
context: agents, backends, the in-memory history, the observers and the turn-log writer.
"""

from personae.graphs import _teaching  # noqa: F401 - registers the teaching graph kinds
from personae.graphs._computer_use import ComputerUse, ComputerUseOptions
from personae.graphs._conversation import ConversationOptions, SeedLine
from personae.graphs._discussion import Discussion, DiscussionOptions
from personae.graphs._dyadic import Dyadic, DyadicOptions, DyadicState, build_dyadic_graph
from personae.graphs._episode import (
    EMPTY_UTTERANCE,
    Episode,
    Observer,
    Seat,
    StopPredicate,
    call_id,
)
from personae.graphs._group import Group, GroupOptions, GroupState
from personae.graphs._policies import (
    POLICIES,
    Decision,
    PolicyOptions,
    TurnContext,
    TurnPolicy,
    register_turn_policy,
)
from personae.graphs._registry import (
    GRAPHS,
    Cast,
    GraphKind,
    GraphOptions,
    get_graph,
    graph_kinds,
    register_graph,
)
from personae.graphs._topology import build_topology

__all__ = [
    "EMPTY_UTTERANCE",
    "GRAPHS",
    "POLICIES",
    "Cast",
    "ComputerUse",
    "ComputerUseOptions",
    "ConversationOptions",
    "Decision",
    "Discussion",
    "DiscussionOptions",
    "Dyadic",
    "DyadicOptions",
    "DyadicState",
    "Episode",
    "GraphKind",
    "GraphOptions",
    "Group",
    "GroupOptions",
    "GroupState",
    "Observer",
    "PolicyOptions",
    "Seat",
    "SeedLine",
    "StopPredicate",
    "TurnContext",
    "TurnPolicy",
    "build_dyadic_graph",
    "build_topology",
    "call_id",
    "get_graph",
    "graph_kinds",
    "register_graph",
    "register_turn_policy",
]
