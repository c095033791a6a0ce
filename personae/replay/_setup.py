"""Rebuilding what ran an episode from its database rows.

The study comes from the run's stored spec (`runs.spec_json`, by kind), the episode's plan from
its row (personas validated with their roles' models), and the state of earlier stages from the
outcomes of their episodes: no scenario, persona or data file needs to be given again, for any
graph kind. Code a run imported (`imports:`) is never imported from a database: pass `--import`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from personae.agents import Agent, Utterance
from personae.errors import UserError
from personae.runner import ConversationStudy, Study, stored_kind, study_of_run
from personae.scenario import EpisodePlan, Scenario
from personae.store import RunLog, Turn


@dataclass(frozen=True)
class EpisodeSetup:
    """Everything needed to run a logged episode again.

    Attributes:
        row: The decoded episode row (`condition`, `personas`, status, fork columns...).
        study: The study its run was started with.
        plan: Its plan (lineage set to the episode it descends from).
    """

    row: dict[str, Any]
    study: Study
    plan: EpisodePlan

    @property
    def episode_id(self) -> str:
        """The full episode id."""
        return self.plan.episode_id

    @property
    def run_id(self) -> str:
        """The run it belongs to."""
        return str(self.row["run_id"])

    @property
    def fork_turn(self) -> int:
        """The turn this episode was forked at (0 for an episode that is not a fork)."""
        return int(self.row.get("fork_turn") or 0)

    @property
    def scenario(self) -> Scenario:
        """The conversation scenario (`UserError` for runs of other kinds)."""
        return conversation_scenario(self.study, f"episode {self.episode_id}")


def conversation_scenario(study: Study, where: str) -> Scenario:
    """`study`'s conversation scenario; `UserError` (at `where`) for studies of other kinds,
    whose agents sft/dpo export cannot rebuild."""
    if not isinstance(study, ConversationStudy):
        raise UserError(
            f"this is a {study.kind} run, not a conversation scenario",
            where=where,
            fix="sft/dpo export rebuild agents from conversation scenarios; use jsonl/csv",
        )
    return study.scenario


def lineage(log: RunLog, episode_id: str) -> str:
    """The root of a fork chain (an episode that is not a fork is its own root)."""
    seen = {episode_id}
    current = episode_id
    while True:
        rows = log.query("SELECT parent_episode_id FROM episodes WHERE episode_id = ?", current)
        parent = rows[0].get("parent_episode_id") if rows else None
        if not parent or parent in seen:
            return current
        seen.add(parent)
        current = str(parent)


def load_setup(log: RunLog, episode: str) -> EpisodeSetup:
    """Rebuild the setup of `episode` (an id, unique prefix or list index) from `log`.

    Raises:
        UserError: unknown episode, or a stored spec/persona that this version (or the code
            imported in this process) cannot rebuild.
    """
    row = log.episode(episode)
    study = study_of_run(log, row["run_id"])
    plan = study.restore(row)
    plan = dataclasses.replace(plan, lineage=lineage(log, plan.episode_id))
    return EpisodeSetup(row=row, study=study, plan=plan)


async def prepare_stages(log: RunLog, setup: EpisodeSetup) -> None:
    """Give the study the state of every stage before the episode's (from stored outcomes)."""
    stage = setup.plan.stage
    outcomes: dict[str, Any] = {}
    if stage > 0:
        earlier = [p.episode_id for p in setup.study.plan() if p.stage < stage]
        outcomes = log.outcomes(earlier)
    for k in range(stage + 1):
        await setup.study.prepare(k, outcomes, None, "")


def is_scenario_run(run: Mapping[str, Any]) -> bool:
    """True when a run was started from a conversation scenario (`personae run`, a fork)."""
    return stored_kind(run) == "scenario"


def scenario_of_run(log: RunLog, run_id: str) -> Scenario:
    """The conversation scenario a run was started with (`UserError` for other kinds)."""
    return conversation_scenario(study_of_run(log, run_id), f"{log.path}: run {run_id}")


def utterances(turns: Sequence[Turn], agents: Mapping[str, Agent]) -> list[Utterance]:
    """Logged turns as the `Utterance` history a graph hands to agents (audiences and kinds
    kept, so every agent's view of them follows the same audience rule as live)."""
    return [
        Utterance(
            agent=t.agent,
            label=agents[t.agent].label if t.agent in agents else t.agent,
            text=t.text,
            audience=t.audience,
            kind=t.kind,  # type: ignore[arg-type]
        )
        for t in turns
    ]
