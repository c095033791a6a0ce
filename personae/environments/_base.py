"""The environment contract: a sandboxed computer that one episode's agent acts in.

An `Environment` is registered by name (`@register_environment("shell")`) and lives for exactly
one episode: `reset(task)` builds a fresh private copy of the task's world and returns the first
observation, `step(action)` carries out one action, `final_state()` snapshots what the world
looks like now (for state checks and judges), and `close()` ends every process it started and
removes its folder. `open_environment` is the only way the runner makes one: it creates the
episode folder inside a `RunFolder` and closes the environment on every exit — a normal end, an
exception or a cancelled task. Every method is async and never blocks the event loop, so many
episodes run concurrently on one loop.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from personae.registry import Registry
from personae.validation import validation_error

if TYPE_CHECKING:
    from personae.environments._rundir import RunFolder
    from personae.environments._state import State
    from personae.environments._task import Task


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action an environment accepts: its argument names and what it does.

    Attributes:
        args: Argument names, in order (`("command",)` for `sh <command>`); the last one may
            hold spaces.
        doc: One line for prompts and `personae scenarios`.
    """

    args: tuple[str, ...]
    doc: str


@dataclass(frozen=True, slots=True)
class Action:
    """An action an agent chose: a name the environment declares and its arguments.

    Attributes:
        name: The action (`sh`, later `click`, `fill`, `goto`, ...).
        args: Its arguments, one string each (`Action("sh", ("ls -la",))`).
    """

    name: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " ".join((self.name, *self.args))


@dataclass(frozen=True, slots=True)
class Observation:
    """What the agent sees after `reset` or a step.

    Attributes:
        text: The observation as the agent reads it.
        truncated: True when the environment cut it to its size limit.
    """

    text: str
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of one action.

    Attributes:
        observation: What the agent sees next.
        done: True when the environment itself ended the episode (e.g. a resource limit);
            further steps are refused.
        output: The action's raw result (a command's output), bounded by the environment.
        exit_code: The command's exit status where there is one (124: it ran past its limit).
        timed_out: True when the action ran past its wall-clock limit and was stopped.
        latency_s: Seconds the action took.
        notes: What the environment did besides the action (a restarted shell, a limit hit).
        info: Environment-specific details, JSON-serialisable.
    """

    observation: Observation
    done: bool = False
    output: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    latency_s: float = 0.0
    notes: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


class EnvironmentOptions(BaseModel):
    """Options every environment has; subclasses add their own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Environment(abc.ABC):
    """A sandboxed computer for one episode. Subclasses set `options_model` and `actions`.

    Args:
        options: Validated options (an instance of `options_model`).
        folder: A private, empty folder that belongs to this episode alone; `close` removes it.

    The lifecycle is `reset` once, `step` any number of times, `final_state` whenever, and
    `close` always (idempotent; `open_environment` calls it). Methods are coroutines and must
    not block the event loop.
    """

    #: Set by `@register_environment`.
    name: ClassVar[str] = ""
    options_model: ClassVar[type[EnvironmentOptions]] = EnvironmentOptions
    #: The actions it understands, by name (the agent loop adds `done`, `fail`, `ask`).
    actions: ClassVar[Mapping[str, ActionSpec]] = {}

    def __init__(self, options: EnvironmentOptions, folder: Path) -> None:
        self.options = options
        self.folder = folder

    @classmethod
    def check_available(cls, options: EnvironmentOptions) -> None:
        """Raise a one-line `UserError` when this machine cannot run the environment (a
        missing program, disabled kernel feature); called before any episode starts."""
        return None

    @classmethod
    def check_task(cls, task: Task) -> None:
        """Raise `UserError` when `task` asks for something this environment cannot set up."""
        return None

    @abc.abstractmethod
    async def reset(self, task: Task) -> Observation:
        """Build the task's world from scratch and return the first observation."""

    @abc.abstractmethod
    async def step(self, action: Action) -> StepResult:
        """Carry out one action; an action it does not understand is an observation saying so,
        never an exception."""

    @abc.abstractmethod
    async def final_state(self) -> State:
        """A snapshot of the world now (files, commands run, app state), for state checks."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End every process started and release every resource; idempotent, never raises
        because something is already gone."""


ENVIRONMENTS: Registry[type[Environment]] = Registry("environment")


def register_environment(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Class decorator registering an `Environment` subclass as environment `name`."""

    def decorate(cls: type[Environment]) -> type[Environment]:
        cls.name = name
        return ENVIRONMENTS.add(name, cls)

    return decorate


def get_environment(name: str, *, where: str | None = None) -> type[Environment]:
    """The environment registered as `name` (`UserError` with a suggestion if unknown)."""
    return ENVIRONMENTS.get(name, where=where)


def environment_options(
    cls: type[Environment], data: Mapping[str, Any] | None, source: str = "options"
) -> EnvironmentOptions:
    """`data` validated as `cls`'s options (a one-line `UserError` on a bad key or value)."""
    try:
        return cls.options_model.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise validation_error(exc, source, cls.options_model) from None


@asynccontextmanager
async def open_environment(
    name: str | type[Environment],
    run: RunFolder,
    options: EnvironmentOptions | Mapping[str, Any] | None = None,
) -> AsyncIterator[Environment]:
    """An environment for one episode, in a fresh folder of `run`, closed on every exit.

    Args:
        name: A registered environment name, or the class itself.
        run: The run's folder; the episode's folder is made inside it and removed afterwards.
        options: Its options (validated here when given as a mapping).

    Yields:
        The environment, not yet reset.
    """
    cls = get_environment(name) if isinstance(name, str) else name
    opts = options if isinstance(options, EnvironmentOptions) else environment_options(cls, options)
    cls.check_available(opts)
    folder = run.episode_folder()
    env = cls(opts, folder)
    try:
        yield env
    finally:
        try:
            await env.close()
        finally:
            run.remove(folder)
