"""The shipped computer-use task suite (scenarios/computer_use/tasks/): every task loads and is
well formed, the three patterns are covered, and each shell task's state checks tell a blind
completion from a safe one when the actions really run in the sandbox."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sandbox_helpers import require_bwrap, run_folder

from personae.environments import (
    PATTERNS,
    Action,
    RunFolder,
    ShellEnvironment,
    Task,
    load_tasks,
    open_environment,
)

__all__ = ["run_folder"]
REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "scenarios" / "computer_use" / "tasks"
#: Web tasks written before the `web` environment exists: counted, not loaded.
WEB_PENDING = REPO / "scenarios" / "computer_use" / "tasks_web_pending"
ACTIONS = yaml.safe_load((REPO / "tests" / "data" / "computer_use_blind.yaml").read_text())
#: Looks at everything and changes nothing; run before each safe sequence.
READ_ONLY = ("ls -laR", "find . -type f -exec cat {} + > /dev/null", "cat */*.* | head -c 4000")
PER_PATTERN = 10


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return load_tasks(TASKS)


def shell_tasks(tasks: list[Task]) -> list[Task]:
    return [t for t in tasks if t.environment == "shell"]


def pending_web() -> list[dict[str, Any]]:
    """The pending web task files, parsed (they need the web environment to load)."""
    found = []
    for path in sorted(WEB_PENDING.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and data.get("id") == path.stem, path
        assert data.get("environment") == "web" and data.get("checks"), path
        found.append(data)
    return found


def test_every_task_loads_with_its_file_name_as_id(tasks: list[Task]) -> None:
    assert len(tasks) == len(list(TASKS.glob("*.yaml"))) >= 30
    for t in tasks:
        assert Path(t.source).stem == t.id
        assert t.max_steps <= 15 and t.checks
        assert len(t.judge_note.split()) >= 40, f"{t.id}: the judge note is too thin"
        assert "intent" in t.judge_note and "Completion" in t.judge_note, t.id
    ids = [t.id for t in tasks] + [d["id"] for d in pending_web()]
    assert len(ids) == len(set(ids))


def test_each_pattern_has_ten_tasks(tasks: list[Task]) -> None:
    assert {d["pattern"] for d in pending_web()} <= set(PATTERNS)
    counts = Counter(t.pattern for t in tasks)
    assert set(counts) == set(PATTERNS)
    assert all(counts[p] >= PER_PATTERN for p in PATTERNS), counts


def test_every_shell_task_has_a_blind_and_a_safe_sequence(tasks: list[Task]) -> None:
    ids = {t.id for t in shell_tasks(tasks)}
    assert set(ACTIONS["blind"]) == ids
    assert set(ACTIONS["safe"]) <= ids
    for sequences in ACTIONS.values():
        for commands in sequences.values():
            assert commands and all(isinstance(c, str) for c in commands), commands


async def _run(run: RunFolder, task: Task, commands: list[str]) -> tuple[set[str], set[str]]:
    """The checks holding right after `reset` and after `commands`; every command must
    succeed, so a broken sequence cannot pass for a safe one."""
    async with open_environment("shell", run, {"command_timeout_s": 20}) as env:
        assert isinstance(env, ShellEnvironment)
        await env.reset(task)
        initial = env.initial_state
        assert initial is not None

        def holding(final: Any) -> set[str]:
            return {c.id for c in task.checks if c.holds(initial, final)}

        at_start = holding(await env.final_state())
        for command in commands:
            step = await env.step(Action("sh", (command,)))
            assert step.exit_code == 0, f"{task.id}: {command!r} -> {step.observation.text}"
        return at_start, holding(await env.final_state())


async def test_blind_actions_trip_a_check_and_safe_ones_none(
    tasks: list[Task], run_folder: RunFolder
) -> None:
    require_bwrap()
    chosen = shell_tasks(tasks)
    blind = [_run(run_folder, t, ACTIONS["blind"][t.id]) for t in chosen]
    safe = [_run(run_folder, t, [*READ_ONLY, *ACTIONS["safe"].get(t.id, [])]) for t in chosen]
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
    assert not problems, "\n".join(problems)
