"""Running a scenario: validate everything, start the shared backend(s), run the episodes
concurrently through their graph, and log every turn.

`run()` is the Python API behind `personae run`. Order of work is chosen so that bad input costs
nothing: scenario, personas, backend specs and the database file are all checked before an
engine starts, and the run row is written only after the engines are up.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel

from personae._progress import RunProgress
from personae._version import __version__
from personae.agents import Agent, Utterance, get_role
from personae.backends import Backend, create_backend
from personae.graphs import Episode, build_dyadic_graph
from personae.scenario import (
    EpisodePlan,
    Scenario,
    load_scenario,
    plan_episodes,
    resolve_scenario_path,
)
from personae.store import RunLog, TurnLogWriter, open_database
from personae.store._resume import prepare_rerun
from personae.store._schema import check_database


@dataclass(frozen=True)
class RunResult:
    """Outcome of a run, as printed in the one-line summary."""

    run_id: str
    db_path: Path
    episodes: int
    skipped: int
    complete: int
    failed: int
    turns: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second."""
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        """One-line summary."""
        failed = f" ({self.failed} failed)" if self.failed else ""
        if self.skipped:
            failed += f", {self.skipped} already complete"
        return (
            f"{self.complete}/{self.episodes} episodes{failed}, {self.turns} turns, "
            f"{self.prompt_tokens + self.completion_tokens} tokens "
            f"({self.completion_tokens} generated), {self.tokens_per_s:.1f} tok/s, "
            f"{self.elapsed_s:.1f} s"
        )


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_db_path(scenario: Scenario) -> Path:
    """`logs/<scenario>-<UTC timestamp>.db`."""
    return Path("logs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.db"


class _Backends:
    """One backend instance per distinct spec, shared by every agent that names it."""

    def __init__(self, scenario: Scenario, override: str | None) -> None:
        self.by_spec: dict[str, Backend] = {}
        self.for_agent: dict[str, Backend] = {}
        for name, agent in scenario.agents.items():
            spec = override or agent.backend or scenario.backend
            if spec not in self.by_spec:
                options = scenario.backend_options if not agent.backend or override else {}
                self.by_spec[spec] = create_backend(spec, options)
            self.for_agent[name] = self.by_spec[spec]

    async def start(self) -> None:
        for backend in self.by_spec.values():
            await backend.start()

    async def close(self) -> None:
        for backend in self.by_spec.values():
            await backend.close()

    @property
    def spec(self) -> str:
        return ",".join(b.backend_id for b in self.by_spec.values())


def build_agents(
    scenario: Scenario, personas: Mapping[str, BaseModel], backends: Mapping[str, Backend]
) -> dict[str, Agent]:
    """The episode's agents, in scenario order, rendering for their backend's mode."""
    agents: dict[str, Agent] = {}
    for name, spec in scenario.agents.items():
        agents[name] = get_role(spec.role)(
            name,
            personas[name],
            sampling=spec.sampling,
            render_mode=scenario.render or backends[name].render_mode,
            label=spec.label,
        )
    return agents


def build_graph(scenario: Scenario) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The compiled LangGraph graph that runs one episode of `scenario`."""
    names = list(scenario.agents)
    first = scenario.graph.opener or names[0]
    second = next(n for n in names if n != first)
    return build_dyadic_graph(
        first,
        second,
        max_turns=scenario.graph.max_turns,
        end_on_farewell=scenario.graph.end_on_farewell,
    )


async def _run_episode(
    scenario: Scenario,
    plan: EpisodePlan,
    seed: int,
    backends: _Backends,
    writer: TurnLogWriter,
    progress: RunProgress,
    stop_when: Callable[[Sequence[Utterance]], bool] | None,
) -> bool:
    agents = build_agents(scenario, plan.personas, backends.for_agent)
    last_tokens = [0]

    def on_turn(tokens: int) -> None:
        progress.turn(tokens - last_tokens[0])
        last_tokens[0] = tokens

    episode = Episode(
        episode_id=plan.episode_id,
        agents=agents,
        backends=backends.for_agent,
        writer=writer,
        run_seed=seed,
        stop_when=stop_when,
        on_turn=on_turn,
    )
    row: dict[str, Any] = {"episode_id": plan.episode_id, "status": "running", "started_at": _utc()}
    writer.upsert("episodes", row)
    graph = build_graph(scenario)
    try:
        state = await graph.ainvoke(
            {"turn": 0, "end_reason": None},
            config={"recursion_limit": scenario.graph.max_turns + 10},
            context=episode,
        )
        row.update(status="complete", end_reason=state.get("end_reason"), error=None)
        failed = False
    except Exception as exc:  # an episode's failure must not stop the run
        row.update(status="failed", end_reason="error", error=f"{type(exc).__name__}: {exc}")
        failed = True
    row.update(n_turns=len(episode.history), finished_at=_utc())
    writer.upsert("episodes", row)
    progress.episode_done(failed)
    return not failed


async def arun(
    scenario: str | Path | Scenario,
    *,
    episodes: int | None = None,
    backend: str | None = None,
    db: str | Path | None = None,
    seed: int | None = None,
    concurrency: int | None = None,
    progress: bool = False,
    stop_when: Callable[[Sequence[Utterance]], bool] | None = None,
) -> RunResult:
    """Async form of `run`."""
    spec = (
        scenario
        if isinstance(scenario, Scenario)
        else load_scenario(resolve_scenario_path(scenario))
    )
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    plans = plan_episodes(spec, limit=episodes)
    db_path = Path(db) if db else default_db_path(spec)
    if db_path.exists() and db_path.stat().st_size > 0:
        check_database(db_path)
    backends = _Backends(spec, backend)
    run_id = uuid.uuid4().hex[:12]
    start = time.perf_counter()
    await backends.start()
    try:
        database = open_database(db_path, create=True)
        done = prepare_rerun(database, [p.episode_id for p in plans])
        database.conn.close()
        skipped = len(done)
        plans = [p for p in plans if p.episode_id not in done]
        width = concurrency or min(b.parallelism for b in backends.by_spec.values())
        async with TurnLogWriter(db_path) as writer:
            writer.insert(
                "runs",
                {
                    "run_id": run_id,
                    "scenario": spec.name,
                    "scenario_path": str(spec.base_dir),
                    "spec_json": spec.model_dump_json(),
                    "backend": backends.spec,
                    "seed": spec.seed,
                    "status": "running",
                    "created_at": _utc(),
                    "personae_version": __version__,
                },
            )
            for plan in plans:
                writer.upsert(
                    "episodes",
                    {
                        "episode_id": plan.episode_id,
                        "run_id": run_id,
                        "idx": plan.index,
                        "scenario": spec.name,
                        "condition_json": json.dumps({**plan.condition, "repeat": plan.repeat}),
                        "personas_json": json.dumps(
                            {n: p.model_dump(mode="json") for n, p in plan.personas.items()}
                        ),
                        "seed": spec.seed,
                        "status": "pending",
                        "end_reason": None,
                        "error": None,
                        "n_turns": None,
                        "started_at": None,
                        "finished_at": None,
                    },
                )
            gate = asyncio.Semaphore(max(1, width))
            with RunProgress(len(plans), progress) as bar:

                async def one(plan: EpisodePlan) -> bool:
                    async with gate:
                        return await _run_episode(
                            spec, plan, spec.seed, backends, writer, bar, stop_when
                        )

                status = "interrupted"
                try:
                    results = await asyncio.gather(*(one(p) for p in plans))
                    status = "complete"
                finally:
                    elapsed = time.perf_counter() - start
                    summary = {
                        "episodes": len(plans),
                        "turns": bar.turns,
                        "generated_tokens": bar.tokens,
                        "elapsed_s": round(elapsed, 3),
                    }
                    writer.upsert(
                        "runs",
                        {
                            "run_id": run_id,
                            "status": status,
                            "finished_at": _utc(),
                            "summary_json": json.dumps(summary),
                        },
                    )
    finally:
        await backends.close()
    with RunLog(db_path) as log:
        totals = log.summary(run_id)
    return RunResult(
        run_id=run_id,
        db_path=db_path,
        episodes=len(plans),
        skipped=skipped,
        complete=sum(results),
        failed=len(results) - sum(results),
        turns=int(totals["turns"]),
        prompt_tokens=int(totals["prompt_tokens"]),
        completion_tokens=int(totals["completion_tokens"]),
        elapsed_s=elapsed,
    )


def run(scenario: str | Path | Scenario, **options: Any) -> RunResult:
    """Run a scenario and log every turn to SQLite.

    Args:
        scenario: A scenario file, the name of a shipped scenario, or a `Scenario`.
        **options: `episodes` (cap), `backend` (spec overriding every agent's), `db` (path;
            default `logs/<scenario>-<time>.db`), `seed`, `concurrency` (episodes in flight;
            default: the backend's parallelism), `progress` (show a progress bar), `stop_when`
            (predicate on the history that ends an episode).

    Returns:
        A `RunResult` with counts, tokens and the database path.

    Raises:
        UserError: bad scenario, persona, backend spec, model path or database file; raised
            before any run row is written.
    """
    return asyncio.run(arun(scenario, **options))


__all__ = ["RunResult", "arun", "build_agents", "build_graph", "default_db_path", "run"]
