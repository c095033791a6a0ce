"""Graph kinds are plugins: `@register_graph("name")` on a `GraphKind` subclass.

A graph kind is a builder of one LangGraph `StateGraph` (an interaction shape), with its own
pydantic options model. Builder → validate → compile: a kind is constructed with its validated
options and the cast of agents it will run, checks that they fit together (raising a one-line
`UserError` before any token is spent), and compiles its graph once per run. Every episode then
runs `graph.ainvoke(kind.input(), config=kind.config(), context=episode)`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import UserError
from personae.registry import Registry

if TYPE_CHECKING:
    from personae.agents import Agent


class GraphOptions(BaseModel):
    """Options every graph kind has; subclasses add their own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="The registered graph kind.")


@dataclass(frozen=True)
class Cast:
    """The agents a graph runs: who takes turns, who only observes, and what they are.

    Attributes:
        speakers: Agents that take turns, in scenario order.
        observers: Agents that only observe (judges), in scenario order.
        roles: Role of every agent, by name.
        labels: Speaker tag of every agent, by name.
        source: Where the scenario came from, for error messages.
        base_dir: The folder that files named in graph options are relative to.
    """

    speakers: tuple[str, ...]
    observers: tuple[str, ...] = ()
    roles: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = "scenario"
    base_dir: Path = Path(".")

    def where(self, key: str) -> str:
        """`SOURCE: graph.KEY`, for errors about an option."""
        return f"{self.source}: graph.{key}" if key else f"{self.source}: graph"

    def check_agent(self, name: str, key: str) -> None:
        """Raise `UserError` unless `name` is a speaker (option `key` named it)."""
        if name not in self.speakers:
            raise UserError(
                f"{name!r} is not an agent that takes turns",
                where=self.where(key),
                fix=f"use one of: {', '.join(self.speakers)}",
            )


class GraphKind(abc.ABC):
    """An interaction shape. Subclasses set `options_model` and implement `build`.

    Args:
        options: Validated options (an instance of `options_model`).
        cast: The agents it runs.

    Raises:
        UserError: the options and the cast do not fit (checked in `check`).
    """

    #: Set by `@register_graph`.
    name: ClassVar[str] = ""
    options_model: ClassVar[type[GraphOptions]] = GraphOptions
    #: False for kinds only a study of their own runs (e.g. the teaching experiment's).
    standalone: ClassVar[bool] = True

    def __init__(self, options: GraphOptions, cast: Cast) -> None:
        self.options = options
        self.cast = cast
        self.check()

    def check(self) -> None:  # noqa: B027 - optional hook
        """Validate the options against the cast (raise `UserError`)."""

    @abc.abstractmethod
    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        """Compile the LangGraph graph (called once per run; see `graph`)."""

    @cached_property
    def graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The compiled graph, built on first use."""
        return self.build()

    def brief(self, agents: Mapping[str, Agent]) -> None:  # noqa: B027 - optional hook
        """Give an episode's agents what this kind tells them before the first turn (a task,
        its actions), so prompts rendered outside the graph — training exports — match the
        live ones. The graph calls it at the start of every episode; by default nothing."""

    def input(self) -> dict[str, Any]:
        """The state an episode starts from."""
        return {"end_reason": None}

    def config(self) -> RunnableConfig:
        """The LangGraph run config (recursion limit: enough steps for the longest episode)."""
        return RunnableConfig(recursion_limit=10_000)

    @classmethod
    def describe_options(cls) -> list[tuple[str, str]]:
        """(option, description with default) for `personae scenarios`."""
        rows = []
        for key, info in cls.options_model.model_fields.items():
            if key == "kind":
                continue
            desc = info.description or ""
            default = (
                ""
                if info.is_required() or "default" in desc
                else f" (default: {info.get_default(call_default_factory=True)!r})"
            )
            rows.append((key, f"{desc}{default}".strip()))
        return rows


GRAPHS: Registry[type[GraphKind]] = Registry("graph kind")


def register_graph(name: str) -> Callable[[type[GraphKind]], type[GraphKind]]:
    """Class decorator registering a `GraphKind` subclass as graph kind `name`."""

    def decorate(cls: type[GraphKind]) -> type[GraphKind]:
        cls.name = name
        return GRAPHS.add(name, cls, listed=cls.standalone)

    return decorate


def get_graph(name: str, *, where: str | None = None) -> type[GraphKind]:
    """The graph kind registered as `name` (`UserError` with a suggestion if unknown)."""
    return GRAPHS.get(name, where=where)


def graph_kinds() -> Sequence[str]:
    """Registered graph kind names."""
    return GRAPHS.names()
