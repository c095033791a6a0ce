"""Episodes with a person in the loop: LangGraph interrupts, answered and checkpointed.

Only a run with an agent on an `interactive` backend (`human`) pays for any of this: its
episodes run with one `AsyncSqliteSaver` for the run, in a file beside the run database
(`RUN.db.checkpoints`: the turn log stays ours alone — merges, readers and schema checks never
see LangGraph's tables — and the checkpoints can be deleted without losing a turn), with
`thread_id` = the episode id. `drive` runs an episode's graph until it ends, answering each
interrupt through `Services.on_interrupt` and resuming with `Command(resume=...)`; a `Pause`
answer leaves the checkpoint for a later run to take up.
"""

from __future__ import annotations

import inspect
import sqlite3
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

from langgraph.types import Command

from personae.backends import Backend
from personae.graphs import Episode
from personae.runner._study import End, EpisodeJob, Pause, Services

Ending = Literal["done", "paused", "ended"]


def interactive_agents(backends: Mapping[str, Backend]) -> list[str]:
    """The agents a person plays (their backend is interactive)."""
    return [name for name, backend in backends.items() if backend.interactive]


def checkpoint_path(db_path: Path) -> Path:
    """Where a run database's LangGraph checkpoints live: `RUN.db.checkpoints`."""
    return db_path.with_name(db_path.name + ".checkpoints")


def checkpointed(path: Path, episode_ids: Collection[str]) -> set[str]:
    """The ids among `episode_ids` that have a checkpoint in `path` (none when no file)."""
    if not path.exists() or not episode_ids:
        return set()
    conn = sqlite3.connect(path)
    try:
        threads = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    except sqlite3.Error:  # the saver never set up its tables
        return set()
    finally:
        conn.close()
    return threads & set(episode_ids)


async def drive(
    job: EpisodeJob, services: Services, *, resume: bool
) -> tuple[dict[str, Any], Ending]:
    """Run `job`'s graph with the run's checkpointer until it ends, pauses or is ended.

    `resume`: take up the episode from its checkpoint (its pending interrupt is asked again)
    instead of starting it. Returns the last graph state and how the episode stopped.
    """
    assert services.checkpointer is not None and services.on_interrupt is not None
    episode: Episode = job.episode
    graph = job.graph.copy(update={"checkpointer": services.checkpointer})
    config: Any = {
        **job.config,
        "configurable": {**job.config.get("configurable", {}), "thread_id": episode.episode_id},
    }
    state: dict[str, Any] = {}
    pending: list[Any] = []
    if resume:
        pending = list((await graph.aget_state(config)).interrupts)
    step: Any = None if resume else job.input
    while True:
        if pending:
            answers: dict[str, Any] = {}
            for asked in pending:
                begun = time.monotonic()
                answer = services.on_interrupt(asked.value)
                if inspect.isawaitable(answer):
                    answer = await answer
                if isinstance(answer, Pause):
                    return state, "paused"
                if isinstance(answer, End):
                    await services.checkpointer.adelete_thread(episode.episode_id)
                    return state, "ended"
                if not isinstance(answer, dict):  # a line: timed here
                    answer = {"text": answer, "seconds": round(time.monotonic() - begun, 1)}
                answers[asked.id] = answer
            step = Command(resume=answers)
        # durability "exit": one checkpoint when the graph stops (an interrupt, or its end)
        state = await graph.ainvoke(step, config=config, context=episode, durability="exit")
        pending = list(state.get("__interrupt__") or ())
        if not pending:
            await services.checkpointer.adelete_thread(episode.episode_id)
            return state, "done"
