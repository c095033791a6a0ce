"""B4 sandbox: what the shell environment's bubblewrap sandbox costs.

Side by side in one run: a bare `bwrap` running `/bin/true` (the floor: namespaces and mounts
only), a plain host `bash -c true` (no sandbox at all), the shell environment's full start
(sandbox, limits, first answer of the persistent shell), one command round trip in the running
shell (a builtin, and a command that starts a process), and eight sandboxes started at once.

    .venv/bin/python benchmarks/b4_sandbox.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import report

from personae.environments import Action, RunFolder, ShellEnvironment, open_environment
from personae.environments._bwrap import check_bwrap, host_uid, sandbox_argv, write_etc
from personae.environments._rundir import remove_tree
from personae.environments._task import task_from_dict

TASK = task_from_dict(
    {
        "id": "bench",
        "pattern": "contextual",
        "instruction": "x",
        "environment": "shell",
        "judge_note": "x",
        "setup": {"files": [{"path": "a.txt", "content": "a\n"}]},
    }
)


def _row(what: str, seconds: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "what": what,
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * (len(ms) - 1))],
        "min_ms": ms[0],
    }


def _bare(repeats: int) -> tuple[list[float], list[float]]:
    base = Path(tempfile.mkdtemp(prefix="personae-bench-"))
    base.chmod(0o711)
    (base / "home").mkdir()
    write_etc(base / "etc")
    uid = host_uid()
    if uid is not None:
        import os

        os.chown(base / "home", uid, uid)
    argv = sandbox_argv(check_bwrap(), base / "home", base / "etc", 1 << 20, ["/bin/true"])
    ids = {"user": uid, "group": uid, "extra_groups": [] if uid is not None else None}
    bare, host = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, **ids)  # type: ignore[call-overload]
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", "true"], check=True, **ids)  # type: ignore[call-overload]
        host.append(time.perf_counter() - t0)
    remove_tree(base)
    return bare, host


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def _shell(run: RunFolder, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"start": [], "builtin": [], "process": [], "close": []}
    for _ in range(repeats):
        async with open_environment("shell", run) as env:
            assert isinstance(env, ShellEnvironment)
            await env.reset(TASK)
            assert env.sandbox is not None
            out["start"].append(env.sandbox.start_s)
            for _ in range(10):
                out["builtin"].append((await env.step(Action("sh", ("true",)))).latency_s)
                out["process"].append((await env.step(Action("sh", ("/bin/true",)))).latency_s)
            out["close"].append(await _timed(env.close))
    return out


async def _concurrent(run: RunFolder, n: int) -> float:
    async def one() -> None:
        async with open_environment("shell", run) as env:
            await env.reset(TASK)
            await env.step(Action("sh", ("cat a.txt",)))

    return await _timed(lambda: asyncio.gather(*(one() for _ in range(n))))


async def main(repeats: int) -> None:
    bare, host = _bare(repeats)
    base = Path(tempfile.mkdtemp(prefix="personae-bench-runs-"))
    base.chmod(0o711)
    with RunFolder(base) as run:
        shell = await _shell(run, repeats)
        together = [await _concurrent(run, 8) for _ in range(5)]
    remove_tree(base)
    rows = [
        _row("host bash -c true (no sandbox)", host),
        _row("bare bwrap /bin/true", bare),
        _row("shell start (sandbox + limits + first answer)", shell["start"]),
        _row("round trip: builtin `true`", shell["builtin"]),
        _row("round trip: `/bin/true` (a process)", shell["process"]),
        _row("close (kill + reap + remove)", shell["close"]),
        _row("8 episodes at once: reset + 1 command + close", together),
    ]
    report(
        "b4_sandbox",
        "B4 shell sandbox: start and round trip",
        ["what", "n", "median_ms", "p90_ms", "min_ms"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    asyncio.run(main(parser.parse_args().repeats))
