"""Conversation scenarios as a `Study`, and `run()`: the Python API behind `personae run`.

Order of work is chosen so that bad input costs nothing: scenario, imports, graph options,
personas, backend specs and the database file are all checked before an engine starts, and the
run row is written only after the engines are up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from personae._yaml import cli_value
from personae.agents import Agent, Sampling, get_role
from personae.backends import Backend, RenderMode
from personae.errors import UserError
from personae.graphs import Episode, Observer, Seat
from personae.judges import JudgeAgent, SessionSummarizer
from personae.plugins import as_stored, load_imports
from personae.runner._course import session_context, situations_of
from personae.runner._engine import RunResult, execute
from personae.runner._shards import Shard, stored_shard
from personae.runner._study import (
    EpisodeJob,
    OnInterrupt,
    Services,
    Study,
    register_study,
    study_of_run,
)
from personae.scenario import (
    BACKEND_FIELD,
    AgentSpec,
    EpisodePlan,
    Scenario,
    candidate_key,
    condition_graph_options,
    course_client,
    grid_backend_key,
    grid_backends,
    load_scenario,
    parse_scenario,
    plan_episodes,
    plan_shape,
    resolve_scenario_path,
    with_settings,
)
from personae.seeds import check_seed
from personae.store import RunLog, TurnLogWriter
from personae.validation import validate_persona


def build_agents(
    scenario: Scenario,
    personas: Mapping[str, BaseModel],
    backends: Mapping[str, Backend],
    *,
    render: RenderMode | None = None,
    context: Mapping[str, str] | None = None,
) -> dict[str, Agent]:
    """The episode's agents, in scenario order, rendering for their backend's mode (or
    `render`, e.g. `chat` for training exports), each given its `context` text (a course's
    memory and goal; a course's summarizer is told the client's situations)."""
    multi_party = len(scenario.cast().speakers) > 2
    agents: dict[str, Agent] = {}
    for name, spec in scenario.agents.items():
        agents[name] = get_role(spec.role)(
            name,
            personas[name],
            sampling=spec.sampling,
            render_mode=render or scenario.render or backends[name].render_mode,
            label=spec.label,
            window=spec.window,
            multi_party=multi_party,
            audience=spec.audience,
            context=(context or {}).get(name, ""),
        )
    client = course_client(scenario)
    if scenario.course is not None and client is not None:
        summarizer = agents[scenario.course.summary]
        assert isinstance(summarizer, SessionSummarizer)
        summarizer.situations = situations_of(personas[client])
    return agents


def build_seats(
    scenario: Scenario,
    personas: Mapping[str, BaseModel],
    backends: Mapping[str, Backend],
    agents: Mapping[str, Agent],
    *,
    render: RenderMode | None = None,
) -> dict[str, Seat]:
    """The agents whose lines are chosen among candidates: each candidate an agent with the
    seat's name, tag, audience and window, and its own persona, sampling and backend."""
    seats: dict[str, Seat] = {}
    for name, spec in scenario.agents.items():
        if not spec.candidates or spec.supervisor is None:
            continue
        seat = agents[name]
        keys = {c.id: candidate_key(name, c.id) for c in spec.candidates}
        candidates = {
            c.id: get_role(spec.role)(
                name,
                personas[keys[c.id]],
                sampling=spec.candidate_sampling(c),
                render_mode=render or scenario.render or backends[keys[c.id]].render_mode,
                label=seat.label,
                window=spec.window,
                multi_party=seat.multi_party,
                audience=spec.audience,
                context=seat.context,
            )
            for c in spec.candidates
        }
        supervisor = agents[spec.supervisor]
        assert isinstance(supervisor, JudgeAgent)
        seats[name] = Seat(candidates, keys, supervisor)
    return seats


def build_observers(scenario: Scenario, agents: Mapping[str, Agent]) -> list[Observer]:
    """The judges of an episode, bound to the agents they watch."""
    observers = []
    for name in scenario.cast().observers:
        spec, judge = scenario.agents[name], agents[name]
        assert isinstance(judge, JudgeAgent)
        route = tuple(spec.route_to) if spec.route_to else None
        observers.append(Observer(judge, scenario.watched(name), spec.when, route))
    return observers


class ConversationStudy(Study):
    """A conversation scenario: its planned episodes, each a graph of the scenario's kind."""

    kind = "scenario"

    def __init__(self, scenario: Scenario, *, plan_limit: int | None = None) -> None:
        self.scenario = scenario
        self.plan_limit = plan_limit
        self.name = scenario.name
        self.seed = scenario.seed
        self.base_dir = scenario.base_dir
        self._plans: list[EpisodePlan] | None = None
        #: A course's session context per episode id, set by `prepare` before its stage.
        self._contexts: dict[str, dict[str, str]] = {}

    def spec_json(self) -> str:
        return self.scenario.model_dump_json()

    def backend_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        s = self.scenario
        # per-agent specs get none of the scenario's backend_options (they belong to its backend)
        specs = {
            name: (a.backend, {}) if a.backend else (s.backend, dict(s.backend_options))
            for name, a in s.agents.items()
        }
        for key, (seat, candidate) in s.candidates().items():  # a candidate's, else its seat's
            specs[key] = (candidate.backend, {}) if candidate.backend else specs[seat]
        for agent, values in grid_backends(s).items():
            for spec in values:
                specs[grid_backend_key(agent, spec)] = (spec, {})
        return specs

    def plan(self) -> list[EpisodePlan]:
        if self._plans is None:
            self._plans = plan_episodes(self.scenario, plan_limit=self.plan_limit)
        return self._plans

    def episode_row(self, plan: EpisodePlan) -> dict[str, Any]:
        row = super().episode_row(plan)
        row["condition_json"] = json.dumps({**plan.condition, "repeat": plan.repeat})
        row["context_json"] = json.dumps(dict(plan.context)) if plan.context else None
        return row

    async def prepare(
        self,
        stage: int,
        outcomes: Mapping[str, Any],
        writer: TurnLogWriter | None,
        run_id: str = "",
    ) -> None:
        """A course's session `stage + 1`: each course's session is given the summaries of its
        earlier sessions (from `outcomes`, so a resumed run reads them back from the store),
        stored with it in `episodes.context_json` before it starts."""
        if self.scenario.course is None:
            return
        for plan in self.plan():
            if plan.stage != stage or plan.episode_id in outcomes:
                continue
            context = session_context(self.scenario, plan, outcomes)
            self._contexts[plan.episode_id] = context
            if writer is not None:
                writer.upsert(
                    "episodes",
                    {"episode_id": plan.episode_id, "context_json": json.dumps(context)},
                )

    def job(self, plan: EpisodePlan, services: Services) -> EpisodeJob:
        scenario = self.scenario
        backends = dict(services.backends)
        for agent, condition in plan.condition.items():  # the grid's backend for this episode
            spec = condition.get(BACKEND_FIELD) if isinstance(condition, dict) else None
            if agent in scenario.agents and spec is not None:
                backends[agent] = services.backends[grid_backend_key(agent, spec)]
        # a logged episode is given what it was given then; a live one what `prepare` built
        context = plan.context or self._contexts.get(plan.episode_id, {})
        agents = build_agents(scenario, plan.personas, backends, context=context)
        seats = build_seats(scenario, plan.personas, backends, agents)
        episode = Episode(
            episode_id=plan.episode_id,
            agents=agents,
            backends=backends,
            writer=services.writer,
            run_seed=plan.seed,
            stop_when=services.stop_when,
            cache=services.cache,
            observers=build_observers(scenario, agents),
            on_turn=services.on_turn,
            lineage=plan.lineage or plan.episode_id,
            seats=seats,
        )
        kind = scenario.graph_kind(condition_graph_options(scenario, plan.condition))
        return EpisodeJob(kind.graph, episode, kind.input(), kind.config())

    def restore(self, row: dict[str, Any]) -> EpisodePlan:
        personas: dict[str, BaseModel] = {}
        seats = {
            key: self.scenario.agents[seat] for key, (seat, _) in self.scenario.candidates().items()
        }
        for name, spec in {**self.scenario.agents, **seats}.items():
            where = f"episode {row['episode_id']}, agent {name!r}"
            data = row["personas"].get(name)
            if not isinstance(data, dict):
                raise UserError(
                    "no stored persona for this agent",
                    where=where,
                    fix="the episode row is incomplete; re-run the scenario",
                )
            personas[name] = validate_persona(
                get_role(spec.role, where=where).persona_model, data, where
            )
        condition = dict(row["condition"])
        repeat = int(condition.pop("repeat", 0) or 0)
        return EpisodePlan(
            index=int(row.get("idx") or 0),
            repeat=repeat,
            episode_id=row["episode_id"],
            condition=condition,
            personas=personas,
            stage=int(row.get("stage") or 0),
            seed=int(row.get("seed") or 0),
            context=json.loads(row.get("context_json") or "{}"),
        )

    def settings(
        self, plan: EpisodePlan, items: Sequence[str]
    ) -> tuple[Study, EpisodePlan, dict[str, dict[str, Any]]]:
        """`AGENT.sampling.FIELD=VALUE` and `AGENT.FIELD=VALUE` (a persona field) applied."""
        agents = dict(self.scenario.agents)
        personas = dict(plan.personas)
        changes: dict[str, dict[str, Any]] = {}
        for item in items:
            key, eq, raw = item.partition("=")
            parts = key.strip().split(".")
            if not eq or len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "sampling"):
                raise UserError(
                    "expected AGENT.FIELD=VALUE or AGENT.sampling.FIELD=VALUE",
                    where=f"--set {item}",
                    fix="e.g. --set client.style=upset --set counselor.sampling.temperature=0.2",
                )
            agent, field = parts[0], parts[-1]
            if agent not in agents:
                raise UserError(
                    f"unknown agent {agent!r}",
                    where=f"--set {item}",
                    fix=f"agents: {', '.join(agents)}",
                )
            value = cli_value(raw.strip())
            model: type[BaseModel]
            current: BaseModel
            if len(parts) == 3:
                model, current = Sampling, agents[agent].sampling
            else:
                model, current = type(personas[agent]), personas[agent]
            if field not in model.model_fields:
                close = difflib.get_close_matches(field, list(model.model_fields), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserError(
                    f"unknown {'sampling' if len(parts) == 3 else 'persona'} field {field!r}",
                    where=f"--set {item}",
                    fix=f"{hint}fields: {', '.join(model.model_fields)}",
                )
            try:
                updated = model.model_validate({**current.model_dump(), field: value})
            except ValidationError as exc:
                raise UserError(
                    f"bad value: {exc.errors()[0]['msg']}",
                    where=f"--set {item}",
                    fix="fix the value",
                ) from None
            recorded = updated.model_dump(mode="json")[field]
            if len(parts) == 3:
                assert isinstance(updated, Sampling)
                agents[agent] = agents[agent].model_copy(update={"sampling": updated})
                changes.setdefault(agent, {})[f"sampling.{field}"] = recorded
            else:
                personas[agent] = updated
                for key, (seat, candidate) in self.scenario.candidates().items():
                    if seat == agent and candidate.persona is None:  # it speaks as the agent
                        personas[key] = updated
                changes.setdefault(agent, {})[field] = recorded
        study = ConversationStudy(evolve(self.scenario, agents=agents))
        plan = dataclasses.replace(plan, personas=personas)
        return study, plan, changes

    def with_backend(self, backend: str) -> Study:
        return ConversationStudy(with_backend(self.scenario, backend))


def evolve(scenario: Scenario, **update: Any) -> Scenario:
    """A copy of `scenario` with fields replaced (its graph kind is rebuilt on first use)."""
    copy = scenario.model_copy(update=update)
    copy._kind = None
    return copy


def with_backend(scenario: Scenario, backend: str) -> Scenario:
    """`scenario` with every agent on `backend` (per-agent specs and options dropped).

    Raises:
        UserError: the grid varies an agent's backend (one backend would erase that axis).
    """
    if varied := grid_backends(scenario):
        agent = next(iter(varied))
        raise UserError(
            f"the grid varies agents' backends ({agent}.{BACKEND_FIELD}), so one backend "
            "for every agent would erase that condition",
            where=f"{scenario.source}: grid.{agent}.{BACKEND_FIELD}",
            fix="drop --backend, or list the backends in the grid",
        )
    return evolve(
        scenario,
        backend=backend,
        backend_options={},
        agents={n: _without_backends(a) for n, a in scenario.agents.items()},
    )


def _without_backends(spec: AgentSpec) -> AgentSpec:
    """`spec` with no backend of its own, nor for its candidates."""
    candidates = spec.candidates and [
        c.model_copy(update={"backend": None}) for c in spec.candidates
    ]
    return spec.model_copy(update={"backend": None, "candidates": candidates})


@register_study("scenario")
def _load(spec: dict[str, Any], base_dir: Path) -> Study:
    return ConversationStudy(
        parse_scenario(
            spec,
            source=f"stored scenario {spec.get('name')!r}",
            base_dir=base_dir,
            import_code=False,
        )
    )


def _effective_scenario(
    scenario: str | Path | Scenario | None,
    *,
    episodes: int | None = None,
    backend: str | None = None,
    seed: int | None = None,
    repeats: int | None = None,
    settings: Sequence[str] = (),
    notify: Callable[[str], None] | None = None,
) -> Scenario:
    """The scenario with CLI overrides folded in, so the stored spec reproduces the run:
    `settings` (`--set KEY=VALUE`, before validation), then `seed`, `repeats`, `episodes` and
    `backend`. An `episodes` cap above what the scenario plans is said through `notify`."""
    if scenario is None:
        raise UserError("no scenario given", fix="pass a scenario file or --resume DB")
    if isinstance(scenario, Scenario):
        spec = with_settings(scenario, settings)
    else:
        spec = load_scenario(resolve_scenario_path(scenario), settings=settings)
    update: dict[str, Any] = {}
    if seed is not None:
        update["seed"] = check_seed(seed, "seed")
    if repeats is not None:
        if repeats < 1:
            raise UserError(
                f"repeats must be 1 or more, got {repeats}", where="--repeats", fix="e.g. 2"
            )
        update["repeats"] = repeats
    if episodes is not None:
        update["episodes"] = episodes
    if update:
        spec = evolve(spec, **update)
    if episodes is not None and notify is not None:
        conditions, times = plan_shape(spec)
        if episodes > conditions * times:
            notify(
                f"--episodes {episodes}: the scenario plans {conditions * times} episodes "
                f"({_count(conditions, 'condition')} × {_count(times, 'repeat')}); running "  # noqa: RUF001
                f"{conditions * times} — raise repeats or pass --repeats N to run more"
            )
    return with_backend(spec, backend) if backend is not None else spec


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def resumed_study(db: Path) -> Study:
    """The study of the newest run in `db`, for `--resume`."""
    with RunLog(db) as log:
        runs = log.runs()
        if not runs:
            raise UserError(
                "the database holds no run to resume",
                where=str(db),
                fix="start a run with 'personae run SCENARIO --db DB'",
            )
        return study_of_run(log, runs[-1]["run_id"])


async def arun(
    scenario: str | Path | Scenario | None = None,
    *,
    episodes: int | None = None,
    backend: str | Backend | None = None,
    db: str | Path | None = None,
    seed: int | None = None,
    concurrency: int | None = None,
    progress: bool = False,
    stop_when: Any = None,
    cache: bool | str | Path = False,
    resume: str | Path | None = None,
    imports: Sequence[str] = (),
    announce: Any = None,
    plan_limit: int | None = None,
    trust_backend: bool = False,
    notify: Any = None,
    repeats: int | None = None,
    settings: Sequence[str] = (),
    shard: Shard | str | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    on_interrupt: OnInterrupt | None = None,
) -> RunResult:
    """Async form of `run` (`on_interrupt`: see `execute`)."""
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    _check_executor(executor, address, workers, shard, backend)
    load_imports(imports, where="--import")
    cli_imports = as_stored(imports)
    instance = backend if isinstance(backend, Backend) else None
    spec_string = instance.backend_id if instance is not None else backend
    assert spec_string is None or isinstance(spec_string, str)
    study: Study
    changes: dict[str, Any] = {"episodes": episodes, "seed": seed, "repeats": repeats,
                               "settings": settings, "notify": notify}  # fmt: skip
    if resume is not None:
        study = resumed_study(Path(resume))
        if executor == "local":
            shard = shard or stored_shard(Path(resume))
        if spec_string is not None and instance is None:
            study = study.with_backend(spec_string)
        if isinstance(study, ConversationStudy):
            updated = _effective_scenario(study.scenario, **changes)
            study = ConversationStudy(updated, plan_limit=plan_limit)
        elif settings or repeats is not None:
            raise UserError(
                "--set and --repeats apply to conversation scenarios, not to this run's "
                f"{study.kind} study",
                where="--resume",
                fix="resume it without them",
            )
    else:
        override = spec_string if instance is None else None
        updated = _effective_scenario(scenario, backend=override, **changes)
        if cli_imports:  # recorded, so a replay's error can name them
            known = updated.imports
            updated = evolve(updated, imports=[*known, *(i for i in cli_imports if i not in known)])
        study = ConversationStudy(updated, plan_limit=plan_limit)
    common: dict[str, Any] = {
        "db": Path(resume) if resume is not None else db,
        "concurrency": concurrency,
        "progress": progress,
        "stop_when": stop_when,
        "cache": cache,
        "announce": announce,
        "trusted": trust_backend or backend is not None,
        "notify": notify,
    }
    if executor == "ray":
        from personae.runner._ray import execute_on_ray

        return await execute_on_ray(
            study, workers=workers, address=address, plan_limit=plan_limit, **common
        )
    return await execute(study, backend=instance, shard=shard, on_interrupt=on_interrupt, **common)


def _check_executor(
    executor: str,
    address: str | None,
    workers: int | None,
    shard: Shard | None,
    backend: str | Backend | None,
) -> None:
    """Reject executor options that do not go together (before anything is read or written)."""
    if executor not in ("local", "ray"):
        raise UserError(
            f"unknown executor {executor!r}", where="--executor", fix="use local or ray"
        )
    if executor == "local":
        if address is not None or workers is not None:
            option = "--address" if address is not None else "--workers"
            raise UserError("an option of the ray executor", where=option, fix="add --executor ray")
        return
    if shard is not None:
        raise UserError(
            "--shard and --executor ray do not go together: the ray executor splits the plan "
            "into shards itself",
            where=f"--shard {shard.label}",
            fix="drop --shard, and set the number of shards with --workers N",
        )
    if isinstance(backend, Backend):
        raise UserError(
            "a backend instance cannot be sent to Ray workers",
            where="--executor ray",
            fix="give a backend spec instead (e.g. openai:http://host:8000/v1)",
        )


def run(scenario: str | Path | Scenario | None = None, **options: Any) -> RunResult:
    """Run a scenario and log every turn to SQLite.

    Args:
        scenario: A scenario file, the name of a shipped scenario, or a `Scenario`.
        **options: `episodes` (cap), `backend` (a spec overriding every agent's, or a
            `Backend` instance the caller owns, e.g. an `AutoGenBackend`), `db` (path;
            default `logs/<scenario>-<time>.db`), `seed`, `concurrency` (episodes in flight;
            default: the backend's parallelism), `progress` (show a progress bar), `stop_when`
            (predicate on the history that ends an episode), `cache` (True or a path: reuse
            identical requests from a response-cache database, by default
            `response_cache.db` next to the run database), `resume` (a database: rerun its
            newest run — of any kind — into it; `scenario` may then be None), `imports`
            (Python files or modules to import first). Rerunning into a database skips
            complete episodes and restarts unfinished ones from turn 0. `plan_limit`: most
            turns (episodes times max_turns) a plan may hold (default 10,000,000).
            `trust_backend`: send credentials (e.g. `$OPENAI_API_KEY`) to endpoints named by
            the scenario file or the database; without it only a `backend` given here gets
            them. `repeats`: episodes per condition (overrides the scenario's). `settings`:
            `KEY.PATH=VALUE` strings overriding scenario fields before validation (`run
            --set`), e.g. `graph.max_turns=4`; they are part of the stored spec. `notify`: called
            with one-line notes (an `episodes` cap above the plan, credentials withheld).
            `shard`: a `Shard` or `"K/N"`: run only shard K of N of the plan (episodes
            split by a hash of their id; merge the shard databases with `personae merge`); a
            database every run of which ran one shard resumes as that shard.
            `executor`: `"local"` (this process) or `"ray"`: the plan split into `workers`
            shards, each run by a Ray actor into `DB.shards/K-of-N.db` and merged into `db`
            (`address`: a Ray cluster; default: start Ray on this machine).

    Returns:
        A `RunResult` with counts, tokens and the database path.

    Raises:
        UserError: bad scenario, persona, backend spec, model path or database file; raised
            before any run row is written.
    """
    return asyncio.run(arun(scenario, **options))
