"""The live progress display of a run: episodes done/failed, turns/s and generated tok/s, and a
note when the backend stops answering (`CallWatch` keeps the model calls in flight)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """Rich progress bar with episodes done/failed, turns/s and generated tok/s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        #: Whether a run has said how many episodes it will run (`expect`).
        self.expected = False
        self.done = 0
        self.turns = 0
        self.tokens = 0
        self.failed = 0
        self.start = time.perf_counter()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} episodes"),
            TextColumn("{task.fields[failed]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("[yellow]{task.fields[note]}"),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._bar.add_task("running", total=total, failed="", rate="", note="")
        self.enabled = enabled
        self._noted = False
        #: The run's model calls in flight (episodes report to it).
        self.watch = CallWatch()

    def __enter__(self) -> RunProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)

    def _refresh(self, advance: int = 0) -> None:
        dt = max(time.perf_counter() - self.start, 1e-9)
        self._bar.update(
            self._task,
            advance=advance,
            failed=f"[red]{self.failed} failed" if self.failed else "",
            rate=f"{self.turns / dt:.1f} turns/s {self.tokens / dt:.0f} tok/s",
        )

    def turn(self, tokens_delta: int) -> None:
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
        """Show `text` beside the bar ("" clears it); without a bar, print it once on stderr."""
        if not self.enabled:
            if text and not self._noted:  # once, not every time the note is refreshed
                Console(stderr=True).print(f"note: {text}", markup=False, highlight=False)
            self._noted = bool(text)
            return
        self._bar.update(self._task, note=text)


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
