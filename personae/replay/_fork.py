"""Forking a logged episode: keep its first K turns, continue from turn K with other settings.

A fork is a new episode (in a new one-episode run whose `spec_json` is the modified spec) with a
stable id derived from (parent id, K, backend, settings), `parent_episode_id` and `fork_turn`
set. It runs through the one runner like any episode, re-executed from the start: the parent's
turns before K are kept verbatim (copied with their model calls, the graph walking them without
a model call), every other model call of a turn before K (judges, a selector, a teaching step)
is served the parent's recorded output (`ForkBackend`), so the graph — of any kind, with any
number of agents, judges and turn policies (whose random draws follow the parent's lineage) —
walks the parent's prefix, then continues on the live backend from turn K.
Settings are `AGENT.sampling.FIELD=VALUE` (a sampling field) and `AGENT.FIELD=VALUE` (a persona
field) for conversation runs; values are read as YAML scalars and validated by the same pydantic
models as scenario files. Forking the same parent with the same settings again returns the
existing fork when it is complete and redoes it otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae.backends import Backend
from personae.errors import UserError
from personae.replay._backend import ForkBackend, ReplayBackend
from personae.replay._setup import load_setup, prepare_stages
from personae.runner import EpisodeJob, Services, Study, execute
from personae.scenario import EpisodePlan
from personae.store import RunLog, Turn, TurnLogWriter


@dataclass(frozen=True)
class ForkResult:
    """A fork that was run (or found already complete).

    Attributes:
        episode_id: The fork's episode id.
        parent_episode_id: The episode it was forked from.
        fork_turn: The first turn it generated itself (turns before it are the parent's).
        run_id: The one-episode run holding the fork's spec.
        status: `complete` or `failed`.
        n_turns: Turns in the fork (the replayed prefix included).
        existed: True when an identical, complete fork was already in the database.
        error: The failure, when status is `failed`.
    """

    episode_id: str
    parent_episode_id: str
    fork_turn: int
    run_id: str
    status: str
    n_turns: int
    existed: bool = False
    error: str | None = None

    def line(self) -> str:
        """One-line summary."""
        what = "existing fork" if self.existed else "fork"
        tail = f", error: {self.error}" if self.error else ""
        return (
            f"{what} {self.episode_id} of {self.parent_episode_id} at turn {self.fork_turn}: "
            f"{self.status}, {self.n_turns} turns{tail}"
        )


class ForkStudy(Study):
    """One fork of a logged episode, run by the one runner.

    Args:
        base: The study the fork runs (the parent's, with the fork's settings applied).
        plan: The fork's plan (its own id, the parent's lineage).
        db: The database holding the parent.
        parent: The parent episode's id.
        kept: The parent's turns before the fork turn.
        kept_calls: Their model calls (copied under the fork's id before it starts).
    """

    def __init__(
        self,
        base: Study,
        plan: EpisodePlan,
        db: Path,
        parent: str,
        kept: Sequence[Turn],
        kept_calls: Sequence[dict[str, Any]],
    ) -> None:
        self.base = base
        self.kind = base.kind  # type: ignore[misc]  # stored as the base kind: rebuilt as one
        self.name, self.seed, self.base_dir = base.name, base.seed, base.base_dir
        self.fork_plan = plan
        self.fork_turn = len(kept)
        self.recorded = ReplayBackend(db, rename={plan.episode_id: parent})

        def renamed(call: str | None) -> str | None:
            if call is not None and call.startswith(parent):
                return plan.episode_id + call[len(parent) :]
            return call

        self.kept = [dataclasses.replace(t, call_id=renamed(t.call_id)) for t in kept]
        self.kept_calls = [
            {**c, "call_id": renamed(c["call_id"]), "episode_id": plan.episode_id}
            for c in kept_calls
        ]

    async def prepare(
        self,
        stage: int,
        outcomes: Mapping[str, Any],
        writer: TurnLogWriter | None,
        run_id: str = "",
    ) -> None:
        if writer is not None:
            for call in self.kept_calls:
                writer.insert("llm_calls", call)

    def spec_json(self) -> str:
        return self.base.spec_json()

    def backend_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        return self.base.backend_specs()

    def plan(self) -> list[EpisodePlan]:
        return [self.fork_plan]

    def episode_row(self, plan: EpisodePlan) -> dict[str, Any]:
        return self.base.episode_row(plan)

    def restore(self, row: dict[str, Any]) -> EpisodePlan:
        return self.base.restore(row)

    def job(self, plan: EpisodePlan, services: Services) -> EpisodeJob:
        forked: Mapping[str, Backend] = {
            name: ForkBackend(backend, self.recorded, self.fork_turn)
            for name, backend in services.backends.items()
        }
        job = self.base.job(plan, dataclasses.replace(services, backends=forked))
        job.episode.prefix = self.kept
        return job


def fork_id(parent: str, turn: int, backend: str | None, settings: Sequence[str]) -> str:
    """Stable fork id from (parent id, fork turn, backend spec, settings)."""
    blob = json.dumps([parent, turn, backend, sorted(settings)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


async def afork_episode(
    db: str | Path,
    episode: str,
    fork_turn: int,
    *,
    backend: str | None = None,
    settings: Sequence[str] = (),
    trust_backend: bool = False,
    notify: Callable[[str], None] | None = None,
    progress: bool = False,
) -> ForkResult:
    """Async form of `fork_episode`."""
    path = Path(db)
    with RunLog(path) as log:
        setup = load_setup(log, episode)
        turns = log.turns(setup.episode_id)
        calls = log.calls(setup.episode_id)
        n = len(turns)
        if not 0 <= fork_turn < n:
            span = f"0 to {n - 1}" if n else "none: the episode has no turns"
            raise UserError(
                f"fork turn {fork_turn} is out of range for episode {setup.episode_id} ({n} turns)",
                where=f"{path}: --fork-at",
                fix=f"valid turns: {span}",
            )
        study, plan, changes = setup.study.settings(setup.plan, settings)
        if backend:
            study = study.with_backend(backend)
        await prepare_stages(log, dataclasses.replace(setup, study=study))
        new_id = fork_id(setup.episode_id, fork_turn, backend, settings)
        existing = log.query("SELECT * FROM episodes WHERE episode_id = ?", new_id)
    if existing and existing[0]["status"] == "complete":
        done = existing[0]
        return ForkResult(new_id, setup.episode_id, fork_turn, done["run_id"], "complete",
                          int(done["n_turns"] or 0), existed=True)  # fmt: skip
    condition = json.loads(json.dumps(plan.condition))
    for agent, fields in changes.items():
        condition.setdefault(agent, {}).update(fields)
    if backend:
        condition["backend"] = backend
    fork_plan = dataclasses.replace(plan, episode_id=new_id, condition=condition, index=0)
    kept_calls = [  # the calls behind the kept lines (a candidate's among them)
        c
        for c in calls
        if c["turn_idx"] < fork_turn and c.get("purpose") in (None, "turn", "candidate")
    ]
    kept = [t for t in turns if t.idx < fork_turn]
    fork = ForkStudy(study, fork_plan, path, setup.episode_id, kept, kept_calls)
    parent = {"parent_episode_id": setup.episode_id, "fork_turn": fork_turn}
    try:
        result = await execute(fork, db=path, extra_rows=lambda _: parent, progress=progress,
                               trusted=trust_backend or bool(backend), notify=notify)  # fmt: skip
    finally:
        await fork.recorded.close()
    with RunLog(path) as log:
        row = log.query("SELECT * FROM episodes WHERE episode_id = ?", new_id)[0]
    return ForkResult(new_id, setup.episode_id, fork_turn, result.run_id, str(row["status"]),
                      int(row["n_turns"] or 0), error=row["error"])  # fmt: skip


def fork_episode(
    db: str | Path,
    episode: str,
    fork_turn: int,
    *,
    backend: str | None = None,
    settings: Sequence[str] = (),
    trust_backend: bool = False,
    notify: Callable[[str], None] | None = None,
    progress: bool = False,
) -> ForkResult:
    """Fork a logged episode at turn `fork_turn` and run the continuation.

    Args:
        db: The run database (the fork is written to it).
        episode: Episode id, unique prefix, or index into the database's episode list.
        fork_turn: K: turns 0..K-1 are the parent's, the graph continues live from turn K.
        backend: Backend spec for the continuation (default: the run's, as stored).
        settings: `AGENT.sampling.FIELD=VALUE` / `AGENT.FIELD=VALUE` overrides.
        trust_backend: Send credentials to the endpoint the database names (a `backend` given
            here always gets them).
        notify: Called with one-line notes (credentials withheld).
        progress: Show the run's progress on stderr (a bar, or plain lines in a log).

    Returns:
        A `ForkResult` naming the new episode.

    Raises:
        UserError: unknown episode, fork turn out of range, bad setting or backend spec.
    """
    return asyncio.run(
        afork_episode(
            db,
            episode,
            fork_turn,
            backend=backend,
            settings=settings,
            trust_backend=trust_backend,
            notify=notify,
            progress=progress,
        )
    )
