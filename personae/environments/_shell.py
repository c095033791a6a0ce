"""The `shell` environment: a persistent bash in a bubblewrap sandbox, one per episode.

The episode's folder holds the workspace (a fresh copy of the task's setup files, mounted at
/home/user, the only host folder the sandbox can write) and the sandbox's own /etc files.
Action: `sh COMMAND`. Each command runs in the same shell (its working directory, variables
and functions persist) under a wall-clock limit; processes are bound by CPU-time, memory,
open-file and file-size limits and the sandbox by a process limit; output is kept up to a
size. The workspace is watched while the sandbox lives: past its size or file-count limit the
sandbox is killed and the episode ends. A shell that exits or hangs is replaced by a new one
(files are kept; the observation says so). `close` kills every process and removes the folder.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, ClassVar

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
from personae.environments._bwrap import HOME, check_bwrap, host_uid, sandbox_argv, write_etc
from personae.environments._checks import Row
from personae.environments._rundir import check_reachable, remove_tree
from personae.environments._sandbox import Limits, Ran, Sandbox, shell_command
from personae.environments._state import State, snapshot_files, usage
from personae.environments._task import Task, materialize
from personae.errors import UserError

#: Seconds between two looks at the workspace's size while the sandbox lives (at least ten
#: times as long as a look takes, so a large workspace costs the host at most a tenth of a core).
WATCH_S = 0.1
#: The longest command accepted, in bytes.
MAX_COMMAND_BYTES = 256 * 1024
#: Timed-out commands report this exit status (as `timeout` does).
TIMEOUT_STATUS = 124


class ShellOptions(EnvironmentOptions):
    """Limits of the shell sandbox (per command, per process, per sandbox)."""

    command_timeout_s: float = Field(30.0, gt=0, le=3600, description="Wall clock per command.")
    cpu_seconds: int = Field(60, ge=1, description="CPU time per process.")
    memory_mb: int = Field(1024, ge=16, description="Address space per process.")
    processes: int = Field(64, ge=8, le=4096, description="Processes in the sandbox at once.")
    open_files: int = Field(256, ge=16, description="Open files per process.")
    file_mb: int = Field(64, ge=1, description="Largest file a process may write.")
    workspace_mb: int = Field(256, ge=1, description="Total size of the workspace's files.")
    workspace_files: int = Field(10_000, ge=10, description="Entries in the workspace.")
    tmp_mb: int = Field(64, ge=1, description="Size of the private /tmp.")
    output_bytes: int = Field(64 * 1024, ge=256, description="Output kept per command.")
    bwrap: str = Field("bwrap", description="The bubblewrap program.")

    def limits(self) -> Limits:
        """The per-process and per-sandbox limits set inside the sandbox."""
        return Limits(
            self.cpu_seconds, self.memory_mb, self.processes, self.open_files, self.file_mb
        )


def _hand_over(root: Path, uid: int) -> None:
    """Give `root` and everything in it to `uid` (links themselves, never their targets)."""
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), uid, uid)


def _listing(state: State, limit: int = 50) -> str:
    paths = sorted(state.files)
    shown = [f"{p}/" if state.files[p].kind == "dir" else p for p in paths[:limit]]
    more = [f"... and {len(paths) - limit} more"] if len(paths) > limit else []
    return "\n".join(shown + more) or "(empty)"


@register_environment("shell")
class ShellEnvironment(Environment):
    """A persistent bash in a bubblewrap sandbox: no network, the workspace its only writable
    folder."""

    options_model: ClassVar[type[EnvironmentOptions]] = ShellOptions
    actions: ClassVar[dict[str, ActionSpec]] = {
        "sh": ActionSpec(("command",), f"run a command in the persistent bash shell ({HOME})"),
    }

    def __init__(self, options: EnvironmentOptions, folder: Path) -> None:
        super().__init__(options, folder)
        assert isinstance(options, ShellOptions)
        self.opts = options
        self.workspace = Path(folder) / "home"
        self.uid = host_uid()
        self.sandbox: Sandbox | None = None
        self.initial_state: State | None = None
        self.commands: list[str] = []
        self.restarts = 0
        self.ended: str | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def check_available(cls, options: EnvironmentOptions) -> None:
        """bubblewrap must be installed and able to start a sandbox here."""
        assert isinstance(options, ShellOptions)
        check_bwrap(options.bwrap)

    @classmethod
    def check_task(cls, task: Task) -> None:
        """The shell serves no app: a task's `setup.app` is an error."""
        if task.setup.app is not None:
            raise UserError(
                "the shell environment serves no app",
                where=f"{task.source}: setup.app",
                fix="remove setup.app, or choose an environment that serves an app",
            )
        rows = [c.id for c in task.checks if isinstance(c, Row)]
        if rows:
            raise UserError(
                f"check {rows[0]!r} reads app rows, and the shell environment serves no app",
                where=task.source,
                fix="check files or commands instead (exists, contains, mode, ran, ...)",
            )

    def _argv(self) -> list[str]:
        bwrap = check_bwrap(self.opts.bwrap)
        command = shell_command(self.opts.limits())
        tmp = self.opts.tmp_mb << 20
        return sandbox_argv(bwrap, self.workspace, self.folder / "etc", tmp, command)

    async def reset(self, task: Task) -> Observation:
        """Copy the task's files into a fresh workspace and start the shell in it."""
        if self._closed or self.sandbox is not None:
            raise RuntimeError("an environment runs one episode: make a new one per episode")
        self.check_task(task)
        check_reachable(self.folder, self.uid)
        self.workspace.mkdir(mode=0o700)
        await asyncio.to_thread(materialize, task, self.workspace)
        write_etc(self.folder / "etc")
        if self.uid is not None:
            await asyncio.to_thread(_hand_over, self.workspace, self.uid)
        self.initial_state = await self.final_state()
        too_big = self._over_limit((dict(self.initial_state.files), self.initial_state.complete))
        if too_big is not None:
            raise UserError(
                f"the task's setup is over the workspace's limits: {too_big}",
                where=task.source,
                fix="make the setup smaller, or raise workspace_mb / workspace_files",
            )
        await self._start()
        self._watch = asyncio.create_task(self._watch_workspace())
        return Observation(
            f"A bash shell in {HOME}, your workspace. It has no network.\n"
            f"Files:\n{_listing(self.initial_state)}"
        )

    async def _start(self) -> None:
        self.sandbox = Sandbox(self._argv(), self.uid, self.opts.output_bytes)
        await self.sandbox.start()

    def _over_limit(self, snapshot: tuple[dict[str, Any], bool]) -> str | None:
        files, complete = snapshot
        if not complete or len(files) > self.opts.workspace_files:
            return f"the workspace holds more than {self.opts.workspace_files} entries"
        used = usage(files)
        if used > self.opts.workspace_mb << 20:
            return f"the workspace holds {used >> 20} MiB, over its {self.opts.workspace_mb} MiB"
        return None

    async def _check_workspace(self) -> str | None:
        try:
            snap = await asyncio.to_thread(
                snapshot_files,
                self.workspace,
                content=False,
                max_entries=self.opts.workspace_files + 1,
            )
        except OSError:
            return None
        reason = self._over_limit(snap)
        if reason is not None and self.ended is None:
            self.ended = reason
            if self.sandbox is not None:
                self.sandbox.kill()
        return reason

    async def _watch_workspace(self) -> None:
        pause = WATCH_S
        while self.ended is None and not self._closed:
            await asyncio.sleep(pause)
            t0 = time.perf_counter()
            await self._check_workspace()
            pause = max(WATCH_S, 10 * (time.perf_counter() - t0))

    def _ended_result(self, output: str = "", notes: tuple[str, ...] = ()) -> StepResult:
        note = f"the episode has ended: {self.ended}"
        text = f"{output}\n[{note}]" if output else f"[{note}]"
        return StepResult(Observation(text), done=True, output=output, notes=(*notes, note))

    async def step(self, action: Action) -> StepResult:
        """Run `sh COMMAND` in the shell; anything else is an observation saying so."""
        if self._closed or self.sandbox is None:
            raise RuntimeError("step() needs a reset() environment that is not closed")
        if self.ended is not None:
            return self._ended_result()
        if action.name != "sh" or len(action.args) != 1:
            text = f"[unknown action {str(action)!r}: this environment accepts `sh COMMAND`]"
            return StepResult(Observation(text), notes=("invalid action",))
        command = action.args[0]
        if "\0" in command or len(command.encode()) > MAX_COMMAND_BYTES:
            text = "[the command holds a NUL byte or is over 256 KiB: not run]"
            return StepResult(Observation(text), notes=("invalid command",))
        self.commands.append(command)
        t0 = time.perf_counter()
        ran = await self.sandbox.run(command, self.opts.command_timeout_s)
        notes = await self._after(ran)
        latency = time.perf_counter() - t0
        output = ran.output.decode("utf-8", "replace")
        if ran.timed_out:
            exit_code: int | None = TIMEOUT_STATUS
        elif ran.shell_lost:
            exit_code = ran.shell_status
        else:
            exit_code = ran.exit_code
        if self.ended is not None:
            return self._ended_result(output, notes)
        truncated = ran.total_bytes > len(ran.output)
        lines = [output.rstrip("\n")] if output else []
        if truncated:
            lines.append(f"[output cut: first {len(ran.output)} of {ran.total_bytes} bytes]")
        lines += [f"[{n}]" for n in notes]
        lines.append(f"[exit code {exit_code}]")
        return StepResult(
            Observation("\n".join(lines), truncated=truncated),
            output=output,
            exit_code=exit_code,
            timed_out=ran.timed_out,
            latency_s=latency,
            notes=notes,
            info={"output_bytes": ran.total_bytes, "restarts": self.restarts},
        )

    async def _after(self, ran: Ran) -> tuple[str, ...]:
        """Notes on what happened besides the command; a lost shell is replaced."""
        notes: list[str] = []
        if ran.timed_out:
            notes.append(f"stopped: the command ran past its {self.opts.command_timeout_s:g} s")
        if await self._check_workspace() is not None:
            return (*notes,)
        if ran.shell_lost:
            why = "stopped answering" if ran.timed_out else f"exited ({ran.shell_status})"
            notes.append(
                f"the shell {why}; a new one was started: variables and the working directory "
                "are reset, files are kept"
            )
            assert self.sandbox is not None
            await self.sandbox.close()
            self.restarts += 1
            await self._start()
        return tuple(notes)

    async def final_state(self) -> State:
        """The workspace's files (hashes and small texts) and every command run."""
        files, complete = await asyncio.to_thread(
            snapshot_files, self.workspace, max_entries=self.opts.workspace_files + 1
        )
        return State(files=files, commands=tuple(self.commands), complete=complete)

    async def close(self) -> None:
        """Kill the sandbox and everything in it, then remove the episode's folder."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._watch is not None:
                self._watch.cancel()
            if self.sandbox is not None:
                self.sandbox.kill()  # synchronous: done even if this task is cancelled again
                await self.sandbox.wait(timeout=2.0)
        finally:
            remove_tree(self.folder)
