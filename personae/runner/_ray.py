"""The Ray executor: one plan split into N shards, each run by a Ray actor through `execute`.

`execute_on_ray(study, db=..., workers=N)` (what `personae run --executor ray` calls):

- checks everything a local run checks (plan, backend specs, database) and that Ray is
  installed and its cluster reachable, before anything is written;
- merges the shard databases a killed run left (`DB.shards/K-of-N.db`) into `DB`, so only the
  episodes complete nowhere are planned again;
- starts N actors; actor K runs shard K of N (`Shard`, the same split as `--shard K/N`) with the
  one runner, `execute`, in its own event loop, with its own backends (several actors may share
  one OpenAI-compatible endpoint) and its own writer to `DB.shards/K-of-N.db`;
- shows one progress bar summed over the actors; restarts an actor that dies (it resumes its
  shard: complete episodes are kept) up to `RESTARTS` times;
- merges the shard databases into `DB` as soon as an actor has written its run row (so
  `--resume DB` works after a killed driver), every `MERGE_EVERY_S` seconds, and at the end
  (also when interrupted or stopped by an error).

The shard databases must be on a file system every node sees (as for SLURM); `ray.init` with
no address starts a local Ray with one CPU per worker and needs no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personae._progress import RunProgress
from personae.errors import UserError
from personae.graphs import StopPredicate
from personae.plugins import load_imports
from personae.runner._engine import RunBackends, RunResult, default_db_path, execute
from personae.runner._shards import Shard, shard_number
from personae.runner._study import STUDIES, Study
from personae.store import RunLock, RunLog, check_database, merge_databases

#: Times a dead actor is replaced before its shard is given up (the run ends `partial`).
RESTARTS = 3
#: Seconds between merges of the shard databases into the run database while running.
MERGE_EVERY_S = 30.0
#: Seconds between progress polls of the actors.
POLL_S = 0.25
#: Seconds to wait for a TCP connection to a Ray address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0


def shard_folder(db: Path) -> Path:
    """Where the shard databases of run database `db` live: `DB.shards/`."""
    return db.with_name(db.name + ".shards")


@dataclass(frozen=True)
class ShardTask:
    """What one actor needs to rebuild the study and run its shard (all plain data)."""

    kind: str
    spec: dict[str, Any]
    base_dir: str
    imports: list[str]
    index: int
    count: int
    skip: frozenset[str]
    db: str
    concurrency: int | None = None
    cache: bool | str = False
    trusted: bool = True
    plan_limit: int | None = None
    stop_when: StopPredicate | None = None


class ShardWorker:
    """A Ray actor running one shard with `execute` (its own event loop, backends, writer)."""

    def __init__(self) -> None:
        self.bar = RunProgress(0, enabled=False)

    async def run(self, task: ShardTask) -> RunResult:
        """Run the task's shard into its database; returns the shard run's result."""
        from personae.runner._conversation import ConversationStudy

        base_dir = Path(task.base_dir)
        load_imports(task.imports, base_dir=base_dir, where="imports")
        study = STUDIES.get(task.kind)(task.spec, base_dir)
        if task.plan_limit and isinstance(study, ConversationStudy):
            study = ConversationStudy(study.scenario, plan_limit=task.plan_limit)
        return await execute(
            study,
            db=task.db,
            concurrency=task.concurrency,
            progress=self.bar,
            stop_when=task.stop_when,
            cache=task.cache,
            trusted=task.trusted,
            shard=Shard(task.index, task.count, task.skip),
        )

    def progress(self) -> dict[str, Any]:
        """Counts so far: episodes to run (None before the run knows), done, failed, turns."""
        bar = self.bar
        total = bar.total if bar.expected else None
        return {"total": total, "done": bar.done, "failed": bar.failed, "turns": bar.turns,
                "tokens": bar.tokens}  # fmt: skip

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()


@dataclass
class _Slot:
    """One shard as the driver tracks it: its actor, its call, and counts of dead actors."""

    task: ShardTask
    todo: int
    actor: Any = None
    call: asyncio.Future[Any] | None = None
    restarts: int = 0
    base_turns: int = 0
    base_tokens: int = 0
    seen: dict[str, Any] = field(default_factory=dict)
    asked: asyncio.Future[Any] | None = None  # a progress call not yet answered
    result: RunResult | None = None
    gave_up: str | None = None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray executor needs Ray, which is not installed",
            where="--executor ray",
            fix="pip install 'personae[ray]' (or run without --executor ray)",
        ) from None
    return ray


def _connect(ray: Any, address: str | None, workers: int | None) -> bool:
    """Connect to (or start) Ray; returns whether this call started it (and must shut it down).

    Raises:
        UserError: the address cannot be reached.
    """
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    if address is None or address == "local":
        options["num_cpus"] = workers or len(os.sched_getaffinity(0))
    else:
        _check_reachable(address)
        options["address"] = address
    if ray.is_initialized():  # a caller's Ray session (e.g. in a notebook): use it
        return False
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise _unreachable(address or "local", str(exc)) from exc
    return True


def _unreachable(address: str, detail: str) -> UserError:
    first = detail.strip().splitlines()[0] if detail.strip() else "no answer"
    return UserError(
        f"cannot reach the Ray cluster at {address!r}: {first}",
        where="--address",
        fix="start it (ray start --head), check the address (HOST:PORT of its head node, "
        "'auto' on one of its nodes), or leave --address out to start Ray on this machine",
    )


def _check_reachable(address: str) -> None:
    """A TCP connection to HOST:PORT (Ray itself retries an unreachable one for minutes)."""
    if address == "auto" or "://" in address:
        return  # Ray answers these at once
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise _unreachable(address, "expected HOST:PORT, 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise _unreachable(address, exc.strerror or type(exc).__name__) from exc


def _complete(db: Path) -> set[str]:
    if not db.exists() or db.stat().st_size == 0:
        return set()
    with RunLog(db) as log:
        return {r["episode_id"] for r in log.query("SELECT episode_id FROM episodes "
                                                   "WHERE status = 'complete'")}  # fmt: skip


def _run_ids(db: Path) -> set[str]:
    if not db.exists() or db.stat().st_size == 0:
        return set()
    with RunLog(db) as log:
        return {r["run_id"] for r in log.runs()}


def _merge(db: Path) -> None:
    # an empty file is a shard database being created (in one transaction): nothing in it yet
    shards = [p for p in sorted(shard_folder(db).glob("*-of-*.db")) if p.stat().st_size > 0]
    if shards:
        merge_databases(db, shards, locked=True)


async def execute_on_ray(
    study: Study,
    *,
    db: str | Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    concurrency: int | None = None,
    progress: bool = False,
    stop_when: StopPredicate | None = None,
    cache: bool | str | Path = False,
    announce: Callable[[Path], None] | None = None,
    trusted: bool = True,
    notify: Callable[[str], None] | None = None,
    plan_limit: int | None = None,
) -> RunResult:
    """Run every episode of `study` not yet complete in `db` on `workers` Ray actors.

    Args:
        study: What to run.
        db: The run database (default `logs/<name>-<time>.db`); an existing one is resumed.
        workers: Actors (shards); default: the CPUs of this machine, or of the cluster.
        address: A Ray cluster (`HOST:PORT`, `auto`, `ray://HOST:PORT`); None: start Ray here.
        concurrency: Episodes in flight per actor (default: the backends' parallelism).
        progress: Show one progress bar for all actors on stderr.
        stop_when: A predicate on the history that ends a conversation (shipped to the actors).
        cache: True or a path: a response cache shared by the actors.
        announce: Called with the database path once the actors are starting.
        trusted: See `execute`.
        notify: Called with one-line notes (credentials, restarted actors).
        plan_limit: Most turns the plan may hold.

    Raises:
        UserError: Ray missing or unreachable, a study in stages given several workers, a bad
            database or backend spec; raised before anything is written.
    """
    say = notify or (lambda line: None)
    plans = study.plan()
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}", where="--workers")
    if workers:
        Shard(1, workers).select(plans)  # a study in stages cannot be split
    db_path = Path(db) if db is not None else default_db_path(study.name)
    check_database(db_path, for_writing=True)
    backends = RunBackends(study, trusted=trusted)  # specs checked here; engines start in actors
    ray = _ray()
    started_ray = _connect(ray, address, workers)
    lock = RunLock(db_path)
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        Shard(1, count).select(plans)
        lock.acquire()
        for line in backends.notes():
            say(line)
        await asyncio.to_thread(_merge, db_path)  # what a killed run left in its shards
        done = await asyncio.to_thread(_complete, db_path)
        before = await asyncio.to_thread(_run_ids, db_path)
        todo = [p for p in plans if p.episode_id not in done]
        folder = shard_folder(db_path)
        folder.mkdir(parents=True, exist_ok=True)
        if announce is not None:
            announce(db_path)
        spec = json.loads(study.spec_json())
        base_dir = str(Path(study.base_dir).resolve())
        cache_at: bool | str = str(Path(cache).resolve()) if not isinstance(cache, bool) else cache
        if cache is True:
            cache_at = str(db_path.resolve().parent / "response_cache.db")
        slots = []
        for k in range(1, count + 1):
            task = ShardTask(
                kind=study.kind,
                spec=spec,
                base_dir=base_dir,
                imports=list(spec.get("imports") or []),
                index=k,
                count=count,
                skip=frozenset(i for i in done if shard_number(i, count) == k),
                db=str((folder / f"{k}-of-{count}.db").resolve()),
                concurrency=concurrency,
                cache=cache_at,
                trusted=trusted,
                plan_limit=plan_limit,
                stop_when=stop_when,
            )
            todo_k = sum(1 for p in todo if shard_number(p.episode_id, count) == k)
            slots.append(_Slot(task, todo_k))
        start = time.perf_counter()
        try:
            with RunProgress(len(todo), progress) as bar:
                await _drive(ray, slots, bar, db_path, say)
        except BaseException:  # interrupted, or a worker's error: keep what the shards saved
            with contextlib.suppress(Exception):
                _merge(db_path)
            raise
        elapsed = time.perf_counter() - start
        await asyncio.to_thread(_merge, db_path)
    finally:
        lock.release()
        if started_ray:
            ray.shutdown()
    return _result(db_path, todo, done, before, elapsed)


async def _drive(
    ray: Any, slots: list[_Slot], bar: RunProgress, db: Path, say: Callable[[str], None]
) -> None:
    """Run every slot's actor to the end (restarting dead ones), updating `bar`."""
    remote = ray.remote(num_cpus=1)(ShardWorker)

    def launch(slot: _Slot) -> None:
        _forget(slot.asked)
        slot.actor = remote.remote()
        slot.call = asyncio.wrap_future(slot.actor.run.remote(slot.task).future())
        slot.seen, slot.asked = {}, None

    for slot in slots:
        launch(slot)
    merged_once = False
    last_merge = time.monotonic()
    try:
        while any(s.call is not None for s in slots):
            calls = [s.call for s in slots if s.call is not None]
            await asyncio.wait(calls, timeout=POLL_S)
            for slot in slots:
                if slot.call is None or not slot.call.done():
                    continue
                try:
                    slot.result = slot.call.result()
                    slot.call = None
                    _forget(slot.asked)
                    ray.kill(slot.actor)  # its CPU goes to a worker still waiting for one
                    slot.actor = None
                except ray.exceptions.RayActorError as exc:  # the worker process died
                    _restart_or_give_up(slot, exc, say, launch)
                except ray.exceptions.RayTaskError as exc:  # raised by the shard's run
                    if isinstance(exc.cause, UserError):
                        raise exc.cause from None
                    raise  # a bug: with its traceback
            _poll(slots, bar)
            # a worker that counts has committed its run row: merged, DB can be resumed
            started = any(s.seen.get("total") is not None for s in slots)
            due = time.monotonic() - last_merge >= MERGE_EVERY_S
            if (started and not merged_once) or due:
                await asyncio.to_thread(_merge, db)  # a killed driver leaves a resumable DB
                merged_once, last_merge = True, time.monotonic()
    finally:
        for slot in slots:
            _forget(slot.asked)
            if slot.actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(slot.actor)


def _forget(answer: asyncio.Future[Any] | None) -> None:
    """Drop a progress call whose actor is going away (its error is expected, not news)."""
    if answer is not None:
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())


def _restart_or_give_up(
    slot: _Slot, exc: BaseException, say: Callable[[str], None], launch: Callable[[_Slot], None]
) -> None:
    what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    slot.base_turns += int(slot.seen.get("turns") or 0)
    slot.base_tokens += int(slot.seen.get("tokens") or 0)
    if slot.restarts >= RESTARTS:
        slot.call = None
        slot.gave_up = what
        say(f"note: worker {slot.task.index}/{slot.task.count} died {slot.restarts + 1} times "
            f"({what}); its unfinished episodes are left for a resume")  # fmt: skip
        return
    slot.restarts += 1
    say(f"note: worker {slot.task.index}/{slot.task.count} died ({what}); restarting it, it "
        "keeps the episodes it completed")  # fmt: skip
    launch(slot)


def _poll(slots: list[_Slot], bar: RunProgress) -> None:
    """Take the progress answers that have arrived, ask again, and update `bar`. Never waits:
    an actor still waiting for a CPU answers only once it runs."""
    for slot in slots:
        asked = slot.asked
        if asked is not None and asked.done():
            with contextlib.suppress(Exception):  # a dead actor answers nothing
                slot.seen = asked.result()
            slot.asked = asked = None
        if asked is None and slot.call is not None:
            slot.asked = asyncio.wrap_future(slot.actor.progress.remote().future())
    done = failed = turns = tokens = 0
    for slot in slots:
        seen = slot.seen
        if slot.result is not None:  # finished: its own final counts
            earlier = slot.todo - slot.result.episodes
            seen = {"total": slot.result.episodes, "done": slot.result.episodes,
                    "failed": slot.result.failed, "turns": seen.get("turns", 0),
                    "tokens": seen.get("tokens", 0)}  # fmt: skip
        else:
            total = seen.get("total")
            earlier = slot.todo - total if total is not None else 0
        done += earlier + int(seen.get("done") or 0)
        failed += int(seen.get("failed") or 0)
        turns += slot.base_turns + int(seen.get("turns") or 0)
        tokens += slot.base_tokens + int(seen.get("tokens") or 0)
    bar.show(done=done, failed=failed, turns=turns, tokens=tokens)


def _result(
    db: Path,
    todo: list[Any],
    done: set[str],
    before: set[str],
    elapsed: float,
) -> RunResult:
    """The run's outcome, read back from the merged database."""
    complete_now = _complete(db)
    wanted = {p.episode_id for p in todo}
    complete = len(wanted & complete_now)
    totals = {"turns": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
              "cache_hits": 0}  # fmt: skip
    runs = sorted(_run_ids(db) - before)
    with RunLog(db) as log:
        for run_id in runs:
            for key, value in log.summary(run_id).items():
                if key in totals:
                    totals[key] += int(value or 0)
    failed = len(wanted) - complete
    status = "complete" if not failed else "failed" if not complete else "partial"
    return RunResult(
        run_id=",".join(runs),
        db_path=db,
        episodes=len(wanted),
        skipped=len(done),
        complete=complete,
        failed=failed,
        turns=totals["turns"],
        prompt_tokens=totals["prompt_tokens"],
        completion_tokens=totals["completion_tokens"],
        cached_tokens=totals["cached_tokens"],
        cache_hits=totals["cache_hits"],
        elapsed_s=elapsed,
        status=status,
    )
