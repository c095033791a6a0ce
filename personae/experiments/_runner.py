"""Running a teacher-student budget experiment end to end.

`run_teaching(scenario)` validates everything (scenario, functions, budgets, data files, backend
specs, database) before an engine starts, then for every seed (concurrently): observes the
student on demonstration-pool items, runs every test item through the teaching graph, ranks the
hindsight functions, runs the multi-turn passes, and finally scores every (style, function) arm
at every budget from the per-item outcomes. Everything is written to the run database (`runs`,
`episodes`, `turns`, `llm_calls`, `interventions`); the accuracy tables go in the run's summary.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from personae._version import __version__
from personae.agents import Sampling, Student, Teacher, get_role
from personae.backends import Backend, create_backend, parse_spec
from personae.errors import UserError
from personae.experiments._data import Item
from personae.experiments._records import split_pool, teaching_episode_id
from personae.experiments._scoring import (
    Curve,
    MultiTurnRow,
    StyleOutcomes,
    score_curves,
    score_multi_turn,
)
from personae.experiments._seed_run import RunContext, SeedRun, multi_turn_passes
from personae.experiments._simulated import SimulatedStudentBackend
from personae.experiments._spec import (
    TeachingScenario,
    load_data,
    load_persona,
    load_teaching_scenario,
)
from personae.scenario import resolve_scenario_path
from personae.store import RunLog, TurnLogWriter, check_database
from personae.store._schema import connect, ensure_schema


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


# -- setup -----------------------------------------------------------------------------------


def default_db_path(scenario: TeachingScenario) -> Path:
    """`logs/<scenario>-<UTC timestamp>.db`."""
    return Path("logs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.db"


def _backends(
    scenario: TeachingScenario, override: str | Backend | None
) -> tuple[dict[str, Backend], list[Backend]]:
    if isinstance(override, Backend):
        return {"student": override, "teacher": override}, [override]
    by_spec: dict[str, Backend] = {}
    for_agent: dict[str, Backend] = {}
    default_kind = parse_spec(scenario.backend)[0]
    for name in ("student", "teacher"):
        own = getattr(scenario, name).backend
        spec = override or own or scenario.backend
        if spec not in by_spec:
            # backend_options belong to the scenario's backend: another kind gets none
            same = parse_spec(spec)[0] == default_kind and (override or not own)
            by_spec[spec] = create_backend(spec, scenario.backend_options if same else {})
        for_agent[name] = by_spec[spec]
    return for_agent, list(by_spec.values())


def planned_episodes(
    scenario: TeachingScenario, test: Sequence[Item], pool: Sequence[Item]
) -> list[str]:
    """Every episode id the run will write, in index order."""
    ids: list[str] = []
    for seed in scenario.seeds:
        draw = split_pool(pool, seed, scenario)
        for i, item in enumerate(draw["observe"]):
            ids.append(teaching_episode_id(scenario.name, "observe", seed, i, item=item.id))
        for i, item in enumerate(test):
            ids.append(teaching_episode_id(scenario.name, "item", seed, i, item=item.id))
        for j, (style, function, budget) in enumerate(multi_turn_passes(scenario)):
            extra = {"style": style, "function": function, "budget": budget}
            ids.append(teaching_episode_id(scenario.name, "multi_turn", seed, j, **extra))
    return ids


def _check_db(path: Path, episode_ids: Sequence[str]) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    check_database(path)
    with RunLog(path) as log:
        known = {e["episode_id"] for e in log.episodes()}
    if known & set(episode_ids):
        raise UserError(
            "the database already holds this teaching experiment (same scenario and seeds)",
            where=str(path),
            fix="pass a new --db (teaching runs are not resumed)",
        )


def _prepare_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import sqlite_utils

    conn = connect(path)
    try:
        ensure_schema(sqlite_utils.Database(conn))
    finally:
        conn.close()


# -- the run -----------------------------------------------------------------------------------


async def arun_teaching(
    scenario: str | Path | TeachingScenario,
    *,
    db: str | Path | None = None,
    backend: str | Backend | None = None,
    items: int | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
) -> TeachingResult:
    """Async form of `run_teaching`."""
    spec = (
        scenario
        if isinstance(scenario, TeachingScenario)
        else load_teaching_scenario(resolve_scenario_path(scenario))
    )
    if seeds:
        spec = spec.model_copy(update={"seeds": list(dict.fromkeys(seeds))})
    test, pool = load_data(spec, items=items)
    personas = {name: load_persona(spec, name) for name in ("student", "teacher")}
    for_agent, engines = _backends(spec, backend)
    db_path = Path(db) if db else default_db_path(spec)
    episode_ids = planned_episodes(spec, test, pool)
    _check_db(db_path, episode_ids)

    render = spec.render
    student_cls = get_role(spec.student.role)
    teacher_cls = get_role(spec.teacher.role)
    student = student_cls(
        "student",
        personas["student"],
        sampling=Sampling(temperature=spec.student.temperature, max_tokens=4),
        render_mode=render or for_agent["student"].render_mode,
        label=spec.student.label,
    )
    teacher = teacher_cls(
        "teacher",
        personas["teacher"],
        sampling=spec.teacher.sampling,
        render_mode=render or for_agent["teacher"].render_mode,
        label=spec.teacher.label,
    )
    assert isinstance(student, Student) and isinstance(teacher, Teacher)

    run_id = uuid.uuid4().hex[:12]
    start = time.perf_counter()
    for engine in engines:
        await engine.start()
        if isinstance(engine, SimulatedStudentBackend):
            engine.add_items([*test, *pool])
    try:
        _prepare_db(db_path)
        async with TurnLogWriter(db_path) as writer:
            writer.insert(
                "runs",
                {
                    "run_id": run_id,
                    "scenario": spec.name,
                    "scenario_path": str(spec.base_dir),
                    "spec_json": spec.model_dump_json(),
                    "backend": ",".join(e.backend_id for e in engines),
                    "seed": spec.seeds[0],
                    "status": "running",
                    "created_at": _utc(),
                    "personae_version": __version__,
                },
            )
            bar = Progress(
                TextColumn("[bold]teaching"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} episodes"),
                TimeElapsedColumn(),
                disable=not progress,
            )
            task = bar.add_task("teaching", total=len(episode_ids))
            ctx = RunContext(
                scenario=spec,
                run_id=run_id,
                student=student,
                teacher=teacher,
                backends=for_agent,
                writer=writer,
                episode_index={e: i for i, e in enumerate(episode_ids)},
                on_episode=lambda: bar.advance(task),
            )
            status = "interrupted"
            try:
                with bar:
                    runs = await asyncio.gather(
                        *(_run_seed(ctx, seed, test, pool) for seed in spec.seeds)
                    )
                status = "complete"
            finally:
                elapsed = time.perf_counter() - start
                result = _score(spec, runs, elapsed) if status == "complete" else None
                writer.upsert(
                    "runs",
                    {
                        "run_id": run_id,
                        "status": status,
                        "finished_at": _utc(),
                        "summary_json": json.dumps(result.summary() if result else {}),
                    },
                )
    finally:
        for engine in engines:
            await engine.close()
    assert result is not None
    result.run_id, result.db_path = run_id, db_path
    with RunLog(db_path) as log:
        totals = log.summary(run_id)
    result.prompt_tokens = int(totals["prompt_tokens"])
    result.completion_tokens = int(totals["completion_tokens"])
    result.calls = int(totals["calls"])
    return result


async def _run_seed(
    ctx: RunContext, seed: int, test: Sequence[Item], pool: Sequence[Item]
) -> tuple[SeedRun, list[tuple[np.ndarray, np.ndarray]]]:
    run = SeedRun(ctx, seed, test, split_pool(pool, seed, ctx.scenario))
    await run.observe()
    await run.test()
    passes = await run.multi_turn()
    return run, passes


def _score(
    spec: TeachingScenario,
    runs: Sequence[tuple[SeedRun, list[tuple[np.ndarray, np.ndarray]]]],
    elapsed: float,
) -> TeachingResult:
    outcomes = {run.seed: {s: run.outcomes(s) for s in spec.styles()} for run, _ in runs}
    rankings = {run.seed: dict(run.rankings) for run, _ in runs}
    boot = spec.bootstrap
    curves = score_curves(
        outcomes,
        rankings,
        spec.arms(),
        spec.budgets,
        resamples=boot.resamples,
        confidence=boot.confidence,
    )
    rows = []
    for j, (style, function, budget) in enumerate(multi_turn_passes(spec)):
        rows.append(
            score_multi_turn(
                [passes[j][0] for _, passes in runs],
                [passes[j][1] for _, passes in runs],
                style=style,
                function=function,
                budget=budget,
                resamples=boot.resamples,
                confidence=boot.confidence,
            )
        )
    failed = sum(1 for run, _ in runs for r in run.records if r.error is not None)
    return TeachingResult(
        run_id="",
        db_path=Path(),
        scenario=spec.name,
        curves=curves,
        multi_turn=rows,
        outcomes=outcomes,
        rankings=rankings,
        n_items=len(runs[0][0].records) if runs else 0,
        failed_items=failed,
        elapsed_s=elapsed,
        budgets=tuple(spec.budgets),
        confidence=boot.confidence,
    )


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_teaching(scenario: str | Path | TeachingScenario, **options: Any) -> TeachingResult:
    """Run a teacher-student budget experiment and log everything to SQLite.

    Args:
        scenario: A teaching scenario file, the name of a shipped one (`teaching_budget`), or a
            `TeachingScenario`.
        **options: `db` (path; default `logs/<scenario>-<time>.db`), `backend` (a spec, or a
            `Backend` instance, for both agents; the run starts and closes it), `items` (use the
            first N test items), `seeds` (override the scenario's), `progress` (a progress bar).

    Returns:
        A `TeachingResult` with the accuracy curves, multi-turn rows and raw outcomes.

    Raises:
        UserError: bad scenario, unknown intervention function, bad budget, missing or malformed
            dataset, bad backend spec or database; raised before any run row is written.
    """
    return asyncio.run(arun_teaching(scenario, **options))
