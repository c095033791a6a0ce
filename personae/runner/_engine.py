"""THE runner: plan → episodes in flight → one writer, for every study and graph kind.

`execute(study, db=...)` checks the database, starts the shared backends, skips the episodes
already complete (a rerun or `--resume` continues where a run stopped), writes the run row (and
commits it) before the first episode starts, runs each stage's episodes concurrently under one
gate, records every episode's status, end reason, turn count and outcome, and marks the run
`complete`, `partial` (some episodes failed), `failed` (all did) or `interrupted`. An episode's
failure never stops the run. With a `Shard` it runs only that shard of the plan (the run row
records which), for a database that is merged with the other shards' afterwards.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae._progress import RunProgress, progress_every, watch_backend
from personae._version import __version__
from personae.backends import Backend, create_backend
from personae.errors import UserError
from personae.graphs import StopPredicate
from personae.runner._shards import Shard
from personae.runner._study import Services, Study
from personae.scenario import EpisodePlan
from personae.store import RunLock, RunLog, StoreFailure, TurnLogWriter, open_database
from personae.store._cache import CACHE_FILE, ResponseCache
from personae.store._failures import describe
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
    status: str = "complete"

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


def utc() -> str:
    """The time now, UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_db_path(name: str) -> Path:
    """`logs/<name>-<UTC timestamp>.db`."""
    return Path("logs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.db"


class RunBackends:
    """One backend instance per distinct (spec, options), shared by every agent that names it;
    or one caller-owned instance for every agent."""

    def __init__(
        self, study: Study, instance: Backend | None = None, *, trusted: bool = True
    ) -> None:
        self.by_spec: dict[str, Backend] = {}
        self.for_agent: dict[str, Backend] = {}
        #: (backend, what it does not send): specs the user did not vouch for get no credentials
        self.withheld: list[tuple[str, str]] = []
        #: (backend, what it sends): said at the start, so the user sees where keys go
        self.sent: list[tuple[str, str]] = []
        self._owned = instance is None
        specs = study.backend_specs()
        if instance is not None:  # a caller-owned engine serves every agent
            self.by_spec[instance.backend_id] = instance
            self.for_agent = dict.fromkeys(specs, instance)
            return
        for name, (spec, options) in specs.items():
            key = json.dumps([spec, options], sort_keys=True, default=str)
            if key not in self.by_spec:
                self.by_spec[key] = create_backend(spec, options)
                engine, where = self.by_spec[key], spec.partition("?")[0]
                if not trusted and (held := engine.withhold_credentials()):
                    self.withheld.append((where, held))
                elif sent := engine.credentials():
                    self.sent.append((where, sent))
            self.for_agent[name] = self.by_spec[key]

    def notes(self) -> list[str]:
        """One line per endpoint that is sent credentials or denied them, for the user."""
        return [
            f"note: {held} is not sent to {spec}: the endpoint comes from a scenario file "
            "or database (pass --trust-backend, or give it again with --backend)"
            for spec, held in self.withheld
        ] + [f"note: {sent} is sent to {spec}" for spec, sent in self.sent]

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
        return ",".join(dict.fromkeys(b.backend_id for b in self.by_spec.values()))

    @property
    def parallelism(self) -> int:
        return min((b.parallelism for b in self.by_spec.values()), default=8)


async def _run_episode(
    study: Study,
    plan: EpisodePlan,
    services: Services,
    writer: TurnLogWriter,
    progress: RunProgress,
) -> tuple[bool, Any]:
    last_tokens = [0]

    def on_turn(tokens: int) -> None:
        progress.turn(tokens - last_tokens[0])
        last_tokens[0] = tokens

    lent = Services(services.backends, writer, services.cache, services.stop_when, on_turn)
    job = study.job(plan, lent)
    episode = job.episode
    episode.watch = progress.watch
    episode.warn = progress.warn
    started = utc()
    writer.upsert(
        "episodes", {"episode_id": plan.episode_id, "status": "running", "started_at": started}
    )
    try:
        try:
            state = await job.graph.ainvoke(job.input, config=job.config, context=episode)
            await episode.finish()
        finally:  # also when the run is cancelled: what the episode opened is closed
            await episode.release()
        status, reason, error = "complete", state.get("end_reason") or episode.end_reason, None
    except Exception as exc:  # an episode's failure must not stop the run
        episode.cancel()
        status, reason, error = "failed", "error", f"{type(exc).__name__}: {exc}"
    outcome = episode.outcome if status == "complete" else None
    writer.upsert(
        "episodes",
        {
            "episode_id": plan.episode_id,
            "status": status,
            "end_reason": reason,
            "error": error,
            "n_turns": episode.next_turn,
            "outcome_json": json.dumps(outcome) if outcome is not None else None,
            "finished_at": utc(),
        },
    )
    progress.episode_done(status != "complete")
    return status == "complete", outcome


async def execute(
    study: Study,
    *,
    db: str | Path | None = None,
    backend: Backend | None = None,
    concurrency: int | None = None,
    progress: bool | RunProgress = False,
    stop_when: StopPredicate | None = None,
    cache: bool | str | Path = False,
    announce: Callable[[Path], None] | None = None,
    extra_rows: Callable[[EpisodePlan], dict[str, Any]] | None = None,
    trusted: bool = True,
    notify: Callable[[str], None] | None = None,
    shard: Shard | None = None,
) -> RunResult:
    """Run every episode of `study` not yet complete in `db`, and log everything.

    Args:
        study: What to run.
        db: The run database (default `logs/<name>-<time>.db`); an existing one is resumed.
        backend: A caller-owned backend for every agent (else the study's specs are built).
        concurrency: Episodes in flight (default: the backends' parallelism).
        progress: Show a progress bar on stderr; or a caller's `RunProgress` to count into
            (it is told the number of episodes to run; the caller shows it).
        stop_when: A predicate on the history that ends a conversation.
        cache: True or a path: reuse replies to identical requests from a response cache.
        announce: Called with the database path once the engines are up, before any row.
        extra_rows: More `episodes` columns for a planned episode (e.g. a fork's parent).
        trusted: False when the study's backend specs came from a scenario file or database the
            user has not vouched for: no credentials are sent to them.
        notify: Called with one-line notes for the user (credentials withheld).
        shard: Run only this shard of the plan.

    Raises:
        UserError: a bad database file or backend spec, or a study in stages given a shard of
            several; raised before any run row is written.
    """
    every = progress_every() if progress else None  # a bad setting is an error before any row
    plans = study.plan()
    if shard is not None:
        plans = shard.select(plans)
    db_path = Path(db) if db is not None else default_db_path(study.name)
    check_database(db_path, for_writing=True)
    backends = RunBackends(study, backend, trusted=trusted)
    if notify is not None:
        for line in backends.notes():
            notify(line)
    run_id = uuid.uuid4().hex[:12]
    start = time.perf_counter()
    results: list[bool] = []
    status = "interrupted"
    run_lock = RunLock(db_path)  # one run per database: taken before anything writes to it
    run_lock.acquire()
    try:
        await backends.start()
    except BaseException:
        run_lock.release()
        raise
    if announce is not None:
        announce(db_path)
    study.on_backends(backends.for_agent)
    try:
        done, stale = _prepare_database(db_path, plans)
        todo = [p for p in plans if p.episode_id not in done]
        with RunLog(db_path) as log:
            outcomes: dict[str, Any] = log.outcomes(sorted(done)) if done else {}
        width = concurrency or backends.parallelism
        async with TurnLogWriter(db_path) as writer, AsyncExitStack() as stack:
            for stale_id in stale:
                writer.upsert("runs", {"run_id": stale_id, "status": "interrupted"})
            _log_run_start(writer, run_id, study, backends, todo, extra_rows, shard)
            await writer.flush()  # the run row is committed before the first episode starts
            responses = None
            if cache:
                cache_path = db_path.parent / CACHE_FILE if cache is True else Path(cache)
                open_database(cache_path, create=True).conn.close()
                cache_writer = await stack.enter_async_context(TurnLogWriter(cache_path))
                responses = ResponseCache(cache_path, cache_writer)
            services = Services(backends.for_agent, writer, responses, stop_when)
            gate = asyncio.Semaphore(max(1, width))
            if isinstance(progress, RunProgress):
                progress.expect(len(todo))
            shown: AbstractContextManager[RunProgress] = (
                nullcontext(progress)
                if isinstance(progress, RunProgress)
                else RunProgress(len(todo), progress, every=every)
            )
            with shown as bar:
                watcher = asyncio.ensure_future(watch_backend(bar, backends.spec))

                async def one(plan: EpisodePlan) -> tuple[bool, Any]:
                    async with gate:
                        try:
                            await writer.room()  # bounded queue; raises once the store failed
                        except StoreFailure:
                            return False, None  # nothing more can be saved: start no more
                        return await _run_episode(study, plan, services, writer, bar)

                summary: dict[str, Any] = {}
                try:
                    for stage in sorted({p.stage for p in plans}):
                        await study.prepare(stage, outcomes, writer, run_id)
                        batch = [p for p in todo if p.stage == stage]
                        ran = await asyncio.gather(*(one(p) for p in batch))
                        for plan, (ok, outcome) in zip(batch, ran, strict=True):
                            ok = ok and plan.episode_id not in writer.lost_episodes
                            results.append(ok)
                            if ok:
                                outcomes[plan.episode_id] = outcome
                    summary = await study.finish(outcomes, writer, run_id)
                    failed = results.count(False)
                    status = (
                        "complete"
                        if not failed
                        else "failed"
                        if failed == len(results)
                        else "partial"
                    )
                finally:
                    watcher.cancel()
                    elapsed = time.perf_counter() - start
                    if responses is not None:
                        responses.close()
                    writer.upsert(
                        "runs",
                        {
                            "run_id": run_id,
                            "status": status,
                            "finished_at": utc(),
                            "summary_json": json.dumps(
                                {"turns": bar.turns, "elapsed_s": round(elapsed, 3), **summary}
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
        status=status,
    )


def _prepare_database(db_path: Path, plans: Sequence[EpisodePlan]) -> tuple[set[str], list[str]]:
    """Create or migrate the database and clear the unfinished planned episodes; returns the
    ids already complete and the runs left `running` (killed: the caller holds the lock)."""
    database = open_database(db_path, create=True)
    try:
        stale = [r[0] for r in database.execute("SELECT run_id FROM runs WHERE status = 'running'")]
        return prepare_rerun(database, [p.episode_id for p in plans]), stale
    except sqlite3.Error as exc:  # e.g. the disk filled up since the last run
        reason, remedy = describe(exc)
        raise UserError(
            f"cannot prepare the database for this run: {reason}",
            where=str(db_path),
            fix=f"{remedy}, then run again",
        ) from exc
    finally:
        database.conn.close()


def _log_run_start(
    writer: TurnLogWriter,
    run_id: str,
    study: Study,
    backends: RunBackends,
    todo: Sequence[EpisodePlan],
    extra_rows: Callable[[EpisodePlan], dict[str, Any]] | None,
    shard: Shard | None = None,
) -> None:
    writer.insert(
        "runs",
        {
            "run_id": run_id,
            "scenario": study.name,
            "scenario_path": str(study.base_dir),
            "spec_json": study.spec_json(),
            "backend": backends.spec,
            "seed": study.seed,
            "status": "running",
            "created_at": utc(),
            "personae_version": __version__,
            "study": study.kind,
            "shard": shard.label if shard is not None else None,
        },
    )
    for plan in todo:
        writer.upsert(
            "episodes",
            {
                "episode_id": plan.episode_id,
                "run_id": run_id,
                "idx": plan.index,
                "scenario": study.name,
                **study.episode_row(plan),
                "seed": plan.seed,
                "stage": plan.stage,
                "status": "pending",
                "end_reason": None,
                "error": None,
                "n_turns": None,
                "started_at": None,
                "finished_at": None,
                "outcome_json": None,
                **(extra_rows(plan) if extra_rows is not None else {}),
            },
        )
