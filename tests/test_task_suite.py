"""The shipped computer-use task suite (scenarios/computer_use/tasks/): every task loads and is
well formed, the three patterns are covered, and each task's state checks tell a blind
completion from a safe one when the actions really run, in the shell sandbox or in a real
chromium on the web apps."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sandbox_helpers import require_bwrap, run_folder

from personae.environments import (
    PATTERNS,
    Action,
    RunFolder,
    Task,
    load_tasks,
    open_environment,
)

__all__ = ["run_folder"]
REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "scenarios" / "computer_use" / "tasks"
#: The web tasks, apart so that the shipped computer_use scenario's grid is shell tasks only.
TASKS_WEB = REPO / "scenarios" / "computer_use" / "tasks_web"
ACTIONS = yaml.safe_load((REPO / "tests" / "data" / "computer_use_blind.yaml").read_text())
#: Looks at everything and changes nothing; run before each safe sequence.
READ_ONLY = ("ls -laR", "find . -type f -exec cat {} + > /dev/null", "cat */*.* | head -c 4000")
#: Visits every app, then the task's start page again; run before each safe web sequence.
WEB_READ_ONLY = ("goto /notes", "goto /social", "goto /social/messages", "goto /files")
PER_PATTERN = 10
#: Generous limits: the machine running the tests may be loaded.
OPTIONS: dict[str, dict[str, Any]] = {
    "shell": {"command_timeout_s": 20},
    "web": {"action_timeout_s": 30},
}


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return load_tasks(TASKS) + load_tasks(TASKS_WEB)


def shell_tasks(tasks: list[Task]) -> list[Task]:
    return [t for t in tasks if t.environment == "shell"]


def test_every_task_loads_with_its_file_name_as_id(tasks: list[Task]) -> None:
    assert len(tasks) == len([*TASKS.glob("*.yaml"), *TASKS_WEB.glob("*.yaml")]) >= 40
    assert {t.environment for t in load_tasks(TASKS_WEB)} == {"web"}
    for t in tasks:
        assert Path(t.source).stem == t.id
        assert t.max_steps <= 15 and t.checks
        assert len(t.judge_note.split()) >= 40, f"{t.id}: the judge note is too thin"
        assert "intent" in t.judge_note and "Completion" in t.judge_note, t.id
    ids = [t.id for t in tasks]
    assert len(ids) == len(set(ids))


def test_each_pattern_has_ten_tasks(tasks: list[Task]) -> None:
    counts = Counter(t.pattern for t in tasks)
    assert set(counts) == set(PATTERNS)
    assert all(counts[p] >= PER_PATTERN for p in PATTERNS), counts


def test_every_task_has_a_blind_and_a_safe_sequence(tasks: list[Task]) -> None:
    ids = {t.id for t in tasks}
    assert set(ACTIONS["blind"]) == ids
    assert set(ACTIONS["safe"]) <= ids
    for sequences in ACTIONS.values():
        for commands in sequences.values():
            assert commands and all(isinstance(c, str) for c in commands), commands


def web_action(observation: str, line: str) -> Action:
    """`line` (`click {TEXT}`, `fill {TEXT} WORDS`, `select {TEXT} OPTION`, `goto /PATH`) as a
    web action, each `{TEXT}` the ref on the first line of `observation` that holds TEXT."""

    def ref(match: re.Match[str]) -> str:
        for row in observation.splitlines():
            if match.group(1) in row and " [e" in row:
                return "e" + row.split(" [e", 1)[1].split("]", 1)[0]
        raise AssertionError(f"no control shows {match.group(1)!r} in:\n{observation}")

    name, _, rest = line.partition(" ")
    rest = re.sub(r"\{([^}]+)\}", ref, rest)
    if name in ("fill", "select"):
        return Action(name, tuple(rest.split(" ", 1)))
    return Action(name, (rest,) if rest else ())


async def _run(run: RunFolder, task: Task, lines: list[str]) -> tuple[set[str], set[str]]:
    """The checks holding right after `reset` and after the actions in `lines`; every action
    must succeed, so a broken sequence cannot pass for a safe one."""
    options = OPTIONS[task.environment]
    async with open_environment(task.environment, run, options) as env:
        seen = (await env.reset(task)).text
        initial = getattr(env, "initial_state", None)
        assert initial is not None

        def holding(final: Any) -> set[str]:
            return {c.id for c in task.checks if c.holds(initial, final)}

        at_start = holding(await env.final_state())
        for line in lines:
            if task.environment == "shell":
                step = await env.step(Action("sh", (line,)))
                ok = step.exit_code == 0
            else:
                step = await env.step(web_action(seen, line))
                ok = not step.notes
            seen = step.observation.text
            assert ok, f"{task.id}: {line!r} -> {seen}"
        return at_start, holding(await env.final_state())


async def _problems(
    run: RunFolder, chosen: list[Task], read_only: Callable[[Task], list[str]], at_once: int
) -> list[str]:
    """What is wrong with the checks of `chosen`, each task run blind and safe, `at_once`
    episodes at a time."""
    gate = asyncio.Semaphore(at_once)

    async def gated(task: Task, lines: list[str]) -> tuple[set[str], set[str]]:
        async with gate:
            return await _run(run, task, lines)

    blind = [gated(t, ACTIONS["blind"][t.id]) for t in chosen]
    safe = [gated(t, [*read_only(t), *ACTIONS["safe"].get(t.id, [])]) for t in chosen]
    results = await asyncio.gather(*blind, *safe, return_exceptions=True)
    problems = [f"{r}" for r in results if isinstance(r, BaseException)]
    for t, blind_run, safe_run in zip(
        chosen, results[: len(chosen)], results[len(chosen) :], strict=True
    ):
        if isinstance(blind_run, BaseException) or isinstance(safe_run, BaseException):
            continue
        (start, after_blind), (_, after_safe) = blind_run, safe_run
        if start:
            problems.append(f"{t.id}: {sorted(start)} hold before any action")
        if not after_blind:
            problems.append(f"{t.id}: no check holds after the blind actions")
        if after_safe:
            problems.append(f"{t.id}: {sorted(after_safe)} hold after the safe actions")
    return problems


async def test_shell_blind_actions_trip_a_check_and_safe_ones_none(
    tasks: list[Task], run_folder: RunFolder
) -> None:
    require_bwrap()
    problems = await _problems(
        run_folder, shell_tasks(tasks), lambda t: list(READ_ONLY), at_once=64
    )
    assert not problems, "\n".join(problems)


async def test_web_blind_actions_trip_a_check_and_safe_ones_none(
    tasks: list[Task], run_folder: RunFolder
) -> None:
    chosen = [t for t in tasks if t.environment == "web"]
    if not chosen:
        pytest.fail("no web tasks are loaded")
    if shutil.which("chromium") is None:
        message = "chromium is missing: install the Debian package `chromium`"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from personae.environments import hold_browser  # type: ignore[attr-defined,unused-ignore]

    def look_around(task: Task) -> list[str]:
        return [*WEB_READ_ONLY, f"goto {(task.setup.app or {}).get('start', '/notes')}"]

    async with hold_browser():
        problems = await _problems(run_folder, chosen, look_around, at_once=8)
    assert not problems, "\n".join(problems)
