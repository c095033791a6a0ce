"""Persona pools: agents whose persona is drawn per episode (`persona: {pool: NAME}`).

A pool is a list of persona mappings (one YAML file holding a list, a glob of persona files, or an
inline list). Every episode draws, from its own seed, distinct members for the agents that name
the pool (in scenario order), then fills the fields a member leaves out from the pool's `draw`
probabilities (e.g. an intent). The draw never changes the episode's id, and the drawn personas
are stored with the episode, so a resume or a replay uses exactly them.
"""

from __future__ import annotations

import glob
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personae._yaml import load_yaml
from personae.errors import UserError

if TYPE_CHECKING:
    from personae.scenario import PoolSpec, Scenario


@dataclass(frozen=True)
class Member:
    """One persona of a pool and where it came from (for errors)."""

    data: dict[str, Any]
    source: str


def pool_ref(persona: str | dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(pool name, fields added to every member) when `persona` names a pool, else None."""
    if isinstance(persona, dict) and "pool" in persona:
        fields = {k: v for k, v in persona.items() if k != "pool"}
        return str(persona["pool"]), fields
    return None


def load_pool(spec: PoolSpec, base_dir: Path, where: str) -> list[Member]:
    """The members of a pool, in file order (raises `UserError`)."""
    if isinstance(spec.personas, list):
        members = [Member(dict(m), f"{where}.personas[{i}]") for i, m in enumerate(spec.personas)]
    else:
        pattern = Path(spec.personas)
        if not pattern.is_absolute():
            pattern = base_dir / pattern
        if glob.has_magic(str(pattern)):
            files = sorted(Path(p) for p in glob.glob(str(pattern)))
            if not files:
                raise UserError(
                    f"no persona files match {spec.personas!r}",
                    where=f"{where}.personas",
                    fix="check the glob",
                )
            members = [
                Member(_mapping(load_yaml(f, "persona file"), str(f)), str(f)) for f in files
            ]
        else:
            data = load_yaml(pattern, "persona pool file")
            if not isinstance(data, list):
                raise UserError(
                    "a persona pool file must hold a YAML list of personas",
                    where=str(pattern),
                    fix="write one '- id: ...' entry per persona",
                )
            members = [Member(_mapping(m, f"{pattern}[{i}]"), f"{pattern}[{i}]")
                       for i, m in enumerate(data)]  # fmt: skip
    if not members:
        raise UserError("the pool has no personas", where=f"{where}.personas", fix="add some")
    return members


def _mapping(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError("a persona must be a YAML mapping", where=source, fix="write key: value")
    return dict(value)


def check_pool_sizes(scenario: Scenario, pools: dict[str, list[Member]]) -> None:
    """Raise `UserError` when agents name an unknown pool or more agents draw from a pool than
    it has members."""
    users: dict[str, list[str]] = {}
    for name, agent in scenario.agents.items():
        ref = pool_ref(agent.persona)
        if ref is None:
            continue
        if ref[0] not in scenario.pools:
            raise UserError(
                f"agent {name!r} draws from an unknown pool {ref[0]!r}",
                where=f"{scenario.source}: agents.{name}.persona.pool",
                fix=f"pools: {', '.join(scenario.pools) or '(none defined: add pools:)'}",
            )
        users.setdefault(ref[0], []).append(name)
    for pool, names in users.items():
        if len(names) > len(pools[pool]):
            raise UserError(
                f"{len(names)} agents draw from pool {pool!r}, which has only "
                f"{len(pools[pool])} personas",
                where=f"{scenario.source}: agents.{names[0]}",
                fix=f"lower the count, or add personas to pool {pool!r}",
            )


def draw(
    scenario: Scenario, pools: dict[str, list[Member]], rng: random.Random
) -> dict[str, Member]:
    """One episode's draw: a distinct member per pool agent, missing `draw` fields filled."""
    drawn: dict[str, Member] = {}
    for pool, spec in scenario.pools.items():
        names = [
            n for n, a in scenario.agents.items() if (r := pool_ref(a.persona)) and r[0] == pool
        ]
        if not names:
            continue
        picks = rng.sample(range(len(pools[pool])), len(names))
        for name, index in zip(names, picks, strict=True):
            member = pools[pool][index]
            data = dict(member.data)
            for key, weights in spec.draw.items():
                if key not in data:
                    data[key] = _weighted(weights, rng.random())
            drawn[name] = Member(data, member.source)
    return drawn


def _weighted(weights: dict[str, float], u: float) -> str:
    total = 0.0
    for value, p in weights.items():
        total += p
        if u < total:
            return value
    return next(reversed(weights))
