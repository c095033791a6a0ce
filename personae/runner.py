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
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel

from personae._progress import RunProgress
from personae._version import __version__
from personae.agents import Agent, Utterance, get_role
from personae.backends import Backend, create_backend
from personae.errors import UserError
from personae.graphs import Episode, build_dyadic_graph
from personae.scenario import (
    EpisodePlan,
    Scenario,
    load_scenario,
    plan_episodes,
    resolve_scenario_path,
)
from personae.store import RunLock, RunLog, StoreFailure, TurnLogWriter, open_database
from personae.store._cache import CACHE_FILE, ResponseCache
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
    cached_tokens: int
    cache_hits: int
    elapsed_s: float

    @property
    def cached_share(self) -> float:
        """Fraction of prompt tokens the engine served from its prefix cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

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
            f"({self.completion_tokens} generated, {self.cached_share:.0%} of prompt tokens "
            f"cached), {self.tokens_per_s:.1f} tok/s, {self.elapsed_s:.1f} s"
            + (f", {self.cache_hits} cached replies" if self.cache_hits else "")
        )


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_db_path(scenario: Scenario) -> Path:
    """`logs/<scenario>-<UTC timestamp>.db`."""
    return Path("logs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.db"


class RunBackends:
    """One backend instance per distinct spec, shared by every agent that names it (per-agent
    specs get no scenario `backend_options`); or one caller-owned instance for every agent."""

    def __init__(self, scenario: Scenario, instance: Backend | None = None) -> None:
        self.by_spec: dict[str, Backend] = {}
        self.for_agent: dict[str, Backend] = {}
        self._owned = instance is None
        if instance is not None:  # a caller-owned engine serves every agent
            self.by_spec[scenario.backend] = instance
            self.for_agent = dict.fromkeys(scenario.agents, instance)
            return
        for name, agent in scenario.agents.items():
            spec = agent.backend or scenario.backend
            if spec not in self.by_spec:
                options = {} if agent.backend else scenario.backend_options
                self.by_spec[spec] = create_backend(spec, options)
            self.for_agent[name] = self.by_spec[spec]

    async def start(self) -> None:
        for backend in self.by_spec.values():
            await backend.start()

    async def close(self) -> None:
        if not self._owned:
            return  # the caller started it and closes it
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
    graph: CompiledStateGraph[Any, Any, Any, Any],
    plan: EpisodePlan,
    backends: RunBackends,
    writer: TurnLogWriter,
    progress: RunProgress,
    stop_when: Callable[[Sequence[Utterance]], bool] | None,
    cache: ResponseCache | None,
) -> bool:
    last_tokens = [0]

    def on_turn(tokens: int) -> None:
        progress.turn(tokens - last_tokens[0])
        last_tokens[0] = tokens

    episode = Episode(
        episode_id=plan.episode_id,
        agents=build_agents(scenario, plan.personas, backends.for_agent),
        backends=backends.for_agent,
        writer=writer,
        run_seed=scenario.seed,
        stop_when=stop_when,
        on_turn=on_turn,
        cache=cache,
    )
    row: dict[str, Any] = {"episode_id": plan.episode_id, "status": "running", "started_at": _utc()}
    writer.upsert("episodes", row)
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


def _effective_scenario(
    scenario: str | Path | Scenario | None,
    resume: str | Path | None,
    episodes: int | None,
    backend: str | None,
    seed: int | None,
) -> Scenario:
    """The scenario with CLI overrides folded in, so the stored spec reproduces the run."""
    if resume is not None:
        spec = last_run_scenario(Path(resume))
    elif scenario is None:
        raise UserError("no scenario given", fix="pass a scenario file or --resume DB")
    elif isinstance(scenario, Scenario):
        spec = scenario
    else:
        spec = load_scenario(resolve_scenario_path(scenario))
    update: dict[str, Any] = {}
    if seed is not None:
        update["seed"] = seed
    if episodes is not None:
        update["episodes"] = episodes
    if backend is not None:
        update["backend"] = backend
        update["backend_options"] = {}
        update["agents"] = {
            n: a.model_copy(update={"backend": None}) for n, a in spec.agents.items()
        }
    return spec.model_copy(update=update) if update else spec


def last_run_scenario(db: Path) -> Scenario:
    """The scenario of the newest run in `db`, for `--resume`."""
    with RunLog(db) as log:
        runs = log.runs()
    if not runs:
        raise UserError("the database holds no run to resume", where=str(db))
    spec = Scenario.model_validate_json(runs[-1]["spec_json"])
    spec.base_dir = Path(runs[-1]["scenario_path"])
    return spec


async def arun(
    scenario: str | Path | Scenario | None = None,
    *,
    episodes: int | None = None,
    backend: str | Backend | None = None,
    db: str | Path | None = None,
    seed: int | None = None,
    concurrency: int | None = None,
    progress: bool = False,
    stop_when: Callable[[Sequence[Utterance]], bool] | None = None,
    cache: bool | str | Path = False,
    resume: str | Path | None = None,
) -> RunResult:
    """Async form of `run`."""
    instance = backend if isinstance(backend, Backend) else None
    spec_string = instance.backend_id if instance is not None else backend
    assert spec_string is None or isinstance(spec_string, str)
    spec = _effective_scenario(scenario, resume, episodes, spec_string, seed)
    plans = plan_episodes(spec)
    db_path = Path(resume or db or default_db_path(spec))
    check_database(db_path, for_writing=True)
    backends = RunBackends(spec, instance)
    graph = build_graph(spec)
    run_id = uuid.uuid4().hex[:12]
    start = time.perf_counter()
    run_lock = RunLock(db_path)  # one run per database: taken before anything writes to it
    run_lock.acquire()
    try:
        await backends.start()
    except BaseException:
        run_lock.release()
        raise
    try:
        database = open_database(db_path, create=True)
        done = prepare_rerun(database, [p.episode_id for p in plans])
        database.conn.close()
        todo = [p for p in plans if p.episode_id not in done]
        width = concurrency or min(b.parallelism for b in backends.by_spec.values())
        async with TurnLogWriter(db_path) as writer, AsyncExitStack() as stack:
            _log_run_start(writer, run_id, spec, backends, todo)
            await writer.flush()  # the run row is committed before the first episode starts
            responses = None
            if cache:
                cache_path = db_path.parent / CACHE_FILE if cache is True else Path(cache)
                open_database(cache_path, create=True).conn.close()
                cache_writer = await stack.enter_async_context(TurnLogWriter(cache_path))
                responses = ResponseCache(cache_path, cache_writer)
            gate = asyncio.Semaphore(max(1, width))
            with RunProgress(len(todo), progress) as bar:

                async def one(plan: EpisodePlan) -> bool:
                    async with gate:
                        try:
                            await writer.room()  # bounded queue; raises once the store failed
                        except StoreFailure:
                            return False  # nothing more can be saved: start no more episodes
                        return await _run_episode(
                            spec, graph, plan, backends, writer, bar, stop_when, responses
                        )

                status = "interrupted"
                try:
                    results = await asyncio.gather(*(one(p) for p in todo))
                    status = "complete"
                finally:
                    elapsed = time.perf_counter() - start
                    if responses is not None:
                        responses.close()
                    writer.upsert(
                        "runs",
                        {
                            "run_id": run_id,
                            "status": status,
                            "finished_at": _utc(),
                            "summary_json": json.dumps(
                                {"turns": bar.turns, "elapsed_s": round(elapsed, 3)}
                            ),
                        },
                    )
    finally:
        await backends.close()
        run_lock.release()
    with RunLog(db_path) as log:
        totals = log.summary(run_id)
    return RunResult(
        run_id=run_id,
        db_path=db_path,
        episodes=len(todo),
        skipped=len(done),
        complete=sum(results),
        failed=len(results) - sum(results),
        turns=int(totals["turns"]),
        prompt_tokens=int(totals["prompt_tokens"]),
        completion_tokens=int(totals["completion_tokens"]),
        cached_tokens=int(totals["cached_tokens"]),
        cache_hits=int(totals["cache_hits"] or 0),
        elapsed_s=elapsed,
    )


def _log_run_start(
    writer: TurnLogWriter,
    run_id: str,
    spec: Scenario,
    backends: RunBackends,
    todo: Sequence[EpisodePlan],
) -> None:
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
    for plan in todo:
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


def run(scenario: str | Path | Scenario | None = None, **options: Any) -> RunResult:
    """Run a scenario and log every turn to SQLite.

    Args:
        scenario: A scenario file, the name of a shipped scenario, or a `Scenario`.
        **options: `episodes` (cap), `backend` (a spec overriding every agent's, or a
            `Backend` instance the caller owns, e.g. an `AutoGenBackend`), `db` (path;
            default `logs/<scenario>-<time>.db`), `seed`, `concurrency` (episodes in flight;
            default: the backend's parallelism), `progress` (show a progress bar), `stop_when`
            (predicate on the history that ends an episode), `cache` (True or a path: reuse
            identical requests from a response-cache database, by default
            `response_cache.db` next to the run database), `resume` (a database: rerun its
            newest run's scenario into it; `scenario` may then be None). Rerunning into a
            database skips complete episodes and restarts unfinished ones from turn 0.

    Returns:
        A `RunResult` with counts, tokens and the database path.

    Raises:
        UserError: bad scenario, persona, backend spec, model path or database file; raised
            before any run row is written.
    """
    return asyncio.run(arun(scenario, **options))


__all__ = [
    "RunBackends",
    "RunResult",
    "arun",
    "build_agents",
    "build_graph",
    "default_db_path",
    "run",
]
