"""Forking a logged episode: keep its first K turns, continue from turn K with other settings.

A fork is a new episode (in a new one-episode run whose `spec_json` is the modified scenario) with
a stable id derived from (parent id, K, backend, settings), `parent_episode_id` and `fork_turn`
set. Turns 0..K-1 and their model calls are copied under the new id (call ids renamed), the
Episode's history is pre-filled with those K lines, and the graph is invoked at turn K; the turns
it produces are logged as usual. Settings are `AGENT.sampling.FIELD=VALUE` (a sampling field)
and `AGENT.FIELD=VALUE` (a persona field); values are read as YAML scalars and validated by the
same pydantic models as scenario files. Forking the same parent with the same settings again
returns the existing fork when it is complete and redoes it otherwise.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from personae._version import __version__
from personae.agents import Sampling
from personae.backends import Backend
from personae.errors import UserError
from personae.graphs import Episode
from personae.replay._setup import EpisodeSetup, load_setup, utterances
from personae.runner import RunBackends, build_agents, build_graph
from personae.scenario import Scenario
from personae.store import RunLog, TurnLogWriter, open_database
from personae.store._resume import prepare_rerun


@dataclass(frozen=True)
class ForkResult:
    """A fork that was run (or found already complete).

    Attributes:
        episode_id: The fork's episode id.
        parent_episode_id: The episode it was forked from.
        fork_turn: The first turn it generated itself (turns before it are the parent's).
        run_id: The one-episode run holding the fork's scenario.
        status: `complete` or `failed`.
        n_turns: Turns in the fork (copied prefix included).
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


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _bad_set(item: str, what: str, fix: str) -> UserError:
    return UserError(what, where=f"--set {item}", fix=fix)


def apply_settings(
    setup: EpisodeSetup, settings: Sequence[str]
) -> tuple[Scenario, dict[str, BaseModel], dict[str, dict[str, Any]]]:
    """Apply `--set` items to an episode's scenario and personas.

    Returns:
        The modified scenario, the modified personas, and per agent the changed fields
        (`FIELD` or `sampling.FIELD` → value) to record in the fork's condition.

    Raises:
        UserError: malformed item, unknown agent or field, or a value the model rejects.
    """
    scenario = setup.scenario
    personas = dict(setup.personas)
    changes: dict[str, dict[str, Any]] = {}
    agents = dict(scenario.agents)
    for item in settings:
        key, eq, raw = item.partition("=")
        parts = key.strip().split(".")
        if not eq or len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "sampling"):
            raise _bad_set(
                item,
                "expected AGENT.FIELD=VALUE or AGENT.sampling.FIELD=VALUE",
                "e.g. --set client.style=upset --set counselor.sampling.temperature=0.2",
            )
        agent, field = parts[0], parts[-1]
        if agent not in agents:
            raise _bad_set(item, f"unknown agent {agent!r}", f"agents: {', '.join(agents)}")
        value = _value(raw.strip())
        if len(parts) == 3:
            model: type[BaseModel] = Sampling
            current: BaseModel = agents[agent].sampling
        else:
            model, current = type(personas[agent]), personas[agent]
        if field not in model.model_fields:
            close = difflib.get_close_matches(field, list(model.model_fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _bad_set(
                item,
                f"unknown {'sampling' if len(parts) == 3 else 'persona'} field {field!r}",
                f"{hint}fields: {', '.join(model.model_fields)}",
            )
        try:
            updated = model.model_validate({**current.model_dump(), field: value})
        except ValidationError as exc:
            raise _bad_set(item, f"bad value: {exc.errors()[0]['msg']}", "fix the value") from None
        recorded = updated.model_dump(mode="json")[field]
        if len(parts) == 3:
            assert isinstance(updated, Sampling)
            agents[agent] = agents[agent].model_copy(update={"sampling": updated})
            changes.setdefault(agent, {})[f"sampling.{field}"] = recorded
        else:
            personas[agent] = updated
            changes.setdefault(agent, {})[field] = recorded
    scenario = scenario.model_copy(update={"agents": agents})
    return scenario, personas, changes


def fork_id(parent: str, turn: int, backend: str | None, settings: Sequence[str]) -> str:
    """Stable fork id from (parent id, fork turn, backend spec, settings)."""
    blob = json.dumps([parent, turn, backend, sorted(settings)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ensure_fork_columns(path: Path) -> None:
    """Add the fork columns to a database created before they existed."""
    conn = sqlite3.connect(str(path), timeout=30.0)
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(episodes)")}
        with conn:
            for column, kind in (("parent_episode_id", "TEXT"), ("fork_turn", "INTEGER")):
                if column not in have:
                    conn.execute(f"ALTER TABLE episodes ADD COLUMN [{column}] {kind}")
    finally:
        conn.close()


async def afork_episode(
    db: str | Path,
    episode: str,
    fork_turn: int,
    *,
    backend: str | None = None,
    settings: Sequence[str] = (),
) -> ForkResult:
    """Async form of `fork_episode`."""
    path = Path(db)
    with RunLog(path) as log:
        setup = load_setup(log, episode)
        turns = log.turns(setup.episode_id)
        calls = log.calls(setup.episode_id)
        parent_run = log.run(setup.run_id)
    n = len(turns)
    if not 0 <= fork_turn < n:
        span = f"0 to {n - 1}" if n else "none: the episode has no turns"
        raise UserError(
            f"fork turn {fork_turn} is out of range for episode {setup.episode_id} ({n} turns)",
            where=f"{path}: --fork-at",
            fix=f"valid turns: {span}",
        )
    scenario, personas, changes = apply_settings(setup, settings)
    if backend:
        scenario = scenario.model_copy(
            update={
                "backend": backend,
                "backend_options": {},
                "agents": {
                    name: spec.model_copy(update={"backend": None})
                    for name, spec in scenario.agents.items()
                },
            }
        )
    new_id = fork_id(setup.episode_id, fork_turn, backend, settings)
    backends = RunBackends(scenario)  # bad backend specs fail here, before any write

    with RunLog(path) as log:
        existing = log.query("SELECT * FROM episodes WHERE episode_id = ?", new_id)
    if existing and existing[0]["status"] == "complete":
        done = existing[0]
        return ForkResult(
            new_id,
            setup.episode_id,
            fork_turn,
            done["run_id"],
            "complete",
            int(done["n_turns"] or 0),
            existed=True,
        )
    run_id = existing[0]["run_id"] if existing else uuid.uuid4().hex[:12]
    _ensure_fork_columns(path)
    database = open_database(path, create=False)
    try:
        prepare_rerun(database, [new_id])
    finally:
        database.conn.close()

    condition = json.loads(json.dumps(setup.row["condition"]))
    for agent, fields in changes.items():
        condition.setdefault(agent, {}).update(fields)
    if backend:
        condition["backend"] = backend

    def renamed(call_id: str | None) -> str | None:
        if call_id is None:
            return None
        if call_id.startswith(setup.episode_id):
            return new_id + call_id[len(setup.episode_id) :]
        return f"{new_id}-{call_id}"

    started: list[Backend] = []
    try:
        for backend_ in backends.by_spec.values():
            await backend_.start()
            started.append(backend_)
        async with TurnLogWriter(path) as writer:
            writer.upsert(
                "runs",
                {
                    "run_id": run_id,
                    "scenario": scenario.name,
                    "scenario_path": parent_run.get("scenario_path"),
                    "spec_json": scenario.model_dump_json(),
                    "backend": backends.spec,
                    "seed": setup.seed,
                    "status": "running",
                    "created_at": _utc(),
                    "personae_version": __version__,
                },
            )
            row: dict[str, Any] = {
                "episode_id": new_id,
                "run_id": run_id,
                "idx": 0,
                "scenario": scenario.name,
                "condition_json": json.dumps(condition),
                "personas_json": json.dumps(
                    {name: p.model_dump(mode="json") for name, p in personas.items()}
                ),
                "seed": setup.seed,
                "status": "running",
                "end_reason": None,
                "error": None,
                "n_turns": None,
                "started_at": _utc(),
                "finished_at": None,
                "parent_episode_id": setup.episode_id,
                "fork_turn": fork_turn,
            }
            writer.upsert("episodes", row)
            for turn in turns[:fork_turn]:
                writer.insert(
                    "turns",
                    {
                        "episode_id": new_id,
                        "idx": turn.idx,
                        "agent": turn.agent,
                        "role": turn.role,
                        "text": turn.text,
                        "hidden_json": json.dumps(turn.hidden) if turn.hidden else None,
                        "call_id": renamed(turn.call_id),
                        "created_at": _utc(),
                    },
                )
            for call in calls:
                if call["turn_idx"] < fork_turn:
                    writer.insert(
                        "llm_calls",
                        {**call, "call_id": renamed(call["call_id"]), "episode_id": new_id},
                    )
            agents = build_agents(scenario, personas, backends.for_agent)
            context = Episode(
                episode_id=new_id,
                agents=agents,
                backends=backends.for_agent,
                writer=writer,
                run_seed=setup.seed,
            )
            context.history.extend(utterances(turns[:fork_turn], agents))
            error: str | None = None
            try:
                state = await build_graph(scenario).ainvoke(
                    {"turn": fork_turn, "end_reason": None},
                    config={"recursion_limit": scenario.graph.max_turns + 10},
                    context=context,
                )
                row.update(status="complete", end_reason=state.get("end_reason"), error=None)
            except Exception as exc:  # a failed fork is logged like a failed episode
                error = f"{type(exc).__name__}: {exc}"
                row.update(status="failed", end_reason="error", error=error)
            row.update(n_turns=len(context.history), finished_at=_utc())
            writer.upsert("episodes", row)
            writer.upsert(
                "runs",
                {
                    "run_id": run_id,
                    "status": "complete",
                    "finished_at": _utc(),
                    "summary_json": json.dumps(
                        {"episodes": 1, "turns": len(context.history) - fork_turn}
                    ),
                },
            )
    finally:
        for backend_ in started:
            await backend_.close()
    return ForkResult(
        new_id, setup.episode_id, fork_turn, run_id, str(row["status"]),
        int(row["n_turns"]), error=error,
    )  # fmt: skip


def fork_episode(
    db: str | Path,
    episode: str,
    fork_turn: int,
    *,
    backend: str | None = None,
    settings: Sequence[str] = (),
) -> ForkResult:
    """Fork a logged episode at turn `fork_turn` and run the continuation.

    Args:
        db: The run database (the fork is written to it).
        episode: Episode id, unique prefix, or index into the database's episode list.
        fork_turn: K: turns 0..K-1 are kept, the graph continues from turn K.
        backend: Backend spec for the continuation (default: the scenario's, as stored).
        settings: `AGENT.sampling.FIELD=VALUE` / `AGENT.FIELD=VALUE` overrides.

    Returns:
        A `ForkResult` naming the new episode.

    Raises:
        UserError: unknown episode, fork turn out of range, bad setting or backend spec.
    """
    return asyncio.run(afork_episode(db, episode, fork_turn, backend=backend, settings=settings))
