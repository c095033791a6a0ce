"""Sandboxed computers for computer-use agents, registered by name (`shell`, ...).

The contract (`Environment`): `reset(task) -> Observation`, `step(action) -> StepResult`,
`final_state() -> State`, `close()`; one instance per episode, made and always closed by
`open_environment` inside a `RunFolder`, many running concurrently on one event loop. Tasks
(`Task`, `load_task`) are YAML files naming an environment, a pattern of blind
goal-directedness, setup files, a judge note and machine-checkable state checks. The `shell`
environment is a persistent bash in a bubblewrap sandbox; `web` is a real chromium on small
local web apps (notes, social, files, settings) that can reach nothing else. Add your own with
`@register_environment("name")` on an `Environment` subclass.
"""

from personae.environments._base import (
    ENVIRONMENTS,
    Action,
    ActionSpec,
    Environment,
    EnvironmentOptions,
    Observation,
    StepResult,
    environment_options,
    get_environment,
    open_environment,
    register_environment,
)
from personae.environments._browser import hold_browser
from personae.environments._bwrap import check_bwrap
from personae.environments._checks import StateCheck
from personae.environments._rundir import RunFolder
from personae.environments._shell import ShellEnvironment, ShellOptions
from personae.environments._state import FileState, State, StateDiff
from personae.environments._task import (
    PATTERNS,
    Setup,
    SetupFile,
    Task,
    load_task,
    load_tasks,
    task_from_dict,
)
from personae.environments._web import WebEnvironment, WebOptions

__all__ = [
    "ENVIRONMENTS",
    "PATTERNS",
    "Action",
    "ActionSpec",
    "Environment",
    "EnvironmentOptions",
    "FileState",
    "Observation",
    "RunFolder",
    "Setup",
    "SetupFile",
    "ShellEnvironment",
    "ShellOptions",
    "State",
    "StateCheck",
    "StateDiff",
    "StepResult",
    "Task",
    "WebEnvironment",
    "WebOptions",
    "check_bwrap",
    "environment_options",
    "get_environment",
    "hold_browser",
    "load_task",
    "load_tasks",
    "open_environment",
    "register_environment",
    "task_from_dict",
]
