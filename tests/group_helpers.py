"""Helpers for the group-conversation tests: small YAML-only scenarios and readers of the log."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from personae import RunLog
from personae.backends import GenerationRequest
from personae.store import Turn

NAMES = ("ann", "ben", "cal", "dee")


def persona(name: str) -> dict[str, Any]:
    """An inline `persona` for agent `name` (its text never collides with a line's)."""
    return {"id": f"{name}_p", "name": name.title(), "description": "A resident at a meeting."}


def group_scenario(
    names: Sequence[str] = NAMES,
    *,
    agents: dict[str, dict[str, Any]] | None = None,
    backend: str = "scripted",
    repeats: int = 1,
    seed: int = 7,
    **graph: Any,
) -> dict[str, Any]:
    """A `group` scenario of `names` (persona role), `graph` its graph options; `agents` adds
    per-agent spec fields (audience, window, label...)."""
    extra = agents or {}
    return {
        "name": "group_unit",
        "graph": {"kind": "group", **graph},
        "backend": backend,
        "seed": seed,
        "repeats": repeats,
        "agents": {
            n: {"role": "persona", "persona": persona(n), **extra.get(n, {})} for n in names
        },
    }


def line_text(request: GenerationRequest) -> str:
    """A distinctive reply naming episode, agent and turn (no two lines of a run share it, and
    none is a substring of another)."""
    tags = request.tags
    return f"Remark {str(tags['episode_id'])[:8]} {tags['agent']} t{int(tags['turn']):04d} done."


def episodes(db: Path) -> dict[str, list[Turn]]:
    """Every episode's turns, by episode id, in run order."""
    with RunLog(db) as log:
        return {e["episode_id"]: log.turns(e["episode_id"]) for e in log.episodes()}


def calls(db: Path, episode_id: str) -> list[dict[str, Any]]:
    """An episode's model calls, in order."""
    with RunLog(db) as log:
        return log.calls(episode_id)


def taken(turns: Iterable[Turn]) -> list[Turn]:
    """The turns agents took (lines and passes; not seed lines or judges' feedback)."""
    return [t for t in turns if t.kind in ("line", "pass")]


def rendered(call: dict[str, Any]) -> str:
    """Everything a call showed the model: its prompt or its chat messages."""
    return (call.get("prompt") or "") + (call.get("messages_json") or "")
