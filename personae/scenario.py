"""Scenario files: a YAML spec validated by pydantic, expanded into a plan of episodes.

A scenario names the graph kind and its options, the agents (role, persona file or inline
mapping, sampling, optional backend, audience, context window, candidates proposing its lines
and the supervisor choosing among them, or — for judges — whom they observe), the default
backend, the seed, repeats and an optional grid: a mapping from `AGENT.persona` (a list of
files or a glob), `AGENT.FIELD` (values of a persona field), `AGENT.backend` (backend specs) or
`graph.OPTION` (values of a graph option; a glob of files expands) to lists of values; every
combination is one condition. `imports:` lists Python files or modules with the
scenario's own roles, graph kinds, turn policies or judges. Everything — YAML syntax, unknown
keys, unknown roles, graph kinds and policies, audiences and topologies naming missing agents,
missing persona files, persona fields — is checked by `load_scenario` and `plan_episodes` before
any engine starts, and every problem is a one-line `UserError` naming the file and key path.
"""

from __future__ import annotations

import difflib
import glob
import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    StrictInt,
    ValidationError,
    field_validator,
)

from personae._course import CourseSpec
from personae._overrides import apply_settings, blame_setting
from personae._pools import Member, check_pool_sizes, draw, load_pool, pool_ref
from personae._shipped import scenarios_dir
from personae._yaml import load_yaml
from personae.agents import Sampling, get_role
from personae.errors import UserError
from personae.graphs import Cast, GraphKind, GraphOptions, get_graph
from personae.judges import JudgeAgent, SessionSummarizer
from personae.plugins import load_imports
from personae.seeds import Seed, derive_seed
from personae.store import episode_key
from personae.validation import validate_persona, validation_error


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Candidate ids: what a supervisor's choice names (a code of its rubric).
CANDIDATE_ID = r"^[A-Za-z0-9_.-]+$"


class CandidateSpec(_Spec):
    """One candidate for an agent's lines: the fields it changes in the agent's own spec."""

    id: str = Field(pattern=CANDIDATE_ID, max_length=40, description="Named by the choice.")
    persona: str | dict[str, Any] | None = Field(
        None, description="A persona file or inline mapping (default: the agent's own)."
    )
    sampling: dict[str, Any] | None = Field(
        None, description="Sampling fields replacing the agent's (the others are kept)."
    )
    backend: str | None = Field(None, description="Backend spec (default: the agent's).")


def candidate_key(seat: str, candidate: str) -> str:
    """How candidate `candidate` of agent `seat` is named in backends, personas and calls."""
    return f"{seat}#{candidate}"


class AgentSpec(_Spec):
    """One agent of the scenario."""

    role: str
    persona: str | dict[str, Any] = Field(
        description="A persona file (relative to the scenario file), an inline mapping, or "
        "{pool: NAME, ...fields}: drawn per episode from a pool (the fields added to it)."
    )
    count: StrictInt | None = Field(
        None,
        ge=1,
        le=1000,
        description="Expand into COUNT agents NAME_1..NAME_COUNT with this spec (with a pool, "
        "each draws its own persona); lists naming NAME name them all.",
    )
    sampling: Sampling = Field(default_factory=Sampling)
    backend: str | None = Field(None, description="Backend spec; default: the scenario's.")
    label: str | None = Field(None, description="Speaker tag (default: from the agent's name).")
    audience: list[str] | None = Field(
        None, description="Who hears this agent's lines besides itself (default: everyone)."
    )
    window: StrictInt | None = Field(
        None, ge=1, description="See only the last N lines it may see (default: all)."
    )
    observes: list[str] | Literal["all"] | None = Field(
        None, description="A judge: the agents whose lines it rates ('all': every speaker)."
    )
    when: Literal["turn", "end"] = Field(
        "turn", description="A judge rates after each watched line, or once at the end."
    )
    route_to: list[str] | None = Field(
        None, description="A judge's verdicts go to these agents as a private line."
    )
    candidates: list[CandidateSpec] | None = Field(
        None,
        description="K >= 2 candidates propose each of this agent's lines (its own spec with "
        "their changes); the supervisor picks the one said.",
    )
    supervisor: str | None = Field(
        None, description="The judge agent that picks among the candidates (it takes no turns)."
    )

    def candidate_sampling(self, candidate: CandidateSpec) -> Sampling:
        """A candidate's sampling: this agent's, with the candidate's fields replaced."""
        if not candidate.sampling:
            return self.sampling
        return Sampling.model_validate({**self.sampling.model_dump(), **candidate.sampling})


class PoolSpec(_Spec):
    """Personas that agents draw from per episode, without replacement."""

    personas: str | list[dict[str, Any]] = Field(
        description="A YAML file holding a list of personas, a glob of persona files, or an "
        "inline list."
    )
    draw: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="FIELD: {VALUE: probability, ...}: drawn per agent and episode for "
        "personas that leave FIELD out (e.g. intent: {troll: 0.3, neutral: 0.7}).",
    )

    @field_validator("draw")
    @classmethod
    def _probabilities(cls, draw: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for key, weights in draw.items():
            if not weights:
                raise ValueError(f"draw.{key} lists no values")
            for value, p in weights.items():
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"draw.{key}.{value}: probability {p} is outside [0, 1]")
            if abs(sum(weights.values()) - 1.0) > 1e-6:
                raise ValueError(
                    f"draw.{key}: probabilities sum to {sum(weights.values()):g}, not 1"
                )
        return draw


class Scenario(_Spec):
    """A validated scenario file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    imports: list[str] = Field(
        default_factory=list, description="Python files (relative to this file) or modules."
    )
    graph: SerializeAsAny[GraphOptions] = Field(default_factory=lambda: GraphOptions(kind="dyadic"))
    backend: str = "embedded"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    render: Literal["transcript", "chat"] | None = Field(
        None, description="Prompt rendering for every agent (default: the backend's)."
    )
    seed: Seed = 0
    repeats: StrictInt = Field(1, ge=1)
    episodes: StrictInt | None = Field(None, ge=1, description="Cap on the number of episodes run.")
    agents: dict[str, AgentSpec] = Field(min_length=1)
    pools: dict[str, PoolSpec] = Field(
        default_factory=dict, description="Persona pools agents draw from per episode."
    )
    grid: dict[str, str | list[Any]] = Field(default_factory=dict)
    course: CourseSpec | None = Field(
        None, description="Every (condition, repeat) is a course of sessions (see _course)."
    )

    #: Folder that relative persona paths are resolved against (not part of the file).
    base_dir: Path = Field(default=Path("."), exclude=True)
    #: The scenario file, for error messages (not part of the file).
    source: str = Field(default="scenario", exclude=True)
    _kind: GraphKind | None = PrivateAttr(None)
    _kinds: dict[str, GraphKind] = PrivateAttr(default_factory=dict)

    def supervisors(self) -> frozenset[str]:
        """Agents that choose among candidates (they take no turns)."""
        return frozenset(a.supervisor for a in self.agents.values() if a.supervisor)

    def candidates(self) -> dict[str, tuple[str, CandidateSpec]]:
        """Every candidate, by `candidate_key`: (its agent, its spec), in scenario order."""
        return {
            candidate_key(seat, c.id): (seat, c)
            for seat, spec in self.agents.items()
            for c in spec.candidates or ()
        }

    def cast(self) -> Cast:
        """The agents by part: who takes turns and who observes (supervisors do neither)."""
        chooses = self.supervisors()
        speakers = tuple(
            n for n, a in self.agents.items() if a.observes is None and n not in chooses
        )
        observers = tuple(n for n, a in self.agents.items() if a.observes is not None)
        return Cast(
            speakers=speakers,
            observers=observers,
            roles={n: a.role for n, a in self.agents.items()},
            labels={n: agent_label(n, a) for n, a in self.agents.items()},
            source=self.source,
            base_dir=self.base_dir,
        )

    def graph_kind(self, options: Mapping[str, Any] | None = None) -> GraphKind:
        """The graph kind for this scenario, built and checked once — or, with `options` (the
        graph options a grid condition varies), once per distinct set of them."""
        if not options:
            if self._kind is None:
                cls = get_graph(self.graph.kind, where=f"{self.source}: graph.kind")
                self._kind = cls(self.graph, self.cast())
            return self._kind
        key = json.dumps(options, sort_keys=True, default=str)
        if key not in self._kinds:
            cls = get_graph(self.graph.kind, where=f"{self.source}: graph.kind")
            data = {**self.graph.model_dump(), **options}
            try:
                graph = cls.options_model.model_validate(data)
            except ValidationError as exc:
                raise validation_error(
                    exc, f"{self.source}: grid", cls.options_model, prefix="graph"
                ) from None
            self._kinds[key] = cls(graph, self.cast())
        return self._kinds[key]

    def watched(self, name: str) -> frozenset[str]:
        """The agents judge `name` observes."""
        observes = self.agents[name].observes
        if observes == "all":
            return frozenset(self.cast().speakers)
        return frozenset(observes or ())


def agent_label(name: str, spec: AgentSpec) -> str:
    """The speaker tag of agent `name` (its `label`, else from its name)."""
    from personae.agents._base import default_label

    return spec.label or default_label(name)


@dataclass(frozen=True)
class EpisodePlan:
    """One episode to run: its stable id, condition and fully validated personas.

    Attributes:
        index: Position in the run's plan.
        repeat: Which repeat of its condition.
        episode_id: Stable id from (scenario, condition, seed, repeat).
        condition: The grid values (and anything else that tells episodes apart).
        personas: Validated personas by agent name.
        stage: Episodes of a stage start only when every earlier stage is done.
        seed: The seed its call seeds derive from.
        lineage: The episode it descends from (a fork's root), whose random draws it shares;
            None: itself.
        context: Text given to agents for the whole episode, by agent name (a course's
            memory and session goal; stored in `episodes.context_json`).
    """

    index: int
    repeat: int
    episode_id: str
    condition: dict[str, Any]
    personas: dict[str, BaseModel]
    stage: int = 0
    seed: int = 0
    lineage: str | None = None
    context: Mapping[str, str] = _field(default_factory=dict)


# -- loading --------------------------------------------------------------------------------


def _read_yaml(path: Path, what: str) -> Any:
    return load_yaml(path, what)


def load_scenario(
    path: str | Path, *, imports: list[str] | None = None, settings: Sequence[str] = ()
) -> Scenario:
    """Read and validate a scenario file (raises `UserError`).

    Args:
        path: The YAML file.
        imports: Extra modules or files to import first (the CLI's `--import`).
        settings: `KEY.PATH=VALUE` overrides (`run --set`), applied before validation.
    """
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
    load_imports(imports or ())
    base_dir = path.resolve().parent
    if not settings:
        return parse_scenario(data, source=str(path), base_dir=base_dir)
    data = apply_settings(data, settings, base_dir=base_dir)
    try:
        return parse_scenario(data, source=str(path), base_dir=base_dir)
    except UserError as exc:
        raise blame_setting(exc, settings) from None


def with_settings(scenario: Scenario, settings: Sequence[str]) -> Scenario:
    """`scenario` with `KEY.PATH=VALUE` overrides applied to its spec and validated again
    (its imports are not imported again: they were when it was built)."""
    if not settings:
        return scenario
    data = apply_settings(scenario.model_dump(mode="json"), settings, base_dir=scenario.base_dir)
    try:
        return parse_scenario(
            data, source=scenario.source, base_dir=scenario.base_dir, import_code=False
        )
    except UserError as exc:
        raise blame_setting(exc, settings) from None


def parse_scenario(
    data: dict[str, Any], *, source: str, base_dir: Path, import_code: bool = True
) -> Scenario:
    """Validate a scenario mapping (a file's contents, or a stored `spec_json`).

    Imports its `imports:` (relative to `base_dir`; with `import_code=False`, as for a spec
    read from a database, nothing is imported and a missing role says which imports the run
    had), validates the graph options with the graph kind's own model, and checks every
    cross-reference (raises `UserError`).
    """
    data = dict(data)
    imports = data.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise UserError(
            "imports must be a list of Python files or module names",
            where=f"{source}: imports",
            fix="e.g. imports: [roles.py]",
        )
    if import_code:
        load_imports(imports, base_dir=base_dir, where=f"{source}: imports")
        return _parse(data, source, base_dir)
    try:
        return _parse(data, source, base_dir)
    except UserError as exc:
        if not imports or "unknown" not in exc.what:
            raise
        raise UserError(
            exc.what,
            where=exc.where,
            fix=f"this run imported {', '.join(imports)} (from {base_dir}); pass them again "
            "with --import (code named in a database is never imported by itself)",
        ) from None


def _parse(data: dict[str, Any], source: str, base_dir: Path) -> Scenario:
    graph = data.pop("graph", "dyadic")
    if isinstance(graph, str):
        graph = {"kind": graph}
    if not isinstance(graph, dict) or not isinstance(graph.get("kind", "dyadic"), str):
        raise UserError(
            "graph must be a graph kind name or a mapping with a 'kind'",
            where=f"{source}: graph",
            fix="e.g. graph: {kind: group, max_turns: 12}",
        )
    graph = {"kind": "dyadic", **graph}
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, Scenario) from None
    kind = get_graph(graph["kind"], where=f"{source}: graph.kind")
    if not kind.standalone:
        raise UserError(
            f"graph kind {graph['kind']!r} runs only inside its own experiment",
            where=f"{source}: graph.kind",
            fix="use a conversation kind (dyadic, group, or your own), or run the experiment "
            "with 'personae experiment'",
        )
    try:
        scenario.graph = kind.options_model.model_validate(graph)
    except ValidationError as exc:
        raise validation_error(exc, source, kind.options_model, prefix="graph") from None
    scenario.base_dir = base_dir
    scenario.source = source
    scenario.agents = _expand_counts(scenario.agents, source)
    _check_agents(scenario)
    _check_course(scenario)
    scenario.graph_kind()
    return scenario


def _expand_counts(agents: dict[str, AgentSpec], source: str) -> dict[str, AgentSpec]:
    """Agents with `count: N` become NAME_1..NAME_N; `observes`, `audience` and `route_to`
    lists naming NAME name every one of them."""
    slots = {
        name: [f"{name}_{i}" for i in range(1, spec.count + 1)]
        for name, spec in agents.items()
        if spec.count is not None
    }
    if not slots:
        return agents

    def expand(names: Any) -> Any:
        if not isinstance(names, list):
            return names
        return [slot for n in names for slot in slots.get(n, [n])]

    expanded: dict[str, AgentSpec] = {}
    for name, spec in agents.items():
        update = {key: expand(getattr(spec, key)) for key in ("observes", "audience", "route_to")}
        spec = spec.model_copy(update={**update, "count": None})
        for slot in slots.get(name, [name]):
            if slot in expanded or (slot != name and slot in agents):
                raise UserError(
                    f"count: {agents[name].count} names agent {slot!r}, which is defined twice",
                    where=f"{source}: agents.{name}.count",
                    fix=f"rename agent {name!r} or the other {slot!r}",
                )
            expanded[slot] = spec
    return expanded


def _check_agents(scenario: Scenario) -> None:
    """Roles, audiences, observers and labels (raises `UserError`)."""
    source = scenario.source
    names = list(scenario.agents)
    labels: dict[str, str] = {}
    for name, agent in scenario.agents.items():
        where = f"{source}: agents.{name}"
        cls = get_role(agent.role, where=f"{where}.role")
        for key in ("audience", "route_to"):
            for other in getattr(agent, key) or ():
                if other not in scenario.agents:
                    raise UserError(
                        f"{key} names an unknown agent {other!r}",
                        where=f"{where}.{key}",
                        fix=f"agents: {', '.join(names)}",
                    )
        is_judge = issubclass(cls, JudgeAgent)
        if agent.observes is None and name in scenario.supervisors():
            pass  # a supervisor: checked with the agent it chooses for
        elif agent.observes is None:
            if is_judge:
                raise UserError(
                    f"agent {name!r} has the judge role {agent.role!r} but observes nobody",
                    where=f"{where}.observes",
                    fix="add observes: [AGENT, ...] (or 'all')",
                )
            if agent.route_to is not None:
                raise UserError(
                    "route_to only applies to judges",
                    where=f"{where}.route_to",
                    fix="remove it, or make the agent an observer",
                )
        else:
            if not is_judge:
                raise UserError(
                    f"agent {name!r} observes others but its role {agent.role!r} is not a judge",
                    where=f"{where}.role",
                    fix="use role 'judge' (or a role registered with @register_judge)",
                )
            if agent.route_to is not None and agent.when == "end":
                raise UserError(
                    "route_to needs when: turn (a verdict on the whole episode comes after its "
                    "last line, so nobody would hear it)",
                    where=f"{where}.route_to",
                    fix="remove route_to, or rate each line with when: turn",
                )
            watched = scenario.watched(name)
            if not watched:
                raise UserError(
                    f"judge {name!r} observes nobody",
                    where=f"{where}.observes",
                    fix="list the agents it rates, e.g. observes: [helper]",
                )
            for other in watched:
                if other not in scenario.agents or other == name:
                    raise UserError(
                        f"observes names {'itself' if other == name else repr(other)}, "
                        "which is not another agent",
                        where=f"{where}.observes",
                        fix=f"agents: {', '.join(n for n in names if n != name)}",
                    )
                if scenario.agents[other].observes is not None:
                    raise UserError(
                        f"judge {name!r} observes {other!r}, another judge",
                        where=f"{where}.observes",
                        fix="judges rate agents that take turns",
                    )
        label = agent_label(name, agent)
        if label in labels:
            raise UserError(
                f"agents {labels[label]!r} and {name!r} have the same speaker tag {label!r}",
                where=f"{where}.label",
                fix="give one of them another label",
            )
        labels[label] = name
        _check_candidates(scenario, name)


def _check_candidates(scenario: Scenario, name: str) -> None:
    """An agent's candidates and supervisor (raises `UserError`)."""
    spec, where = scenario.agents[name], f"{scenario.source}: agents.{name}"
    candidates, supervisor = spec.candidates, spec.supervisor
    if candidates is None:
        if supervisor is not None:
            raise UserError(
                "a supervisor needs candidates to choose from",
                where=f"{where}.supervisor",
                fix="add candidates: [{id: A}, {id: B}], or remove supervisor",
            )
        return
    if len(candidates) < 2:
        raise UserError(
            f"an agent with candidates needs at least 2, got {len(candidates)}",
            where=f"{where}.candidates",
            fix="add another candidate, or remove candidates and supervisor to let the agent "
            "speak alone",
        )
    if spec.observes is not None or name in scenario.supervisors():
        raise UserError(
            "only an agent that takes turns can have candidates",
            where=f"{where}.candidates",
            fix="remove them",
        )
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise UserError(
            f"candidate id {twice!r} is used twice",
            where=f"{where}.candidates",
            fix="give every candidate its own id",
        )
    for i, candidate in enumerate(candidates):
        key = f"agents.{name}.candidates[{i}]"
        at = f"{scenario.source}: {key}"
        if candidate_key(name, candidate.id) in scenario.agents:
            raise UserError(
                f"candidate {candidate.id!r} has the name of agent "
                f"{candidate_key(name, candidate.id)!r}",
                where=f"{at}.id",
                fix="rename the candidate or that agent",
            )
        if candidate.persona is not None and pool_ref(candidate.persona) is not None:
            raise UserError(
                "a candidate's persona is a file or a mapping, not a pool",
                where=f"{at}.persona",
                fix="name a persona file",
            )
        try:
            spec.candidate_sampling(candidate)
        except ValidationError as exc:
            raise validation_error(
                exc, scenario.source, Sampling, prefix=f"{key}.sampling"
            ) from None
    if supervisor is None:
        raise UserError(
            "candidates need a supervisor to choose among them",
            where=f"{where}.supervisor",
            fix="name a judge agent, e.g. supervisor: supervisor",
        )
    chooser = scenario.agents.get(supervisor)
    others = [n for n in scenario.agents if n != name]
    if chooser is None or supervisor == name:
        raise UserError(
            f"supervisor names {'itself' if supervisor == name else repr(supervisor)}, "
            "which is not another agent",
            where=f"{where}.supervisor",
            fix=f"agents: {', '.join(others)}",
        )
    if not issubclass(get_role(chooser.role), JudgeAgent):
        raise UserError(
            f"supervisor {supervisor!r} has the role {chooser.role!r}, which is not a judge",
            where=f"{scenario.source}: agents.{supervisor}.role",
            fix="use role 'judge' with a choice rubric",
        )
    if chooser.observes is not None or chooser.candidates or chooser.route_to is not None:
        raise UserError(
            f"supervisor {supervisor!r} has observes, route_to or candidates: a supervisor "
            "only chooses among candidates",
            where=f"{scenario.source}: agents.{supervisor}",
            fix="use another judge agent as the supervisor",
        )


def _check_course(scenario: Scenario) -> None:
    """The `course:` block: stage sessions summing to `sessions`, every stage name it
    references (`start_stage`, `per_stage`) among its stages, and every agent it names fit
    for its part (raises `UserError`)."""
    course = scenario.course
    if course is None:
        return
    where = f"{scenario.source}: course"
    stages = course.stage_list()
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(
            f"stage {twice!r} is named twice", where=f"{where}.stages", fix="rename one of them"
        )
    total = sum(s.sessions for s in stages)
    if total != course.sessions:
        raise UserError(
            f"the stages hold {total} sessions, but the course has sessions: {course.sessions}",
            where=f"{where}.stages",
            fix=f"make the stages' sessions sum to {course.sessions}, or set sessions: {total}",
        )
    references = [("start_stage", course.start_stage)] if course.start_stage else []
    references += [(f"per_stage.{key}", key) for key in course.per_stage]
    for key, stage in references:
        if stage not in names:
            close = difflib.get_close_matches(stage, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(
                f"unknown stage {stage!r}",
                where=f"{where}.{key}",
                fix=f"{hint}stages: {', '.join(names)}",
            )
    _check_summary_agent(scenario, course.summary)
    speakers = scenario.cast().speakers
    for key in ("memory", "goal_to"):
        for name in getattr(course, key) or ():
            if name not in scenario.agents:
                raise UserError(
                    f"{key} names an unknown agent {name!r}",
                    where=f"{where}.{key}",
                    fix=f"agents: {', '.join(scenario.agents)}",
                )
    if course.client is not None and course.client not in speakers:
        raise UserError(
            f"client names {course.client!r}, which is not an agent that takes turns",
            where=f"{where}.client",
            fix=f"speakers: {', '.join(speakers)}",
        )
    for stage, changes in course.per_stage.items():
        for key in changes:
            agent, _, name = str(key).partition(".")
            if agent not in scenario.agents or not name or "." in name:
                raise UserError(
                    f"per-stage key {key!r} must be AGENT.FIELD (a persona field)",
                    where=f"{where}.per_stage.{stage}.{key}",
                    fix=f"agents: {', '.join(scenario.agents)}",
                )


def _check_summary_agent(scenario: Scenario, name: str) -> None:
    """The course's summary agent: a session summarizer rating the whole session at its end."""
    where = f"{scenario.source}: course.summary"
    spec = scenario.agents.get(name)
    if spec is None:
        raise UserError(
            f"summary names an unknown agent {name!r}",
            where=where,
            fix=f"add an agent with role session_summarizer; agents: {', '.join(scenario.agents)}",
        )
    if not issubclass(get_role(spec.role), SessionSummarizer):
        raise UserError(
            f"summary agent {name!r} has the role {spec.role!r}, which is not a summarizer",
            where=f"{scenario.source}: agents.{name}.role",
            fix="use role session_summarizer (or a role derived from it)",
        )
    if spec.when != "end":
        raise UserError(
            f"summary agent {name!r} must summarise the session at its end",
            where=f"{scenario.source}: agents.{name}.when",
            fix="set observes: all and when: end",
        )


def course_client(scenario: Scenario) -> str | None:
    """The course's client: `course.client`, else the one speaker with role client."""
    course = scenario.course
    if course is None:
        return None
    if course.client is not None:
        return course.client
    clients = [n for n in scenario.cast().speakers if scenario.agents[n].role == "client"]
    return clients[0] if len(clients) == 1 else None


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
        role_cls.persona_model.model_validate(data)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        if field in overrides:  # the bad value came from the grid: point there
            source = f"{scenario.source}: grid.{agent}.{field}"
    return validate_persona(role_cls.persona_model, data, source)


#: The grid's key prefix for graph options (`graph.task`), and the agent field naming a
#: backend spec (`agent.backend`) rather than a persona field.
GRAPH_AXIS = "graph"
BACKEND_FIELD = "backend"


def _grid_files(scenario: Scenario, value: str, where: str) -> list[str]:
    """A graph option's grid value: a glob of files expands to the files, as paths relative to
    the scenario's folder (so episode ids do not depend on where the checkout lives)."""
    if not glob.has_magic(value):
        return [value]
    base = scenario.base_dir.resolve()
    files = []
    for path in _persona_files(scenario, value, where):
        resolved = path.resolve()
        files.append(
            resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(path)
        )
    return files


def _grid_axes(scenario: Scenario) -> list[tuple[str, str, list[Any]]]:
    axes = []
    for key, values in scenario.grid.items():
        agent, _, field = key.partition(".")
        where = f"{scenario.source}: grid.{key}"
        if agent == GRAPH_AXIS and agent not in scenario.agents:
            options = [k for k in type(scenario.graph).model_fields if k != "kind"]
            if field not in options:
                raise UserError(
                    f"grid key {key!r} names no option of graph kind {scenario.graph.kind!r}",
                    where=where,
                    fix=f"options are: {', '.join(options)}",
                )
        elif agent not in scenario.agents or not field:
            raise UserError(
                f"grid key {key!r} must be AGENT.persona, AGENT.backend, AGENT.FIELD or "
                "graph.OPTION",
                where=where,
                fix=f"agents are: {', '.join(scenario.agents)}",
            )
        if field == "persona" and agent != GRAPH_AXIS:
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
        if agent == GRAPH_AXIS and agent not in scenario.agents:
            values = [f for v in values for f in (_grid_files(scenario, v, where)
                      if isinstance(v, str) else [v])]  # fmt: skip
        if field == BACKEND_FIELD and not all(isinstance(v, str) and v for v in values):
            raise UserError(
                f"grid.{key} must list backend specs", where=where, fix="e.g. [scripted, embedded]"
            )
        if not values:
            raise UserError(f"grid.{key} has no values", where=where, fix="list at least one")
        axes.append((agent, field, values))
    return axes


def grid_backends(scenario: Scenario) -> dict[str, list[str]]:
    """The backend specs the grid gives each agent (`grid: {AGENT.backend: [...]}`), by agent."""
    return {
        agent: [str(v) for v in values]
        for agent, field, values in _grid_axes(scenario)
        if field == BACKEND_FIELD and agent != GRAPH_AXIS
    }


def condition_graph_options(scenario: Scenario, condition: Mapping[str, Any]) -> dict[str, Any]:
    """The graph options a planned condition varies (`grid: {graph.OPTION: ...}`); none: {}."""
    if GRAPH_AXIS in scenario.agents:
        return {}
    return dict(condition.get(GRAPH_AXIS) or {})


def grid_backend_key(agent: str, spec: str) -> str:
    """How the backend the grid gives `agent` is named among the run's backends."""
    return f"{agent}@{spec}"


def plan_shape(scenario: Scenario) -> tuple[int, int]:
    """(conditions, repeats): the scenario plans conditions x repeats episodes (before any
    `episodes` cap). Raises `UserError` for a bad grid."""
    conditions = math.prod(len(values) for _, _, values in _grid_axes(scenario))
    return conditions, scenario.repeats


#: Most turns a plan may hold (episodes times max_turns) unless the caller raises the limit: a
#: typo such as `repeats: 1000000000` is a clear error, not a run that fills the memory.
PLAN_LIMIT = 10_000_000


def plan_episodes(
    scenario: Scenario, *, limit: int | None = None, plan_limit: int | None = None
) -> list[EpisodePlan]:
    """Every episode of the scenario, personas loaded and validated, in a stable order.

    The order is repeat-major over the grid's conditions (product of the grid values in file
    order); `limit` (or the scenario's `episodes`) keeps the first N. With a `course:` block
    each of those is a course, whose sessions are the episodes (see `course_plans`).

    Raises:
        UserError: a bad grid or persona, or a plan of more than `plan_limit` (default
            `PLAN_LIMIT`) turns, checked before any episode is built.
    """
    plans = _condition_plans(scenario, limit, plan_limit)
    return plans if scenario.course is None else course_plans(scenario, plans)


def _condition_plans(
    scenario: Scenario, limit: int | None, plan_limit: int | None
) -> list[EpisodePlan]:
    """One plan per (condition, repeat), at most `limit` (or the scenario's `episodes`)."""
    axes = _grid_axes(scenario)
    cap = limit or scenario.episodes
    conditions = math.prod(len(values) for _, _, values in axes)
    size = conditions * scenario.repeats
    if cap is not None:
        size = min(size, cap)
    turns = int(getattr(scenario.graph, "max_turns", 1) or 1)
    if scenario.course is not None:
        turns *= scenario.course.sessions
    allowed = plan_limit or PLAN_LIMIT
    if size * turns > allowed:
        raise UserError(
            f"the plan has {size:,} episodes of up to {turns} turns ({size * turns:,} turns), "
            f"more than the limit of {allowed:,}",
            where=f"{scenario.source}: repeats and grid",
            fix="lower repeats or the grid, cap the run with --episodes N, or raise the limit "
            "with --plan-limit N",
        )
    plans: list[EpisodePlan] = []
    cache: dict[str, BaseModel] = {}
    checked: set[tuple[str, int]] = set()
    pools = _load_pools(scenario)
    combos = list(itertools.product(*(values for _, _, values in axes)))
    for repeat in range(scenario.repeats):
        for combo in combos:
            if cap is not None and len(plans) >= cap:
                return plans
            refs: dict[str, Any] = {n: a.persona for n, a in scenario.agents.items()}
            overrides: dict[str, dict[str, Any]] = {n: {} for n in scenario.agents}
            graph_options: dict[str, Any] = {}
            backends: dict[str, str] = {}
            for (agent, field, _), value in zip(axes, combo, strict=True):
                if agent == GRAPH_AXIS and agent not in scenario.agents:
                    graph_options[field] = value
                elif field == BACKEND_FIELD:
                    backends[agent] = value
                elif field == "persona":
                    refs[agent] = value
                else:
                    overrides[agent][field] = value
            if graph_options:
                scenario.graph_kind(graph_options)  # checked once per distinct value
            personas: dict[str, BaseModel] = {}
            condition: dict[str, Any] = {}
            for agent in scenario.agents:
                if pool_ref(refs[agent]) is not None:  # drawn per episode: not a condition
                    if overrides[agent]:
                        condition[agent] = dict(overrides[agent])
                    continue
                where = f"{scenario.source}: agents.{agent}.persona"
                key = repr((agent, refs[agent], sorted(overrides[agent].items())))
                if key not in cache:
                    cache[key] = _load_persona(
                        scenario, agent, refs[agent], overrides[agent], where
                    )
                personas[agent] = cache[key]
                condition[agent] = {"persona": getattr(personas[agent], "id", None),
                                    **overrides[agent]}  # fmt: skip
            for agent, spec_text in backends.items():
                condition.setdefault(agent, {})[BACKEND_FIELD] = spec_text
            if graph_options:
                condition[GRAPH_AXIS] = graph_options
            for seat, spec in scenario.agents.items():
                if spec.candidates:  # which candidates (and their personas) it has
                    condition.setdefault(seat, {})["candidates"] = _candidate_ids(
                        scenario, seat, cache
                    )
            episode_id = episode_key(scenario.name, condition, scenario.seed, repeat)
            if pools:
                rng = random.Random(derive_seed(scenario.seed, episode_id, 0, "pools"))
                for agent, member in draw(scenario, pools, rng).items():
                    if pool_ref(refs[agent]) is None:  # the grid gave this agent a persona
                        continue
                    fields = {**pool_ref(refs[agent])[1], **overrides[agent]}  # type: ignore[index]
                    personas[agent] = _pool_persona(scenario, agent, member, fields)
            personas = {n: personas[n] for n in scenario.agents}
            for key, (seat, candidate) in scenario.candidates().items():
                i = scenario.agents[seat].candidates.index(candidate)  # type: ignore[union-attr]
                personas[key] = (
                    personas[seat]
                    if candidate.persona is None
                    else _candidate_persona(scenario, seat, i, cache)
                )
            check_judges(scenario, personas, checked)
            index = len(plans)
            plans.append(
                EpisodePlan(
                    index=index,
                    repeat=repeat,
                    episode_id=episode_id,
                    condition=condition,
                    personas=personas,
                    seed=scenario.seed,
                )
            )
    return plans


def course_plans(scenario: Scenario, courses: Sequence[EpisodePlan]) -> list[EpisodePlan]:
    """The sessions of every course: each planned (condition, repeat) is a course whose id
    is that plan's episode id; its session k (from `start_stage`'s first on) is an episode in
    runner stage k-1 with the condition's `course`, `session` and `course_stage` keys added and
    its stage's `per_stage` persona fields applied; ids come from (course id, session)."""
    course = scenario.course
    assert course is not None
    plans: list[EpisodePlan] = []
    staged: dict[tuple[str, int, str], BaseModel] = {}
    for session in range(course.first_session(), course.sessions + 1):
        stage = course.stage_of(session)
        fields: dict[str, dict[str, Any]] = {}
        for key, value in course.per_stage.get(stage.name, {}).items():
            agent, _, name = str(key).partition(".")
            fields.setdefault(agent, {})[name] = value
        for base in courses:
            personas = dict(base.personas)
            condition = {k: dict(v) if isinstance(v, dict) else v
                         for k, v in base.condition.items()}  # fmt: skip
            for agent, changed in fields.items():
                memo = (agent, id(base.personas[agent]), stage.name)
                if memo not in staged:
                    current = base.personas[agent]
                    staged[memo] = validate_persona(
                        type(current),
                        {**current.model_dump(mode="json"), **changed},
                        f"{scenario.source}: course.per_stage.{stage.name}",
                    )
                personas[agent] = staged[memo]
                entry = condition.setdefault(agent, {})
                if isinstance(entry, dict):
                    entry.update(changed)
            condition.update(course=base.episode_id, session=session, course_stage=stage.name)
            plans.append(
                EpisodePlan(
                    index=len(plans),
                    repeat=base.repeat,
                    episode_id=session_id(base.episode_id, session),
                    condition=condition,
                    personas=personas,
                    stage=session - 1,
                    seed=base.seed,
                )
            )
    return plans


def session_id(course_id: str, session: int) -> str:
    """The episode id of session `session` of course `course_id`."""
    return episode_key("course", {"course": course_id, "session": session}, 0, session)


def _candidate_persona(
    scenario: Scenario, seat: str, index: int, cache: dict[str, BaseModel]
) -> BaseModel:
    """Candidate `index` of agent `seat`'s own persona (loaded once)."""
    ref = scenario.agents[seat].candidates[index].persona  # type: ignore[index]
    assert ref is not None
    key = repr((seat, "candidate", ref))
    if key not in cache:
        where = f"{scenario.source}: agents.{seat}.candidates[{index}].persona"
        cache[key] = _load_persona(scenario, seat, ref, {}, where)
    return cache[key]


def _candidate_ids(scenario: Scenario, seat: str, cache: dict[str, BaseModel]) -> str:
    """`ID` per candidate, `ID=PERSONA` for one with its own persona (the condition's)."""
    parts = []
    for i, c in enumerate(scenario.agents[seat].candidates or ()):
        own = _candidate_persona(scenario, seat, i, cache) if c.persona is not None else None
        parts.append(c.id if own is None else f"{c.id}={getattr(own, 'id', None) or 'own'}")
    return " ".join(parts)


def check_judges(
    scenario: Scenario, personas: Mapping[str, BaseModel], seen: set[tuple[str, int]] | None = None
) -> None:
    """Rubrics that fit their judges' parts: a supervisor's is a choice (or codes) among its
    candidates' ids, an observer's choice has its own codes (raises `UserError`). `seen`
    remembers the (judge, persona) pairs already checked."""
    seats = {n: s for n, s in scenario.agents.items() if s.candidates}
    seen = set() if seen is None else seen
    for name, spec in scenario.agents.items():
        cls = get_role(spec.role)
        if not issubclass(cls, JudgeAgent) or (name, id(personas[name])) in seen:
            continue
        seen.add((name, id(personas[name])))
        rubric = cls(name, personas[name]).rubric
        where = f"{scenario.source}: agents.{name}.persona.rubric"
        if name not in scenario.supervisors():
            if rubric.kind == "choice" and not rubric.codes:
                raise UserError(
                    "a choice rubric needs codes (only a supervisor's come from its candidates)",
                    where=where,
                    fix="add codes: [A, B, ...]",
                )
            continue
        if rubric.kind == "scores":
            raise UserError(
                f"supervisor {name!r} rates with dimensions; it must choose a candidate",
                where=where,
                fix="use a choice rubric: {id: ..., choice: true, instructions: ...}",
            )
        for seat, seat_spec in seats.items():
            ids = [c.id for c in seat_spec.candidates or ()]
            if seat_spec.supervisor == name and rubric.codes and set(rubric.codes) != set(ids):
                raise UserError(
                    f"the supervisor's codes {rubric.codes} are not the candidates of "
                    f"{seat!r} ({ids})",
                    where=f"{where}.codes",
                    fix="leave codes out (they default to the candidates' ids) or list those",
                )


def _load_pools(scenario: Scenario) -> dict[str, list[Member]]:
    """Every pool's members, each checked against the roles that draw from it (raises
    `UserError` before any episode is planned)."""
    pools = {
        name: load_pool(spec, scenario.base_dir, f"{scenario.source}: pools.{name}")
        for name, spec in scenario.pools.items()
    }
    check_pool_sizes(scenario, pools)
    checked: set[str] = set()
    for agent, spec in scenario.agents.items():
        ref = pool_ref(spec.persona)
        if ref is None or repr((spec.role, ref)) in checked:
            continue
        checked.add(repr((spec.role, ref)))
        draws = scenario.pools[ref[0]].draw
        fill = {k: next(iter(w)) for k, w in draws.items()}
        for member in pools[ref[0]]:
            _pool_persona(scenario, agent, Member({**fill, **member.data}, member.source), ref[1])
        for key, weights in draws.items():  # every value a draw can give must fit the role
            where = f"{scenario.source}: pools.{ref[0]}.draw.{key}"
            for value in weights:
                base = next((m.data for m in pools[ref[0]] if key not in m.data), None)
                if base is not None:
                    member = Member({**fill, **base, key: value}, where)
                    _pool_persona(scenario, agent, member, ref[1])
    return pools


def _pool_persona(
    scenario: Scenario, agent: str, member: Member, fields: dict[str, Any]
) -> BaseModel:
    model = get_role(scenario.agents[agent].role).persona_model
    return validate_persona(model, {**member.data, **fields}, member.source)


# -- shipped scenarios ----------------------------------------------------------------------


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
