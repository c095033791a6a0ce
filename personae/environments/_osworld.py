"""The `osworld` environment: an OSWorld `DesktopEnv` (a real desktop in a virtual machine)
behind the environment contract, for users who run OSWorld themselves.

OSWorld's `desktop_env` package is optional (`pip install 'personae[osworld]'`, or an OSWorld
checkout installed with `pip install -e .`) and imported only when an episode starts; without
it `open_environment` raises a one-line `UserError` saying what to install. A task carries an
OSWorld task JSON as `setup.app: {osworld: <the JSON, or a path to it beside the task file>}`;
`load_osworld_task` builds such a task from a JSON file. `reset` makes the `DesktopEnv` with the
environment's options and calls `reset(task_config=...)`; the action `pyautogui CODE` is
`step(CODE, pause)`, and the loop's `done`, `fail` and `ask` are OSWorld's `DONE` and `FAIL`
(asking the user is declining to go on). Observations are the accessibility tree, one line per
named element, cut to `observation_chars`. `final_state().extra["osworld_score"]` is
`evaluate()` (called once, after the last step); `close` always calls `DesktopEnv.close()`.
DesktopEnv blocks, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from personae.environments._base import (
    Action,
    ActionSpec,
    Environment,
    EnvironmentOptions,
    Observation,
    StepResult,
    register_environment,
)
from personae.environments._checks import Ran
from personae.environments._state import State
from personae.environments._task import DEFAULT_MAX_STEPS, Pattern, Task, _inside, task_from_dict
from personae.errors import UserError

log = logging.getLogger(__name__)

MODULE = "desktop_env.desktop_env"
INSTALL = (
    "pip install 'personae[osworld]' (OSWorld's desktop-env package), or install OSWorld from "
    "its repository with `pip install -e .` in a checkout; then set up a VM provider as its "
    "README says"
)
INSTALL_FMT = "see OSWorld's evaluation_examples/examples/*/*.json for the format"
#: The loop's own actions, as OSWorld's special actions.
_SPECIAL = {"done": "DONE", "fail": "FAIL", "ask": "FAIL", "wait": "WAIT"}


class OSWorldOptions(EnvironmentOptions):
    """Options of the osworld environment; all but the last three go to `DesktopEnv(...)`."""

    provider_name: str = Field("vmware", description="vmware, virtualbox, docker, aws, ...")
    path_to_vm: str | None = Field(None, description="The VM (.vmx, ...); None: the provider's.")
    region: str | None = Field(None, description="For cloud providers.")
    snapshot_name: str = "init_state"
    action_space: Literal["pyautogui", "claude_computer_use"] = "pyautogui"
    screen_size: tuple[int, int] = (1920, 1080)
    headless: bool = True
    os_type: str = "Ubuntu"
    client_password: str = ""
    cache_dir: str | None = Field(None, description="None: a folder inside the episode's.")
    desktop_env: dict[str, Any] = Field(
        default_factory=dict, description="Further DesktopEnv keyword arguments, as they are."
    )
    pause_s: float = Field(2.0, ge=0, le=60, description="Seconds DesktopEnv waits after a step.")
    observation_chars: int = Field(6000, ge=200, le=1_000_000, description="Observation size.")
    code_chars: int = Field(20_000, ge=10, description="Longest pyautogui code accepted.")

    def env_kwargs(self, folder: Path) -> dict[str, Any]:
        """The keyword arguments for `DesktopEnv` (the accessibility tree is always asked for)."""
        own = self.model_dump(
            exclude={"desktop_env", "pause_s", "observation_chars", "code_chars", "cache_dir"}
        )
        own["cache_dir"] = self.cache_dir or str(folder / "cache")
        return {**own, **self.desktop_env, "require_a11y_tree": True}


def _attr(element: ET.Element, name: str) -> str | None:
    """An attribute by its local name (OSWorld's trees put most in XML namespaces)."""
    for key, value in element.attrib.items():
        if key.rsplit("}", 1)[-1] == name:
            return value
    return None


def tree_text(tree: str | None) -> str:
    """An accessibility tree (OSWorld's XML) as one line per element with a name or text:
    `role "name" text @(x, y) (w, h)`; text that is not XML comes back as it is."""
    if not tree:
        return "(no accessibility tree)"
    try:
        root = ET.fromstring(tree)
    except ET.ParseError:
        return tree
    lines = []
    for el in root.iter():
        name = el.get("name") or ""
        text = (el.text or "").strip()
        if not name and not text:
            continue
        role = el.tag.rsplit("}", 1)[-1]
        where = " ".join(
            f"{'@' if key == 'screencoord' else ''}{value}"
            for key in ("screencoord", "size")
            if (value := _attr(el, key))
        )
        parts = [role, json.dumps(name, ensure_ascii=False) if name else "", text[:200], where]
        lines.append(" ".join(p for p in parts if p))
    return "\n".join(lines) or "(an empty accessibility tree)"


def _bounded(text: str, limit: int) -> Observation:
    if len(text) <= limit:
        return Observation(text)
    note = f"\n[observation cut: first {limit} of {len(text)} characters]"
    return Observation(text[:limit] + note, truncated=True)


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot read the OSWorld task {path}: {str(exc).splitlines()[0]}",
            where=where,
            fix="give an OSWorld task JSON file",
        ) from None
    return _checked_config(data, where)


def _checked_config(data: Any, where: str) -> dict[str, Any]:
    """`data` if it has what DesktopEnv reads from a task (`id`, `instruction`, `evaluator`)."""
    if not isinstance(data, dict):
        raise UserError("an OSWorld task must be a JSON object", where=where, fix=INSTALL_FMT)
    missing = [k for k in ("id", "instruction", "evaluator") if k not in data]
    if missing:
        raise UserError(
            f"the OSWorld task has no {', '.join(map(repr, missing))}",
            where=where,
            fix=INSTALL_FMT,
        )
    if not isinstance(data["evaluator"], dict) or "func" not in data["evaluator"]:
        raise UserError("the OSWorld task's evaluator has no 'func'", where=where, fix=INSTALL_FMT)
    return data


def task_config(task: Task) -> dict[str, Any]:
    """The OSWorld task JSON of `task` (read from its file when `setup.app.osworld` is a path);
    a one-line `UserError` when it is missing or malformed."""
    where = f"{task.source}: setup.app"
    app = task.setup.app
    if not isinstance(app, Mapping) or set(app) != {"osworld"}:
        raise UserError(
            "an osworld task needs setup.app with exactly one key, 'osworld'",
            where=where,
            fix="write setup.app: {osworld: path/to/task.json} or the task JSON itself",
        )
    value = app["osworld"]
    if isinstance(value, str):
        return _read_json(_inside(task.base_dir, value, f"{where}.osworld"), f"{where}.osworld")
    return _checked_config(value, f"{where}.osworld")


def load_osworld_task(
    path: str | Path,
    *,
    pattern: Pattern,
    judge_note: str,
    checks: list[dict[str, Any]] | None = None,
    max_steps: int | None = None,
    task_id: str | None = None,
) -> Task:
    """A task of the `osworld` environment made from the OSWorld task JSON at `path`.

    Args:
        path: An OSWorld task file (`evaluation_examples/examples/<app>/<id>.json`).
        pattern: The blind goal-directedness pattern it probes.
        judge_note: What counts as blind goal-directedness and as completion.
        checks: State checks, as in a task file (only `ran` applies to a desktop).
        max_steps: Default: the JSON's `max_steps`, else 15.
        task_id: Default: the JSON's `id`.
    """
    path = Path(path)
    config = _read_json(path, str(path))
    steps = max_steps if max_steps is not None else config.get("max_steps", DEFAULT_MAX_STEPS)
    data = {
        "id": task_id or str(config["id"]),
        "pattern": pattern,
        "instruction": config["instruction"],
        "environment": "osworld",
        "max_steps": steps,
        "judge_note": judge_note,
        "setup": {"app": {"osworld": config}},
        "checks": checks or [],
    }
    return task_from_dict(data, str(path), path.parent)


def _desktop_env_class() -> Any:
    try:
        module = importlib.import_module(MODULE)
    except ImportError as exc:
        raise UserError(
            f"the osworld environment needs OSWorld's desktop_env package ({exc})",
            fix=INSTALL,
        ) from None
    return module.DesktopEnv


@register_environment("osworld")
class OSWorldEnvironment(Environment):
    """An OSWorld desktop in a virtual machine, driven by pyautogui code."""

    options_model: ClassVar[type[EnvironmentOptions]] = OSWorldOptions
    actions: ClassVar[dict[str, ActionSpec]] = {
        "pyautogui": ActionSpec(("code",), "run Python pyautogui code on the desktop"),
        "wait": ActionSpec((), "wait a moment and look again"),
    }

    def __init__(self, options: EnvironmentOptions, folder: Path) -> None:
        super().__init__(options, folder)
        assert isinstance(options, OSWorldOptions)
        self.opts = options
        self.desktop: Any = None
        self.actions_taken: list[str] = []
        self.ended = False
        self._starting: asyncio.Future[Any] | None = None
        self._score: dict[str, Any] | None = None
        self._closed = False

    @classmethod
    def check_available(cls, options: EnvironmentOptions) -> None:
        """OSWorld's desktop_env must be importable."""
        _desktop_env_class()

    @classmethod
    def check_task(cls, task: Task) -> None:
        """The task must carry an OSWorld task JSON, no workspace files and only `ran` checks."""
        task_config(task)
        if task.setup.files:
            raise UserError(
                "the osworld environment has no workspace to copy setup files into",
                where=f"{task.source}: setup.files",
                fix="set the desktop up with the OSWorld task's own 'config' steps",
            )
        for check in task.checks:
            if not isinstance(check, Ran):
                raise UserError(
                    f"check {check.id!r} reads files, which a desktop in a VM does not show",
                    where=f"{task.source}: checks",
                    fix="use 'ran' checks (on the pyautogui code) or judge the trajectory",
                )

    def _make(self, cls: Any) -> Any:
        # runs in a worker thread: keep the instance even if the awaiting task is cancelled,
        # so close() can still shut the VM down
        self.desktop = cls(**self.opts.env_kwargs(self.folder))
        return self.desktop

    async def reset(self, task: Task) -> Observation:
        """Start the desktop and set it up for `task` (OSWorld's `reset(task_config=...)`)."""
        if self._closed or self._starting is not None:
            raise RuntimeError("an environment runs one episode: make a new one per episode")
        config = task_config(task)
        cls = _desktop_env_class()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._starting = asyncio.ensure_future(asyncio.to_thread(self._make, cls))
        desktop = await asyncio.shield(self._starting)
        obs = await asyncio.to_thread(desktop.reset, task_config=config)
        return self._observe(obs, "A desktop in a virtual machine. Its accessibility tree:\n")

    def _observe(self, obs: Any, head: str = "") -> Observation:
        tree = obs.get("accessibility_tree") if isinstance(obs, Mapping) else None
        text = head + tree_text(tree if isinstance(tree, str) else None)
        terminal = obs.get("terminal") if isinstance(obs, Mapping) else None
        if isinstance(terminal, str) and terminal:
            text += f"\nTerminal:\n{terminal}"
        return _bounded(text, self.opts.observation_chars)

    async def step(self, action: Action) -> StepResult:
        """`pyautogui CODE`, `wait`, or the loop's `done` / `fail` / `ask` (OSWorld's special
        actions); anything else is an observation saying so."""
        if self._closed or self.desktop is None:
            raise RuntimeError("step() needs a reset() environment that is not closed")
        if self.ended:
            text = "[the episode has ended]"
            return StepResult(Observation(text), done=True, notes=("episode ended",))
        command = self._command(action)
        if isinstance(command, StepResult):
            return command
        self.actions_taken.append(command)
        t0 = time.perf_counter()
        obs, reward, done, info = await asyncio.to_thread(
            self.desktop.step, command, self.opts.pause_s
        )
        latency = time.perf_counter() - t0
        self.ended = bool(done) or command in ("DONE", "FAIL")
        details = {"reward": reward, **(info if isinstance(info, Mapping) else {})}
        if action.name == "ask":
            details["ask"] = True
        return StepResult(
            self._observe(obs),
            done=self.ended,
            output=command,
            latency_s=latency,
            info=_jsonable(details),
        )

    def _command(self, action: Action) -> str | StepResult:
        if action.name == "pyautogui" and len(action.args) == 1:
            code = action.args[0]
            if not code.strip() or len(code) > self.opts.code_chars:
                text = f"[the code is empty or over {self.opts.code_chars} characters: not run]"
                return StepResult(Observation(text), notes=("invalid code",))
            return code
        if action.name in _SPECIAL:
            return _SPECIAL[action.name]
        text = (
            f"[unknown action {str(action)!r}: this environment accepts `pyautogui CODE` and "
            "`wait`]"
        )
        return StepResult(Observation(text), notes=("invalid action",))

    async def final_state(self) -> State:
        """The actions taken, and `extra["osworld_score"]` from OSWorld's `evaluate()` (run
        once, the first time this is called after `reset`; an evaluator that raises gives a
        score of None and `extra["osworld_error"]`)."""
        if self.desktop is None:
            return State(commands=tuple(self.actions_taken))
        if self._score is None:
            try:
                score = await asyncio.to_thread(self.desktop.evaluate)
                self._score = {"osworld_score": float(score)}
            except Exception as exc:  # the VM or an evaluator failing is part of the record
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self._score = {"osworld_score": None, "osworld_error": line}
        return State(commands=tuple(self.actions_taken), extra=dict(self._score))

    async def close(self) -> None:
        """Call `DesktopEnv.close()` (also when `reset` failed or was cancelled half way)."""
        if self._closed:
            return
        self._closed = True
        if self._starting is not None and not self._starting.done():
            # a start that failed left nothing to close; one still going must end first
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._starting), timeout=600)
        if self.desktop is not None:
            try:
                await asyncio.to_thread(self.desktop.close)
            except Exception:  # close() must not raise because the VM is already gone
                log.warning("OSWorld's DesktopEnv.close() failed", exc_info=True)


def _jsonable(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with every value JSON can hold kept and the rest written as text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            json.dumps(value)
            out[str(key)] = value
        except (TypeError, ValueError):
            out[str(key)] = repr(value)
    return out
