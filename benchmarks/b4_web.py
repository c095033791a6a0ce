"""B4 web: what the web environment costs — chromium's start, an episode's reset, a step, close.

Side by side in one run: the first reset on a loop (it starts Playwright and chromium), a reset
while the loop's chromium already runs (a fresh context, the apps' server and database, the
start page), one step (a click that loads a page; a fill that does not; a goto), close, and
eight episodes at once on the shared browser against eight that each start a browser of their
own (what one browser per episode would cost).

    .venv/bin/python benchmarks/b4_web.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import report

from personae.environments import (
    Action,
    RunFolder,
    WebEnvironment,
    hold_browser,
    open_environment,
)
from personae.environments._rundir import remove_tree
from personae.environments._task import task_from_dict

TASK = task_from_dict(
    {
        "id": "bench",
        "pattern": "contextual",
        "instruction": "x",
        "environment": "web",
        "judge_note": "x",
        "setup": {
            "app": {
                "notes": [{"title": f"note {i}", "body": "text " * 40} for i in range(20)],
                "posts": [{"author": "bo", "body": "hello"}],
            }
        },
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


def _ref(text: str, control: str) -> str:
    line = next(line for line in text.splitlines() if control in line)
    return "e" + line.split("[e", 1)[1].split("]", 1)[0]


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def _cold(run: RunFolder) -> tuple[float, float]:
    """Reset and close with no browser running on this loop (both start and end chromium)."""
    async with open_environment("web", run) as env:
        reset = await _timed(lambda: env.reset(TASK))
        close = await _timed(env.close)
    return reset, close


async def _warm(run: RunFolder, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("reset", "click", "fill", "goto", "close")}
    for _ in range(repeats):
        async with open_environment("web", run) as env:
            assert isinstance(env, WebEnvironment)
            t0 = time.perf_counter()
            first = await env.reset(TASK)
            out["reset"].append(time.perf_counter() - t0)
            for _ in range(5):
                click = await env.step(Action("click", (_ref(first.text, 'link "New note"'),)))
                title = _ref(click.observation.text, 'textbox "Title"')
                fill = await env.step(Action("fill", (title, "a title")))
                goto = await env.step(Action("goto", ("/notes",)))
                assert not (click.notes or fill.notes or goto.notes)
                out["click"].append(click.latency_s)
                out["fill"].append(fill.latency_s)
                out["goto"].append(goto.latency_s)
            out["close"].append(await _timed(env.close))
    return out


async def _episode(run: RunFolder) -> None:
    async with open_environment("web", run) as env:
        first = await env.reset(TASK)
        await env.step(Action("click", (_ref(first.text, 'link "note 3"'),)))


def _eight_own_browsers(run: RunFolder, n: int) -> float:
    """`n` episodes at once, each on a loop (so a browser) of its own, in threads."""

    async def gather() -> None:
        await asyncio.gather(*(asyncio.to_thread(asyncio.run, _episode(run)) for _ in range(n)))

    t0 = time.perf_counter()
    asyncio.run(gather())
    return time.perf_counter() - t0


async def main_async(run: RunFolder, repeats: int) -> dict[str, Any]:
    cold = [await _cold(run) for _ in range(3)]
    async with hold_browser():
        warm = await _warm(run, repeats)
        shared = [await _timed(lambda: asyncio.gather(*(_episode(run) for _ in range(8))))
                  for _ in range(3)]  # fmt: skip
    return {"cold": cold, "warm": warm, "shared": shared}


def main(repeats: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="personae-bench-runs-"))
    base.chmod(0o711)
    with RunFolder(base) as run:
        got = asyncio.run(main_async(run, repeats))
        own = [_eight_own_browsers(run, 8) for _ in range(2)]
    remove_tree(base)
    warm = got["warm"]
    rows = [
        _row("first reset on a loop (starts chromium)", [r for r, _ in got["cold"]]),
        _row("close of the last episode (ends chromium)", [c for _, c in got["cold"]]),
        _row("reset, chromium running (context + apps + start page)", warm["reset"]),
        _row("step: click a link (loads a page)", warm["click"]),
        _row("step: fill a text box (no page load)", warm["fill"]),
        _row("step: goto a path", warm["goto"]),
        _row("close, chromium kept for others", warm["close"]),
        _row("8 episodes at once, one shared chromium", got["shared"]),
        _row("8 episodes at once, a chromium each", own),
    ]
    report(
        "b4_web",
        "B4 web environment: reset, step, close, concurrency",
        ["what", "n", "median_ms", "p90_ms", "min_ms"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    main(parser.parse_args().repeats)
