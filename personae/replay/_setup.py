"""Rebuilding what ran an episode from its database rows.

The scenario comes from `runs.spec_json` and the personas from `episodes.personas_json` (each
validated with its role's persona model), so no scenario or persona file is needed: an episode
can be re-executed, forked or exported from the database alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from personae.agents import Agent, Utterance, get_role
from personae.backends import Backend
from personae.errors import UserError
from personae.runner import build_agents
from personae.scenario import Scenario, validation_error
from personae.store import RunLog, Turn


@dataclass(frozen=True)
class EpisodeSetup:
    """Everything needed to run an episode again.

    Attributes:
        episode_id: The full episode id.
        run_id: The run it belongs to.
        scenario: The scenario as it was run (from `runs.spec_json`).
        personas: Validated personas by agent name.
        seed: The run seed its call seeds derive from.
        row: The decoded episode row (`condition`, `personas`, status, fork columns...).
    """

    episode_id: str
    run_id: str
    scenario: Scenario
    personas: dict[str, BaseModel]
    seed: int
    row: dict[str, Any]

    @property
    def fork_turn(self) -> int:
        """The turn this episode was forked at (0 for an episode that is not a fork)."""
        return int(self.row.get("fork_turn") or 0)

    def agents(self, backends: Mapping[str, Backend]) -> dict[str, Agent]:
        """Fresh agents for this episode, rendering for `backends`' modes."""
        return build_agents(self.scenario, self.personas, backends)

    def roles(self) -> dict[str, str]:
        """Role of each agent, by agent name."""
        return {name: spec.role for name, spec in self.scenario.agents.items()}


def is_scenario_run(run: dict[str, Any]) -> bool:
    """True when a run was started from a conversation `Scenario` (`personae run`, a fork),
    False for runs of other kinds (e.g. a teaching experiment) whose spec has another shape."""
    try:
        spec = json.loads(run.get("spec_json") or "{}")
    except json.JSONDecodeError:
        return False
    return isinstance(spec, dict) and isinstance(spec.get("agents"), dict)


def scenario_of_run(log: RunLog, run_id: str) -> Scenario:
    """The scenario a run was started with.

    Raises:
        UserError: the run was not started from a conversation scenario, or its stored
            scenario no longer validates.
    """
    run = log.run(run_id)
    where = f"{log.path}: run {run_id} ({run.get('scenario')})"
    if not is_scenario_run(run):
        raise UserError(
            "this run was not started from a conversation scenario (e.g. it is a teaching "
            "experiment), so its episodes cannot be rebuilt",
            where=where,
            fix="replay, fork and sft/dpo export work on 'personae run' databases; "
            "'personae export --format jsonl|csv' and 'personae replay --print' work on any",
        )
    try:
        return Scenario.model_validate_json(run["spec_json"])
    except ValidationError as exc:
        raise validation_error(exc, f"{where}: runs.spec_json", Scenario) from None


def load_setup(log: RunLog, episode: str) -> EpisodeSetup:
    """Rebuild the setup of `episode` (an id, unique prefix or list index) from `log`.

    Raises:
        UserError: unknown episode, or a stored scenario/persona that this version (or the
            roles registered in this process) cannot rebuild.
    """
    row = log.episode(episode)
    scenario = scenario_of_run(log, row["run_id"])
    personas: dict[str, BaseModel] = {}
    for name, spec in scenario.agents.items():
        where = f"{log.path}: episode {row['episode_id']}, agent {name!r}"
        role = get_role(spec.role, where=where)
        data = row["personas"].get(name)
        if not isinstance(data, dict):
            raise UserError(
                "no stored persona for this agent",
                where=where,
                fix="the episode row is incomplete; re-run the scenario",
            )
        try:
            personas[name] = role.persona_model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, where, role.persona_model) from None
    return EpisodeSetup(
        episode_id=row["episode_id"],
        run_id=row["run_id"],
        scenario=scenario,
        personas=personas,
        seed=int(row["seed"] or 0),
        row=row,
    )


def utterances(turns: list[Turn], agents: Mapping[str, Agent]) -> list[Utterance]:
    """Logged turns as the `Utterance` history a graph hands to agents."""
    return [
        Utterance(
            agent=t.agent,
            label=agents[t.agent].label if t.agent in agents else t.agent,
            text=t.text,
        )
        for t in turns
    ]
