"""Choosing which episodes an export reads: by scenario, status and condition.

A condition filter is `AGENT.FIELD=VALUE` (matched against the episode's condition, e.g.
`client.style=upset` or `client.persona=margaret_grief`, then against the stored persona, so
any persona field works) or `KEY=VALUE` for top-level condition keys (`repeat=0`). Values are
compared as YAML scalars (`0.5`, `true`) or as text. Filters that name nothing in the database
are `UserError`s, so a typo is not an empty export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from personae.errors import UserError
from personae.store import RunLog

STATUSES = ("complete", "failed", "running", "pending", "any")


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes to export.

    Attributes:
        scenario: Only episodes of this scenario (None: all).
        status: Only episodes with this status; `any` for all (default: `complete`).
        where: Condition filters, all of which must match.
    """

    scenario: str | None = None
    status: str = "complete"
    where: Sequence[str] = ()


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _lookup(episode: dict[str, Any], key: str) -> tuple[bool, Any]:
    condition = json.loads(episode.get("condition_json") or "{}")
    agent, dot, field = key.partition(".")
    if not dot:
        return (key in condition, condition.get(key))
    fields = condition.get(agent)
    if isinstance(fields, dict) and field in fields:
        return True, fields[field]
    persona = json.loads(episode.get("personas_json") or "{}").get(agent)
    if isinstance(persona, dict) and field in persona:
        return True, persona[field]
    return False, None


def _matches(value: Any, raw: str) -> bool:
    return bool(value == _scalar(raw) or str(value) == raw)


def select_episodes(log: RunLog, chosen: EpisodeFilter) -> list[dict[str, Any]]:
    """Episode rows of `log` that pass `chosen`, in run order.

    Raises:
        UserError: unknown status, a scenario not in the database, a malformed filter, or a
            filter key that no episode has.
    """
    if chosen.status not in STATUSES:
        raise UserError(
            f"unknown status {chosen.status!r}",
            where="--status",
            fix=f"use one of: {', '.join(STATUSES)}",
        )
    episodes = log.episodes()
    if chosen.scenario is not None:
        names = sorted({e["scenario"] for e in episodes})
        if chosen.scenario not in names:
            raise UserError(
                f"no scenario {chosen.scenario!r} in this database",
                where=f"{log.path}: --scenario",
                fix=f"scenarios here: {', '.join(names) or '(none)'}",
            )
        episodes = [e for e in episodes if e["scenario"] == chosen.scenario]
    if chosen.status != "any":
        episodes = [e for e in episodes if e["status"] == chosen.status]
    for item in chosen.where:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(
                "expected AGENT.FIELD=VALUE or KEY=VALUE",
                where=f"--where {item}",
                fix="e.g. --where client.style=upset",
            )
        if episodes and not any(_lookup(e, key)[0] for e in episodes):
            raise UserError(
                f"no episode has a condition or persona field {key!r}",
                where=f"--where {item}",
                fix="use AGENT.FIELD as in the scenario grid, e.g. client.style",
            )
        episodes = [e for e in episodes if _matches(_lookup(e, key)[1], raw.strip())]
    return episodes
