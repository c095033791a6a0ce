"""Who may address whom: a networkx `DiGraph` over the agents that take turns.

An edge u → v means v may speak right after u (v may reply to u). The turn policy only ever
chooses among the successors of the last speaker, so a line that breaks the topology cannot
happen. Shapes: `complete` (everyone after everyone), `ring` (neighbours in scenario order, both
ways), `star` (the first agent, or `{star: HUB}`, is the hub: leaves speak only after the hub and
the hub after anyone), or `{edges: [[A, B], ...]}` (directed, as listed). Every agent must be
reachable (someone can speak before it) and must have a successor (the conversation cannot get
stuck after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StarSpec(_Strict):
    """A star around `star` (the hub)."""

    star: str


class EdgesSpec(_Strict):
    """Directed edges, `[from, to]`: `to` may speak right after `from`."""

    edges: list[tuple[str, str]] = Field(min_length=1)


TopologySpec = Literal["complete", "ring", "star"] | StarSpec | EdgesSpec

_SHAPES = "complete, ring, star, {star: AGENT} or {edges: [[FROM, TO], ...]}"


def parse_topology(value: Any) -> TopologySpec | None:
    """A topology as written in a scenario, in one of its shapes (`ValueError` naming the
    shapes when it is none of them, so the error points at `graph.topology`)."""
    if value is None or isinstance(value, StarSpec | EdgesSpec):
        return value
    if isinstance(value, str):
        if value in ("complete", "ring", "star"):
            return value  # type: ignore[return-value]
        raise ValueError(f"unknown topology {value!r}: use {_SHAPES}")
    if isinstance(value, dict) and set(value) == {"star"} and isinstance(value["star"], str):
        return StarSpec(star=value["star"])
    if isinstance(value, dict) and set(value) == {"edges"}:
        edges = value["edges"]
        if not isinstance(edges, list) or not edges:
            raise ValueError("edges must be a non-empty list of [FROM, TO] pairs")
        for i, edge in enumerate(edges):
            if not (isinstance(edge, list | tuple) and len(edge) == 2
                    and all(isinstance(n, str) for n in edge)):  # fmt: skip
                raise ValueError(
                    f"edges[{i}] must be a pair of agent names [FROM, TO], got {edge!r}"
                )
        return EdgesSpec(edges=[(str(a), str(b)) for a, b in edges])
    raise ValueError(f"a topology is {_SHAPES}, got {value!r}")


def build_topology(spec: TopologySpec | None, speakers: Sequence[str], where: str) -> nx.DiGraph:
    """The topology over `speakers` (complete when `spec` is None).

    Raises:
        UserError: an edge naming an unknown agent, a self-loop, an agent nobody can speak
            before, or an agent after whom nobody can speak.
    """
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(speakers)
    names = list(speakers)
    if spec is None or spec == "complete":
        graph.add_edges_from((u, v) for u in names for v in names if u != v)
    elif spec == "ring":
        for i, u in enumerate(names):
            v = names[(i + 1) % len(names)]
            if u != v:
                graph.add_edge(u, v)
                graph.add_edge(v, u)
    elif spec == "star" or isinstance(spec, StarSpec):
        hub = names[0] if spec == "star" else spec.star
        _known(hub, names, f"{where}.star")
        for leaf in names:
            if leaf != hub:
                graph.add_edge(hub, leaf)
                graph.add_edge(leaf, hub)
    else:
        assert isinstance(spec, EdgesSpec)
        for i, (u, v) in enumerate(spec.edges):
            _known(u, names, f"{where}.edges[{i}]")
            _known(v, names, f"{where}.edges[{i}]")
            if u == v:
                raise UserError(
                    f"edge [{u}, {v}] is a self-loop: an agent cannot reply to itself",
                    where=f"{where}.edges[{i}]",
                    fix="remove it",
                )
            graph.add_edge(u, v)
    if len(names) > 1:
        for name in names:
            if graph.in_degree(name) == 0:
                raise UserError(
                    f"agent {name!r} is unreachable: no edge leads to it, so it could never speak",
                    where=where,
                    fix=f"add an edge [OTHER, {name}]",
                )
            if graph.out_degree(name) == 0:
                raise UserError(
                    f"nobody may speak after {name!r}: the conversation would get stuck",
                    where=where,
                    fix=f"add an edge [{name}, OTHER]",
                )
    return graph


def _known(name: str, names: Sequence[str], where: str) -> None:
    if name not in names:
        raise UserError(
            f"topology names an unknown agent {name!r}",
            where=where,
            fix=f"agents that take turns: {', '.join(names)}",
        )


def topology_json(graph: nx.DiGraph) -> dict[str, Any]:
    """The topology as `{agent: [successors]}` (for the run's record)."""
    return {str(u): sorted(str(v) for v in graph.successors(u)) for u in graph.nodes}
