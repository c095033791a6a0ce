"""One persistent bash inside one bubblewrap sandbox, driven over a pipe.

The shell runs a small loop: it reads a NUL-terminated id and a NUL-terminated command from its
stdin, `eval`s the command with stdin from /dev/null (so a command cannot eat the next one),
and prints an end marker carrying the id and the exit status. Output (stdout and stderr, merged
as a terminal shows them) is read until that marker, keeping at most `output_bytes`; a marker
with another id (printed by a command that forged one) is dropped. Resource limits are set by
`ulimit` inside, before the loop starts, so they bind the shell and everything it starts, and
nothing inside can raise them again.

Past its wall-clock limit a command is stopped by killing every process in the sandbox but the
shell and the sandbox's init; a shell that still does not answer (a loop in bash itself, a
command that replaced or killed the shell) is killed and the caller starts a new one.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from dataclasses import dataclass

from personae.environments import _procs
from personae.errors import UserError

_MARKER = re.compile(rb"\x1e([0-9a-f]{16}) (\d{1,3})\x1e")
#: Bytes kept unscanned at the end of the buffer: a marker may arrive in two reads.
_TAIL = 32
#: Seconds a timed-out command's shell gets to answer once the command's processes are killed.
_GRACE_S = 1.0
_READ = 1 << 16
#: The environment bwrap itself runs with (the shell's own is set by `--setenv`).
BARE_ENV = {"PATH": "/usr/bin:/bin"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one sandbox: CPU time, memory, open files and file size for each
    process, and the number of processes for the sandbox — the kernel (5.14 and later) counts
    a user's processes per user namespace, and each sandbox has its own."""

    cpu_seconds: int
    memory_mb: int
    processes: int
    open_files: int
    file_mb: int

    def ulimit(self) -> str:
        """The shell line that sets them (hard and soft), or exits with status 97."""
        flags = (
            ("-c", 0),
            ("-t", self.cpu_seconds),
            ("-v", self.memory_mb * 1024),
            ("-u", self.processes),
            ("-n", self.open_files),
            ("-f", self.file_mb * 1024),
        )
        return " && ".join(f"ulimit {flag} {value}" for flag, value in flags) + " || exit 97"


def shell_command(limits: Limits) -> list[str]:
    """The command the sandbox runs: bash with its limits and its command loop."""
    loop = (
        f"{limits.ulimit()}\n"
        "exec 2>&1\n"
        "while IFS= read -r -d '' __personae_id && IFS= read -r -d '' __personae_cmd; do\n"
        '  eval "$__personae_cmd" </dev/null\n'
        '  builtin printf \'\\036%s %d\\036\' "$__personae_id" "$?"\n'
        "done\n"
    )
    return ["/bin/bash", "--noprofile", "--norc", "-c", loop]


@dataclass(frozen=True, slots=True)
class Ran:
    """What one command did.

    Attributes:
        output: Its output, at most the shell's `output_bytes`.
        total_bytes: How many bytes it printed in all.
        exit_code: Its exit status (None when the shell never reported one).
        timed_out: True when it ran past its limit and its processes were killed.
        shell_lost: True when the shell itself ended or stopped answering; the caller must
            start a new one.
        shell_status: The sandbox's exit status when the shell ended.
    """

    output: bytes
    total_bytes: int
    exit_code: int | None
    timed_out: bool = False
    shell_lost: bool = False
    shell_status: int | None = None


class _Collector:
    """Output of one command, bounded, up to its end marker."""

    def __init__(self, nonce: str, limit: int, carried: bytes) -> None:
        self.nonce = nonce.encode()
        self.limit = limit
        self.kept = bytearray()
        self.total = 0
        self.pending = carried
        self.exit_code: int | None = None
        self.after = b""

    def _emit(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def feed(self, chunk: bytes) -> bool:
        """Take more output; True once the end marker arrived."""
        data = bytes(self.pending) + chunk
        for m in _MARKER.finditer(data):
            if m.group(1) == self.nonce:
                self._emit(_MARKER.sub(b"", data[: m.start()]))
                self.exit_code = int(m.group(2))
                self.after = data[m.end() :]
                self.pending = b""
                return True
        data = _MARKER.sub(b"", data)
        start = data.rfind(b"\x1e", max(0, len(data) - _TAIL))
        cut = start if start >= 0 else len(data)
        self._emit(data[:cut])
        self.pending = data[cut:]
        return False

    def finish(self) -> None:
        """The stream ended without a marker: what is pending is output too."""
        self._emit(self.pending)
        self.pending = b""


class Sandbox:
    """A running sandbox with its shell.

    Args:
        argv: The bwrap command line (from `sandbox_argv`).
        uid: The host uid to run bwrap as (None: this process's).
        output_bytes: The most output kept per command.
    """

    def __init__(self, argv: list[str], uid: int | None, output_bytes: int) -> None:
        self.argv = argv
        self.uid = uid
        self.output_bytes = output_bytes
        self.proc: asyncio.subprocess.Process | None = None
        self.init_pid: int | None = None
        self.shell_pid: int | None = None
        self.start_s = 0.0
        self._carried = b""

    async def start(self, timeout: float = 15.0) -> None:
        """Start the sandbox and wait until its shell answers.

        Raises:
            UserError: bwrap refused to start (its first error line).
        """
        t0 = time.perf_counter()
        # the sandbox can read its init's environment and command line in /proc: bwrap gets
        # a bare environment (the host's may hold keys and tokens) and its options by pipe
        split = self.argv.index("--")
        args = b"\0".join(a.encode() for a in self.argv[1:split]) + b"\0"
        assert len(args) < 60_000, "bwrap's arguments must fit in a pipe's buffer"
        read_end, write_end = os.pipe()
        try:
            with open(write_end, "wb") as pipe:
                pipe.write(args)
            self.proc = await asyncio.create_subprocess_exec(
                self.argv[0],
                "--args",
                str(read_end),
                *self.argv[split:],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=BARE_ENV,
                pass_fds=(read_end,),
                user=self.uid,
                group=self.uid,
                extra_groups=[] if self.uid is not None else None,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        ran = await self.run(":", timeout)
        if ran.shell_lost or ran.exit_code != 0:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode("utf-8", "replace").strip()
            self.kill()
            line = next((s for s in err.splitlines() if s.strip()), "")
            status = ran.shell_status
            raise UserError(
                "the shell sandbox did not start: " + (line or f"bwrap exited with {status}"),
                fix="check that bubblewrap works here: bwrap --unshare-all --ro-bind / / true",
            )
        self.start_s = time.perf_counter() - t0
        table = _procs.process_table()
        self.init_pid = next((p for p, pp in table.items() if pp == self.proc.pid), None)
        self.shell_pid = next((p for p, pp in table.items() if pp == self.init_pid), None)

    @property
    def pid(self) -> int | None:
        """The host pid of the bwrap process (None before `start`)."""
        return self.proc.pid if self.proc is not None else None

    def processes(self) -> list[int]:
        """Host pids of every process of the sandbox, bwrap's own included."""
        # once reaped, bwrap's pid may belong to someone else: never look it up again
        if self.proc is None or self.proc.returncode is not None:
            return []
        if not _procs.alive(self.proc.pid):
            return []
        return [self.proc.pid, *_procs.descendants(self.proc.pid)]

    def kill_commands(self) -> None:
        """Kill every process in the sandbox except its init and the shell."""
        keep = {self.proc.pid if self.proc else None, self.init_pid, self.shell_pid}
        for _ in range(100):  # a fork bomb forks while it is being killed
            pids = [p for p in self.processes() if p not in keep]
            if not pids:
                return
            _procs.kill(pids)
            _procs.wait_gone(pids, timeout=0.05)

    async def run(self, command: str, timeout: float) -> Ran:
        """Run one command in the shell, for at most `timeout` seconds of wall clock."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        nonce = secrets.token_hex(8)
        collector = _Collector(nonce, self.output_bytes, self._carried)
        self._carried = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            proc.stdin.write(nonce.encode() + b"\0" + command.encode() + b"\0")
            await asyncio.wait_for(proc.stdin.drain(), timeout)
        except (BrokenPipeError, ConnectionResetError):
            return await self._lost(collector, timed_out=False)
        except TimeoutError:  # a shell that no longer reads its commands
            return await self._lost(collector, timed_out=True)
        timed_out = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if timed_out:  # the shell itself does not answer
                    return await self._lost(collector, timed_out=True)
                timed_out = True
                self.kill_commands()
                deadline = loop.time() + _GRACE_S
                continue
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(_READ), remaining)
            except TimeoutError:
                continue
            if not chunk:
                return await self._lost(collector, timed_out=timed_out)
            if collector.feed(chunk):
                self._carried = collector.after
                return Ran(bytes(collector.kept), collector.total, collector.exit_code, timed_out)

    async def _lost(self, collector: _Collector, *, timed_out: bool) -> Ran:
        collector.finish()
        self.kill()
        status = await self.wait(timeout=2.0)
        return Ran(
            bytes(collector.kept),
            collector.total,
            None,
            timed_out=timed_out,
            shell_lost=True,
            shell_status=status,
        )

    def kill(self) -> None:
        """Kill the whole sandbox now (synchronous, so a cancelled task still finishes it):
        its init first — the kernel then kills everything in its PID namespace, and bwrap,
        having reaped it, exits — then whatever is left, bwrap included."""
        pids = self.processes()
        if self.init_pid in pids:
            _procs.kill([self.init_pid])
            _procs.wait_gone([self.init_pid], timeout=2.0, reaped=True)
        _procs.kill(pids)
        left = _procs.wait_gone(pids, timeout=2.0)
        if left:  # not seen to happen; kill again rather than leave anything behind
            _procs.kill(left)
            _procs.wait_gone(left, timeout=2.0)

    async def wait(self, timeout: float) -> int | None:
        """Wait for bwrap to be reaped; its exit status (None if it did not end in time)."""
        if self.proc is None:
            return None
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Kill the sandbox and reap it (idempotent)."""
        if self.proc is None:
            return
        self.kill()
        await self.wait(timeout=2.0)
