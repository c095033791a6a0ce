"""What the one runner runs: a `Study` — planned episodes, in stages, each a graph of a
registered kind — and how studies are found again from a run database.

A study plans every episode up front (stable ids, so a rerun resumes), and builds one
`EpisodeJob` per episode: the compiled LangGraph graph, its `Episode` context and its start
state. Episodes of stage k+1 start only when stage k is done; `prepare` then sees the outcomes
(`episodes.outcome_json`) of every complete earlier episode — run now or in an earlier,
interrupted run — so a multi-stage study (the teaching experiment) resumes like any other.
Studies are registered by kind (`register_study`) so replay, fork and resume can rebuild one from
the spec a run stored.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from personae.backends import Backend
from personae.errors import UserError
from personae.graphs import Episode, StopPredicate
from personae.registry import Registry
from personae.scenario import EpisodePlan
from personae.store import RunLog, TurnLogWriter
from personae.store._cache import ResponseCache


@dataclass(frozen=True)
class Pause:
    """An answer to an interrupt: stop here; the episode is left `paused` with its checkpoint,
    and resuming the run continues it from there."""


@dataclass(frozen=True)
class End:
    """An answer to an interrupt: the person ends the episode now (end reason `ended`); its
    end-of-episode observers still run."""


#: The answer to an interrupt payload: the line typed, `Pause()` or `End()` (or an awaitable
#: of one); or a mapping `{"text", "seconds", "elapsed_s"}` giving the timings too (a replay).
Answer = str | dict[str, Any] | Pause | End
OnInterrupt = Callable[[dict[str, Any]], Answer | Awaitable[Answer]]


@dataclass
class Services:
    """What the runner lends every episode of a run.

    Attributes:
        backends: Backend per agent name.
        writer: The run's writer (None: log nothing).
        cache: The response cache, if enabled.
        stop_when: A user predicate ending conversations.
        on_turn: Progress callback (completion tokens so far of the episode).
        on_interrupt: Answers an episode's interrupts (a person's turn): given the payload,
            returns the line, `Pause()` or `End()`.
        checkpointer: The LangGraph checkpointer of a run whose graphs interrupt (None
            otherwise: episodes that cannot interrupt run without one).
    """

    backends: Mapping[str, Backend]
    writer: TurnLogWriter | None
    cache: ResponseCache | None = None
    stop_when: StopPredicate | None = None
    on_turn: Callable[[int], None] | None = None
    on_interrupt: OnInterrupt | None = None
    checkpointer: BaseCheckpointSaver[Any] | None = None


@dataclass
class EpisodeJob:
    """One episode, ready to run: `graph.ainvoke(input, config, context=episode)`."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    episode: Episode
    input: dict[str, Any] = field(default_factory=lambda: {"end_reason": None})
    config: RunnableConfig = field(default_factory=lambda: RunnableConfig(recursion_limit=10_000))


class Study(abc.ABC):
    """A plan of episodes and how to run each; what `personae.runner.execute` runs.

    Subclasses set `kind` (stored in `runs.study`) and implement `plan`, `job`, `restore`,
    `spec_json` and `backend_specs`.
    """

    kind: ClassVar[str] = ""
    name: str
    seed: int
    base_dir: Path

    @abc.abstractmethod
    def spec_json(self) -> str:
        """The spec to store with the run (what `register_study`'s loader reads back)."""

    @abc.abstractmethod
    def backend_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """(backend spec, options) for every agent, by agent name."""

    @abc.abstractmethod
    def plan(self) -> list[EpisodePlan]:
        """Every episode, in a stable order, with stable ids and stage numbers."""

    @abc.abstractmethod
    def job(self, plan: EpisodePlan, services: Services) -> EpisodeJob:
        """The graph, context and start state of one planned episode."""

    @abc.abstractmethod
    def restore(self, row: dict[str, Any]) -> EpisodePlan:
        """The plan of a logged episode, from its decoded `episodes` row (replay, fork)."""

    async def prepare(  # noqa: B027 - optional hook
        self,
        stage: int,
        outcomes: Mapping[str, Any],
        writer: TurnLogWriter | None,
        run_id: str = "",
    ) -> None:
        """Called before stage `stage` runs, with the outcomes of every complete episode so far
        (by id); may queue rows on `writer` (written before the stage's episodes; None when an
        episode is rebuilt for a replay). Must be idempotent: a resumed run calls it again."""

    async def finish(
        self, outcomes: Mapping[str, Any], writer: TurnLogWriter | None = None, run_id: str = ""
    ) -> dict[str, Any]:
        """Called once every stage ran, with every complete episode's outcome (may queue final
        rows on `writer`); returns what to add to the run's `summary_json` (e.g. an
        experiment's result tables)."""
        return {}

    def on_backends(self, backends: Mapping[str, Backend]) -> None:  # noqa: B027 - optional
        """Called once the backends are started (e.g. to hand a simulator its data)."""

    def episode_row(self, plan: EpisodePlan) -> dict[str, Any]:
        """The `episodes` columns that describe a planned episode."""
        return {
            "condition_json": json.dumps(plan.condition),
            "personas_json": json.dumps(
                {n: p.model_dump(mode="json") for n, p in plan.personas.items()}
            ),
        }

    def settings(
        self, plan: EpisodePlan, items: Sequence[str]
    ) -> tuple[Study, EpisodePlan, dict[str, dict[str, Any]]]:
        """This study and `plan` with `--set` items applied (for forks), and the changed fields
        per agent; by default none are supported."""
        if items:
            raise UserError(
                f"--set is not supported for {self.kind or 'this kind of'} runs",
                where=f"--set {items[0]}",
                fix="fork without --set (only --backend), or fork a conversation episode",
            )
        return self, plan, {}

    def with_backend(self, backend: str) -> Study:
        """This study with every agent on `backend` (for forks and `--backend`)."""
        raise UserError(
            f"--backend is not supported for {self.kind or 'this kind of'} runs",
            where="--backend",
            fix="fork without --backend",
        )


#: `loader(spec, base_dir)`: the study of a stored spec. Loaders never import code named in a
#: stored spec (a database may come from someone else): its `imports:` must be given again with
#: `--import`, and a missing role or graph kind says so.
StudyLoader = Callable[[dict[str, Any], Path], Study]
STUDIES: Registry[StudyLoader] = Registry("study kind")


def register_study(kind: str) -> Callable[[StudyLoader], StudyLoader]:
    """Decorator registering `loader(spec, base_dir) -> Study` for runs stored as `kind`."""

    def decorate(loader: StudyLoader) -> StudyLoader:
        return STUDIES.add(kind, loader)

    return decorate


def stored_kind(run: Mapping[str, Any]) -> str:
    """The study kind of a stored run (databases of schema 1 have no `study` column)."""
    if run.get("study"):
        return str(run["study"])
    try:
        spec = json.loads(run.get("spec_json") or "{}")
    except json.JSONDecodeError:
        spec = {}
    if isinstance(spec, dict) and spec.get("kind") == "teaching":
        return "teaching"
    return "scenario"


def study_of_run(log: RunLog, run_id: str) -> Study:
    """The study a stored run was started with.

    Raises:
        UserError: the run's kind is not registered here (import its plugin), or its stored
            spec no longer validates.
    """
    run = log.run(run_id)
    where = f"{log.path}: run {run_id} ({run.get('scenario')})"
    loader = STUDIES.get(stored_kind(run), where=where)
    try:
        spec = json.loads(run["spec_json"] or "{}")
    except json.JSONDecodeError:
        raise UserError("the run's stored spec is not JSON", where=where) from None
    return loader(spec, Path(run.get("scenario_path") or "."))
