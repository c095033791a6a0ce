"""Scenario files: a YAML spec validated by pydantic, expanded into a plan of episodes.

A scenario names the graph and its options, the agents (role, persona file or inline mapping,
sampling, optional backend), the default backend, the seed, repeats and an optional persona grid:
a mapping from `AGENT.persona` (a list of files or a glob) or `AGENT.FIELD` (values of a persona
field) to lists of values; every combination is one condition. Everything — YAML syntax, unknown
keys, unknown roles, missing persona files, persona fields — is checked by `load_scenario` and
`plan_episodes` before any engine starts, and every problem is a one-line `UserError` naming the
file and key path.
"""

from __future__ import annotations

import difflib
import glob
import itertools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from personae._yaml import load_yaml
from personae.agents import Sampling, get_role
from personae.errors import UserError
from personae.seeds import Seed
from personae.store import episode_key


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSpec(_Spec):
    """One agent of the scenario."""

    role: str
    persona: str | dict[str, Any] = Field(
        description="A persona file (relative to the scenario file) or an inline mapping."
    )
    sampling: Sampling = Field(default_factory=Sampling)
    backend: str | None = Field(None, description="Backend spec; default: the scenario's.")
    label: str | None = Field(None, description="Speaker tag in transcripts.")


class GraphSpec(_Spec):
    """Which interaction graph runs the episode, and its options."""

    kind: Literal["dyadic"] = "dyadic"
    max_turns: int = Field(12, ge=1, le=1000, strict=True)
    opener: str | None = Field(None, description="Agent that speaks first (default: the first).")
    end_on_farewell: bool = True


class Scenario(_Spec):
    """A validated scenario file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    graph: GraphSpec = Field(default_factory=GraphSpec)
    backend: str = "embedded"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    render: Literal["transcript", "chat"] | None = Field(
        None, description="Prompt rendering for every agent (default: the backend's)."
    )
    seed: Seed = 0
    repeats: int = Field(1, ge=1, strict=True)
    episodes: int | None = Field(
        None, ge=1, strict=True, description="Cap on the number of episodes run."
    )
    agents: dict[str, AgentSpec] = Field(min_length=1)
    grid: dict[str, str | list[Any]] = Field(default_factory=dict)

    #: Folder that relative persona paths are resolved against (not part of the file).
    base_dir: Path = Field(default=Path("."), exclude=True)
    #: The scenario file, for error messages (not part of the file).
    source: str = Field(default="scenario", exclude=True)

    @field_validator("graph", mode="before")
    @classmethod
    def _graph_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


@dataclass(frozen=True)
class EpisodePlan:
    """One episode to run: its stable id, condition and fully validated personas."""

    index: int
    repeat: int
    episode_id: str
    condition: dict[str, Any]
    personas: dict[str, BaseModel]


# -- loading --------------------------------------------------------------------------------


def _suggest(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return "remove it"
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return (
        f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(model.model_fields)}"
    )


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, walking fields from `root`
    (through optional fields and mapping values such as `agents.NAME`)."""
    model: type[BaseModel] | None = root
    parts = list(loc[:-1])
    while parts and model is not None:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        ann = field.annotation
        model = next(
            (
                c
                for c in (ann, *typing.get_args(ann))
                if isinstance(c, type) and issubclass(c, BaseModel)
            ),
            None,
        )
        if typing.get_origin(ann) is dict and parts:
            parts.pop(0)  # the mapping's key, e.g. an agent's name
    return model


def validation_error(
    exc: ValidationError,
    source: str,
    root: type[BaseModel],
    docs: str = "the scenario format in the README",
) -> UserError:
    """The first pydantic error (an unknown key first) as a one-line `UserError` with the key
    path and a suggestion; `docs` names where bad values are explained."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        model = _model_at(loc, root)
        return UserError(
            f"unknown key {path!r}{more}", where=source, fix=_suggest(str(loc[-1]), model)
        )
    if err["type"] == "missing":
        return UserError(f"missing required key {path!r}{more}", where=source, fix="add it")
    return UserError(
        f"bad value for {path!r}: {err['msg']}{more}",
        where=source,
        fix=f"see {docs}",
    )


def _read_yaml(path: Path, what: str) -> Any:
    return load_yaml(path, what)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (raises `UserError`)."""
    path = Path(path)
    data = _read_yaml(path, "scenario file")
    if not isinstance(data, dict):
        raise UserError(
            "a scenario must be a YAML mapping", where=str(path), fix="see scenarios/ for examples"
        )
    if data.get("kind") == "teaching":
        raise UserError(
            "this is a teacher-student experiment scenario",
            where=str(path),
            fix=f"run it with 'personae experiment teaching {path}'",
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, str(path), Scenario) from None
    scenario.base_dir = path.resolve().parent
    scenario.source = str(path)
    for name, agent in scenario.agents.items():
        get_role(agent.role, where=f"{path}: agents.{name}.role")
    if scenario.graph.opener and scenario.graph.opener not in scenario.agents:
        raise UserError(
            f"opener {scenario.graph.opener!r} is not an agent",
            where=f"{path}: graph.opener",
            fix=f"use one of: {', '.join(scenario.agents)}",
        )
    if scenario.graph.kind == "dyadic" and len(scenario.agents) != 2:
        raise UserError(
            f"the dyadic graph needs exactly 2 agents, got {len(scenario.agents)}",
            where=f"{path}: agents",
            fix="define two agents",
        )
    return scenario


# -- planning -------------------------------------------------------------------------------


def _persona_files(scenario: Scenario, value: str, where: str) -> list[Path]:
    pattern = Path(value)
    if not pattern.is_absolute():
        pattern = scenario.base_dir / pattern
    if glob.has_magic(str(pattern)):
        files = sorted(Path(p) for p in glob.glob(str(pattern)))
        if not files:
            raise UserError(f"no persona files match {value!r}", where=where, fix="check the glob")
        return files
    return [pattern]


def _load_persona(
    scenario: Scenario, agent: str, ref: str | dict[str, Any], overrides: dict[str, Any], where: str
) -> BaseModel:
    role_cls = get_role(scenario.agents[agent].role, where=where)
    if isinstance(ref, dict):
        data, source = dict(ref), where
    else:
        file = _persona_files(scenario, ref, where)[0]
        data, source = _read_yaml(file, f"persona file for agent {agent!r}"), str(file)
        if not isinstance(data, dict):
            raise UserError("a persona file must be a YAML mapping", where=source)
    data.update(overrides)
    try:
        return role_cls.persona_model.model_validate(data)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        if field in overrides:  # the bad value came from the grid: point there
            source = f"{scenario.source}: grid.{agent}.{field}"
        raise validation_error(exc, source, role_cls.persona_model) from None


def _grid_axes(scenario: Scenario) -> list[tuple[str, str, list[Any]]]:
    axes = []
    for key, values in scenario.grid.items():
        agent, _, field = key.partition(".")
        where = f"{scenario.source}: grid.{key}"
        if agent not in scenario.agents or not field:
            raise UserError(
                f"grid key {key!r} must be AGENT.persona or AGENT.FIELD",
                where=where,
                fix=f"agents are: {', '.join(scenario.agents)}",
            )
        if field == "persona":
            if isinstance(values, str):
                values = [values]
            expanded: list[Any] = []
            for v in values:
                if isinstance(v, str):
                    expanded.extend(str(p) for p in _persona_files(scenario, v, where))
                else:
                    expanded.append(v)
            values = expanded
        elif isinstance(values, str):
            values = [values]
        if not values:
            raise UserError(f"grid.{key} has no values", where=where, fix="list at least one")
        axes.append((agent, field, values))
    return axes


def plan_episodes(scenario: Scenario, *, limit: int | None = None) -> list[EpisodePlan]:
    """Every episode of the scenario, personas loaded and validated, in a stable order.

    The order is repeat-major over the grid's conditions (product of the grid values in file
    order); `limit` (or the scenario's `episodes`) keeps the first N.
    """
    axes = _grid_axes(scenario)
    cap = limit or scenario.episodes
    plans: list[EpisodePlan] = []
    cache: dict[str, BaseModel] = {}
    combos = list(itertools.product(*(values for _, _, values in axes))) or [()]
    for repeat in range(scenario.repeats):
        for combo in combos:
            if cap is not None and len(plans) >= cap:
                return plans
            refs: dict[str, Any] = {n: a.persona for n, a in scenario.agents.items()}
            overrides: dict[str, dict[str, Any]] = {n: {} for n in scenario.agents}
            for (agent, field, _), value in zip(axes, combo, strict=True):
                if field == "persona":
                    refs[agent] = value
                else:
                    overrides[agent][field] = value
            personas: dict[str, BaseModel] = {}
            for agent in scenario.agents:
                where = f"{scenario.source}: agents.{agent}.persona"
                key = repr((agent, refs[agent], sorted(overrides[agent].items())))
                if key not in cache:
                    cache[key] = _load_persona(
                        scenario, agent, refs[agent], overrides[agent], where
                    )
                personas[agent] = cache[key]
            condition = {
                agent: {"persona": getattr(p, "id", None), **overrides[agent]}
                for agent, p in personas.items()
            }
            index = len(plans)
            plans.append(
                EpisodePlan(
                    index=index,
                    repeat=repeat,
                    episode_id=episode_key(scenario.name, condition, scenario.seed, repeat),
                    condition=condition,
                    personas=personas,
                )
            )
    return plans


# -- shipped scenarios ----------------------------------------------------------------------


def scenarios_dir() -> Path:
    """The folder of shipped scenario files (repo checkout or installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "scenarios", here / "_shipped_scenarios"):
        if candidate.is_dir():
            return candidate
    return here.parent / "scenarios"


def shipped_scenarios() -> list[Path]:
    """Shipped scenario files, by name."""
    return sorted(scenarios_dir().glob("*.yaml"))


def resolve_scenario_path(value: str | Path) -> Path:
    """A scenario path, or the name of a shipped scenario (`counseling_cbt`)."""
    path = Path(value)
    if path.exists() or path.suffix:
        return path
    shipped = scenarios_dir() / f"{value}.yaml"
    return shipped if shipped.exists() else path
