"""The progress of a run, for every kind of run (scenarios, teaching experiments, forks, judge
passes): episodes done/failed, turns/s, generated tok/s and the time left, a note when the
backend stops answering (`CallWatch` keeps the model calls in flight, `watch_backend` reads it),
and warnings shown once.

On a terminal this is a rich progress bar. When stderr is not a terminal (a cluster job's log,
`2> run.log`) it is one plain line every `PERSONAE_PROGRESS_EVERY` seconds (default 30) and a
final line, e.g. `progress: 120/400 episodes (30%), 2,310 turns, 41.2 turns/s, ETA 6m10s`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from personae.errors import UserError

#: Environment variable: seconds between two plain progress lines (stderr not a terminal).
EVERY_ENV = "PERSONAE_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0
#: Seconds without any reply (calls in flight) after which the progress line says the backend
#: is not answering.
STALL_S = 20.0


def progress_every() -> float:
    """Seconds between two plain progress lines: `$PERSONAE_PROGRESS_EVERY`, default 30.

    Raises:
        UserError: the variable is set to something other than a positive number.
    """
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not 0 < every < float("inf"):
        raise UserError(
            f"{EVERY_ENV} must be a positive number of seconds, got {raw!r}",
            where=f"${EVERY_ENV}",
            fix=f"e.g. {EVERY_ENV}=30, or unset it",
        )
    return every


def duration(seconds: float) -> str:
    """A duration as `45s`, `6m10s` or `2h05m`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RunProgress:
    """Progress of `total` episodes: a rich bar on a terminal, plain lines otherwise.

    Args:
        total: Episodes to run.
        enabled: Show progress at all (False: only notes and warnings, once each).
        steps: What `turn()` counts, as the line names it (`turns`; a judge pass: `judgments`).
        every: Seconds between plain lines (default: `progress_every()`).
        console: Where to print (default: stderr).
    """

    def __init__(
        self,
        total: int,
        enabled: bool,
        *,
        steps: str = "turns",
        every: float | None = None,
        console: Console | None = None,
    ) -> None:
        self.total = total
        #: Whether a run has said how many episodes it will run (`expect`).
        self.expected = False
        self.turns = 0
        self.tokens = 0
        self.done = 0
        self.failed = 0
        self.steps = steps
        self.start = time.perf_counter()
        self.console = console or Console(stderr=True, highlight=False)
        self.enabled = enabled
        #: Plain lines instead of a bar: progress is wanted but stderr is not a terminal.
        self.plain = enabled and not self.console.is_terminal
        self.every = every if every is not None else (progress_every() if self.plain else 0.0)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} episodes"),
            TextColumn("{task.fields[failed]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[yellow]{task.fields[note]}"),
            console=self.console,
            disable=not enabled or self.plain,
            transient=False,
        )
        self._task = self._bar.add_task("running", total=total, failed="", rate="", note="")
        self._noted = False
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        #: The run's model calls in flight (episodes report to it).
        self.watch = CallWatch()

    def __enter__(self) -> RunProgress:
        self.start = time.perf_counter()
        self._bar.__enter__()
        if self.plain:
            # a thread, not a task: a line is due even while the event loop is busy or blocked
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
            self._print(self.line(final=True, stopped=exc[0] is not None))

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._print(self.line())

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def line(self, *, final: bool = False, stopped: bool = False) -> str:
        """The plain progress line, e.g. `progress: 120/400 episodes (30%), 2,310 turns,
        41.2 turns/s, ETA 6m10s` (`final`: the closing line, with the time taken)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        share = f"{self.done / self.total:.0%}" if self.total else "100%"
        failed = f", {self.failed} failed" if self.failed else ""
        head = f"{self.done}/{self.total} episodes ({share}{failed})"
        rate = f"{self.turns:,} {self.steps}, {self.turns / elapsed:.1f} {self.steps}/s"
        if final:
            how = "stopped after" if stopped else "finished in"
            return f"progress: {head}, {rate}, {how} {duration(elapsed)}"
        eta = (
            f"ETA {duration(elapsed / self.done * (self.total - self.done))}"
            if self.done
            else "ETA unknown"
        )
        note = self._bar.tasks[0].fields.get("note") if self._bar.tasks else ""
        return f"progress: {head}, {rate}, {eta}" + (f" ({note})" if note else "")

    def _refresh(self, advance: int = 0) -> None:
        dt = max(time.perf_counter() - self.start, 1e-9)
        self._bar.update(
            self._task,
            advance=advance,
            failed=f"[red]{self.failed} failed" if self.failed else "",
            rate=f"{self.turns / dt:.1f} {self.steps}/s {self.tokens / dt:.0f} tok/s",
        )

    def turn(self, tokens_delta: int) -> None:
        """One more step (a turn, a verdict) that generated `tokens_delta` tokens."""
        self.turns += 1
        self.tokens += tokens_delta
        self._refresh()

    def episode_done(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        self._refresh(advance=1)

    def expect(self, total: int) -> None:
        """`total` more episodes are to run."""
        self.total += total
        self.expected = True
        self._bar.update(self._task, total=self.total)

    def show(self, *, done: int, failed: int, turns: int, tokens: int) -> None:
        """Set the counts (e.g. summed over the workers of a run spread over processes)."""
        advance = done - self.done
        self.done, self.failed, self.turns, self.tokens = done, failed, turns, tokens
        self._refresh(advance=advance)

    def note(self, text: str) -> None:
        """Show `text` beside the bar ("" clears it); without a bar, print it once on stderr
        (plain progress lines also carry it while it lasts)."""
        self._bar.update(self._task, note=text)
        if not self.enabled or self.plain:  # no bar to show it: a line, once per note
            if text and not self._noted:  # not every time the note is refreshed
                self._print(f"note: {text}")
            self._noted = bool(text)

    def warn(self, key: str, text: str) -> None:
        """Print `warning: text` on stderr the first time `key` warns (e.g. once per agent),
        above the bar if there is one, whether or not progress is shown."""
        if key in self._warned:
            return
        self._warned.add(key)
        if self.enabled and not self.plain:
            self._bar.console.print(f"warning: {text}", markup=False, highlight=False)
        else:
            self._print(f"warning: {text}")


class CallWatch:
    """The model calls in flight and when the backend last answered, to tell a backend that has
    stopped answering from one that is merely busy (calls queue, but replies keep coming)."""

    def __init__(self) -> None:
        self._since: dict[int, float] = {}
        self._next = 0
        self._last_reply = time.monotonic()

    def begin(self) -> int:
        """A call starts; returns its token for `end`."""
        self._next += 1
        if not self._since:  # nothing was in flight: the silence starts now
            self._last_reply = time.monotonic()
        self._since[self._next] = time.monotonic()
        return self._next

    def end(self, token: int) -> None:
        """The call with `token` is over (answered or failed)."""
        self._since.pop(token, None)
        self._last_reply = time.monotonic()

    def stalled(self) -> tuple[float, int]:
        """(seconds without any reply while calls were in flight, calls in flight)."""
        if not self._since:
            return 0.0, 0
        return time.monotonic() - self._last_reply, len(self._since)


async def watch_backend(bar: RunProgress, backend: str) -> None:
    """Keep a note on `bar` while no call has been answered for `STALL_S` (run it as a task
    for as long as the run lasts; cancel it at the end)."""
    shown = False
    while True:
        await asyncio.sleep(min(2.0, STALL_S / 2))
        waited, calls = bar.watch.stalled()
        if waited >= STALL_S:
            bar.note(
                f"{backend} is not answering: no reply for {waited:.0f} s, {calls} calls waiting"
            )
            shown = True
        elif shown:
            bar.note("")
            shown = False
