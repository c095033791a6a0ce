"""The live progress display of a run: episodes done/failed, turns/s and generated tok/s."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """Rich progress bar with episodes done/failed, turns/s and generated tok/s."""

    def __init__(self, total: int, enabled: bool) -> None:
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
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._bar.add_task("running", total=total, failed="", rate="")

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
        self.failed += failed
        self._refresh(advance=1)
