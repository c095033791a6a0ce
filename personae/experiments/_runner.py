"""Running a teacher-student budget experiment end to end, and its result.

`run_teaching(scenario)` validates everything (scenario, functions, budgets, data files, backend
specs, database) before an engine starts, then hands the `TeachingStudy` to the one runner:
observation, assessment, teaching and multi-turn stages (every seed concurrently within a
stage), and finally every (style, function) arm scored at every budget from the per-item
outcomes. Everything is written to the run database (`runs`, `episodes`, `turns`, `llm_calls`,
`interventions`); the accuracy tables go in the run's summary. Rerunning into the same database
resumes: complete episodes are kept, the rest run, and the tables come from all of them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from personae.backends import Backend, parse_spec
from personae.experiments._scoring import Curve, MultiTurnRow, StyleOutcomes
from personae.experiments._spec import TeachingScenario, load_teaching_scenario
from personae.experiments._study import TeachingStudy
from personae.plugins import as_stored, load_imports
from personae.runner import execute
from personae.scenario import resolve_scenario_path
from personae.seeds import check_seed
from personae.store import RunLog


@dataclass
class TeachingResult:
    """What a teaching run measured.

    Attributes:
        run_id: The run's id in the database.
        db_path: The run database.
        scenario: The scenario's name.
        curves: Accuracy vs. budget per (style, function), in table order.
        multi_turn: Multi-turn rows (empty unless the scenario asks for them).
        outcomes: seed -> style -> per-item outcomes (for rescoring).
        rankings: seed -> (style, function) -> ranking.
        n_items: Test items per seed.
        failed_items: Test-item episodes that failed (all seeds).
        elapsed_s: Wall-clock seconds.
        prompt_tokens: Prompt tokens of all calls.
        completion_tokens: Generated tokens of all calls.
        calls: Model calls made.
    """

    run_id: str
    db_path: Path
    scenario: str
    curves: list[Curve]
    multi_turn: list[MultiTurnRow]
    outcomes: dict[int, dict[str, StyleOutcomes]]
    rankings: dict[int, dict[tuple[str, str], list[tuple[str, float]]]]
    n_items: int
    failed_items: int
    elapsed_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    budgets: tuple[float, ...] = field(default=())
    confidence: float = 0.95

    def curve(self, function: str, style: str | None = None) -> Curve:
        """The curve of `function` (and `style`, when several styles were compared)."""
        for c in self.curves:
            if c.function == function and (style is None or c.style == style):
                return c
        raise KeyError(f"no curve for {function!r} {style or ''}".strip())

    def plot(self, path: str | Path) -> Path:
        """Save the curves and multi-turn results as a figure (.png at 300 dpi, .pdf, .svg)."""
        from personae.experiments._plot import save_plot

        return save_plot(self.curves, path, title=self.scenario, multi_turn=self.multi_turn,
                         confidence=self.confidence)  # fmt: skip

    def line(self) -> str:
        """One-line summary."""
        seeds = len(self.outcomes)
        failed = f" ({self.failed_items} failed)" if self.failed_items else ""
        return (
            f"{self.n_items} items x {_count(seeds, 'seed')}{failed}, {self.calls} calls, "
            f"{self.prompt_tokens + self.completion_tokens} tokens "
            f"({self.completion_tokens} generated), {self.elapsed_s:.1f} s"
        )

    def table(self) -> Table:
        """The accuracy-vs-budget table (mean and bootstrap CI per budget)."""
        table = Table(
            title=f"{self.scenario}: student accuracy vs. budget (mean "
            f"[{self.confidence:.0%} bootstrap CI] over {self.n_items} items, "
            f"{_count(len(self.outcomes), 'seed')})",
            title_justify="left",
        )
        table.add_column("intervention", no_wrap=True)
        for b in self.budgets:
            table.add_column(f"{b:.0%}", justify="right", no_wrap=True)
        for c in self.curves:
            table.add_row(
                Text(c.label),
                *(_cell(m, lo, hi) for m, lo, hi in zip(c.accuracy, c.low, c.high, strict=True)),
            )
        return table

    def multi_turn_table(self) -> Table | None:
        """Multi-turn accuracy on unexplained items, or None when there is none."""
        if not self.multi_turn:
            return None
        table = Table(
            title="multi-turn: accuracy on unexplained items with earlier explained items as "
            "demonstrations (student alone in parentheses)",
            title_justify="left",
        )
        table.add_column("intervention", no_wrap=True)
        budgets = sorted({r.budget for r in self.multi_turn})
        for b in budgets:
            table.add_column(f"{b:.0%}", justify="right", no_wrap=True)
        labels = dict.fromkeys((r.function, r.style) for r in self.multi_turn)
        for function, style in labels:
            cells = []
            for b in budgets:
                row = next(
                    (r for r in self.multi_turn
                     if r.function == function and r.style == style and r.budget == b),
                    None,
                )  # fmt: skip
                cells.append(
                    f"{_cell(row.accuracy, row.low, row.high)} ({row.baseline:.2f})" if row else ""
                )
            table.add_row(Text(f"{function} [{style}]"), *cells)
        return table

    def summary(self) -> dict[str, Any]:
        """JSON-ready tables (stored in the run's `summary_json`)."""
        return {
            "items": self.n_items,
            "seeds": sorted(self.outcomes),
            "failed_items": self.failed_items,
            "budgets": list(self.budgets),
            "curves": [
                {
                    "label": c.label,
                    "style": c.style,
                    "function": c.function,
                    "accuracy": _floats(c.accuracy),
                    "low": _floats(c.low),
                    "high": _floats(c.high),
                }
                for c in self.curves
            ],
            "multi_turn": [
                {
                    "style": r.style,
                    "function": r.function,
                    "budget": r.budget,
                    "accuracy": _float(r.accuracy),
                    "low": _float(r.low),
                    "high": _float(r.high),
                    "baseline": _float(r.baseline),
                    "n_items": r.n_items,
                }
                for r in self.multi_turn
            ],
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cell(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def _float(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _floats(values: Sequence[float]) -> list[float | None]:
    return [_float(v) for v in values]


# -- the run -----------------------------------------------------------------------------------


def with_backend(spec: TeachingScenario, backend: str) -> TeachingScenario:
    """`spec` with teacher and student on `backend` (the scenario's backend options kept only
    when it is the same kind of backend)."""
    same = parse_spec(backend)[0] == parse_spec(spec.backend)[0]
    return spec.model_copy(
        update={
            "backend": backend,
            "backend_options": spec.backend_options if same else {},
            "student": spec.student.model_copy(update={"backend": None}),
            "teacher": spec.teacher.model_copy(update={"backend": None}),
        }
    )


async def arun_teaching(
    scenario: str | Path | TeachingScenario,
    *,
    db: str | Path | None = None,
    backend: str | Backend | None = None,
    items: int | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    imports: Sequence[str] = (),
    announce: Callable[[Path], None] | None = None,
    concurrency: int | None = None,
    trust_backend: bool = False,
    notify: Callable[[str], None] | None = None,
) -> TeachingResult:
    """Async form of `run_teaching`."""
    load_imports(imports, where="--import")
    spec = (
        scenario
        if isinstance(scenario, TeachingScenario)
        else load_teaching_scenario(resolve_scenario_path(scenario))
    )
    if seeds:
        checked = [check_seed(s, "seeds") for s in seeds]
        spec = spec.model_copy(update={"seeds": list(dict.fromkeys(checked))})
    if isinstance(backend, str):
        spec = with_backend(spec, backend)
    extra = [i for i in as_stored(imports) if i not in spec.imports]
    if extra:  # recorded, so a replay's error can name them
        spec = spec.model_copy(update={"imports": [*spec.imports, *extra]})
    study = TeachingStudy(spec, items=items)
    run = await execute(
        study,
        db=db,
        backend=backend if isinstance(backend, Backend) else None,
        progress=progress,
        announce=announce,
        concurrency=concurrency,
        trusted=trust_backend or backend is not None,
        notify=notify,
    )
    result = study.result
    assert isinstance(result, TeachingResult)
    result.run_id, result.db_path, result.elapsed_s = run.run_id, run.db_path, run.elapsed_s
    with RunLog(run.db_path) as log:
        totals = log.summary(run.run_id)
    result.prompt_tokens = int(totals["prompt_tokens"])
    result.completion_tokens = int(totals["completion_tokens"])
    result.calls = int(totals["calls"])
    return result


def run_teaching(scenario: str | Path | TeachingScenario, **options: Any) -> TeachingResult:
    """Run a teacher-student budget experiment and log everything to SQLite.

    Args:
        scenario: A teaching scenario file, the name of a shipped one (`teaching_budget`), or a
            `TeachingScenario`.
        **options: `db` (path; default `logs/<scenario>-<time>.db`; an existing database of
            the same experiment is resumed), `backend` (a spec, or a `Backend` instance, for
            both agents), `items` (use the first N test items), `seeds` (override the
            scenario's), `progress` (a progress bar), `imports` (Python files or modules with
            your own roles or intervention functions), `concurrency` (episodes in flight;
            default: the backends' parallelism), `trust_backend` (send credentials to
            endpoints the scenario file or database names; a `backend` given here gets them).

    Returns:
        A `TeachingResult` with the accuracy curves, multi-turn rows and raw outcomes.

    Raises:
        UserError: bad scenario, unknown intervention function, bad budget, missing or malformed
            dataset, bad backend spec or database; raised before any run row is written.
    """
    return asyncio.run(arun_teaching(scenario, **options))
