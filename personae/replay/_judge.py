"""Judging a finished database: add a judge's verdicts to episodes that already ran.

`judge_database(db, "empathy.yaml")` reads a judge spec — the same agent spec a scenario uses
for an observer (role, persona with its rubric, `observes`, `when`, sampling, backend) — and
applies it to every chosen episode: after each line of a watched agent (`when: turn`) or once
per episode (`when: end`), with exactly the prompt and bounded structured output a live judge
would use (the same `Episode` code), seeing what an observer sees. Verdicts go into
`judgments` and their model calls into `llm_calls`; judging again with the same judge name
replaces its earlier verdicts. Nothing else in the database changes. A judge file:

    name: empathy_rater        # the judge's agent name in the database
    backend: embedded          # (--backend overrides)
    judge:
      role: judge
      observes: [helper]       # agent names in the judged episodes ('all': every speaker)
      when: turn
      persona: {rubric: {id: empathy, dimensions: [{name: empathy, scale: [1, 5]}]}}
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personae._pools import load_pool, pool_ref
from personae._progress import RunProgress, progress_every, watch_backend
from personae.agents import Agent, Utterance, default_label, get_role
from personae.backends import create_backend
from personae.errors import UserError
from personae.graphs import Episode, Observer
from personae.judges import JudgeAgent, Judgment, Rubric, get_judge
from personae.plugins import load_imports
from personae.scenario import AgentSpec, PoolSpec, _read_yaml
from personae.seeds import Seed, derive_seed
from personae.store import RunLock, RunLog, Turn, TurnLogWriter, open_database
from personae.validation import validate_persona, validation_error

if TYPE_CHECKING:
    from personae.export import EpisodeFilter


class JudgeSpec(BaseModel):
    """A judge file: one observer, applied to a finished database."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The judge's agent name.")
    description: str = ""
    imports: list[str] = Field(default_factory=list)
    backend: str = "embedded"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    render: Literal["transcript", "chat"] | None = None
    seed: Seed = 0
    pools: dict[str, PoolSpec] = Field(
        default_factory=dict, description="Persona pools (persona: {pool: NAME, ...})."
    )
    judge: AgentSpec

    def names(self) -> list[str]:
        """The judges' agent names: NAME, or NAME_1..NAME_N with `count: N`."""
        count = self.judge.count
        return [self.name] if count is None else [f"{self.name}_{i}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class JudgeResult:
    """What judging a database did.

    Attributes:
        episodes: Episodes judged.
        judgments: Verdicts written.
        invalid: Verdicts that did not parse (recorded as invalid).
        mean_score: Mean score of the valid verdicts (None for codes or none valid).
    """

    episodes: int
    judgments: int
    invalid: int
    mean_score: float | None

    def line(self) -> str:
        """One-line summary."""
        score = f", mean score {self.mean_score:.2f}" if self.mean_score is not None else ""
        bad = f" ({self.invalid} did not parse)" if self.invalid else ""
        return f"{self.judgments} judgments{bad} on {self.episodes} episodes{score}"


def load_judge_spec(path: str | Path) -> JudgeSpec:
    """Read and validate a judge file (raises `UserError`)."""
    path = Path(path)
    data = _read_yaml(path, "judge file")
    if not isinstance(data, dict):
        raise UserError("a judge file must be a YAML mapping", where=str(path),
                        fix="see the README's judges section")  # fmt: skip
    imports = data.get("imports") or []
    if isinstance(imports, list):
        load_imports([str(i) for i in imports], base_dir=path.resolve().parent,
                     where=f"{path}: imports")  # fmt: skip
    try:
        spec = JudgeSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, str(path), JudgeSpec) from None
    cls = get_judge(spec.judge.role, where=f"{path}: judge.role")
    if not spec.judge.observes:
        raise UserError("the judge observes nobody", where=f"{path}: judge.observes",
                        fix="list the agents it rates, e.g. observes: [helper]")  # fmt: skip
    if spec.judge.candidates is not None or spec.judge.supervisor is not None:
        raise UserError("candidates and a supervisor belong to an agent that takes turns",
                        where=f"{path}: judge", fix="remove them from the judge")  # fmt: skip
    if spec.judge.route_to is not None:
        raise UserError("route_to cannot apply to a finished run: its lines are all said",
                        where=f"{path}: judge.route_to",
                        fix="remove it (a scenario's own judges can route verdicts)")  # fmt: skip
    persona = spec.judge.persona
    if (ref := pool_ref(persona)) is not None:
        _check_pool(spec, cls, ref, path)
        return spec
    if spec.judge.count is not None:
        raise UserError("count needs a persona pool: every judge needs its own persona",
                        where=f"{path}: judge.count",
                        fix="add pools: and persona: {pool: NAME}, or remove count")  # fmt: skip
    if isinstance(persona, str):
        file = Path(persona) if Path(persona).is_absolute() else path.resolve().parent / persona
        loaded = _read_yaml(file, "judge persona file")
        if not isinstance(loaded, dict):
            raise UserError("a persona file must be a YAML mapping", where=str(file))
        persona = loaded
    checked = validate_persona(cls.persona_model, persona, f"{path}: judge.persona")
    _check_codes(checked, f"{path}: judge.persona.rubric")
    spec.judge = spec.judge.model_copy(update={"persona": checked.model_dump(mode="json")})
    return spec


def _check_codes(persona: BaseModel, where: str) -> None:
    """A choice rubric needs its codes here: no candidates give them."""
    rubric = getattr(persona, "rubric", None)
    if isinstance(rubric, Rubric) and rubric.kind == "choice" and not rubric.codes:
        raise UserError("a choice rubric needs codes (only a supervisor's come from candidates)",
                        where=where, fix="add codes: [A, B, ...]")  # fmt: skip


def _check_pool(
    spec: JudgeSpec, cls: type[JudgeAgent], ref: tuple[str, dict[str, Any]], path: Path
) -> None:
    """Check that the pool exists, holds enough personas and that each fits the judge's role;
    the members are kept in the spec (inline), so judging reads no other file."""
    name, fields = ref
    if name not in spec.pools:
        raise UserError(f"the judge draws from an unknown pool {name!r}",
                        where=f"{path}: judge.persona.pool",
                        fix=f"pools: {', '.join(spec.pools) or '(none: add pools:)'}")  # fmt: skip
    members = load_pool(spec.pools[name], path.resolve().parent, f"{path}: pools.{name}")
    if len(spec.names()) > len(members):
        raise UserError(f"{len(spec.names())} judges draw from pool {name!r}, which has only "
                        f"{len(members)} personas", where=f"{path}: judge.count",
                        fix="lower the count or add personas")  # fmt: skip
    for m in members:
        _check_codes(validate_persona(cls.persona_model, {**m.data, **fields}, m.source), m.source)
    spec.pools[name] = spec.pools[name].model_copy(update={"personas": [m.data for m in members]})


def _judges(spec: JudgeSpec, episode_id: str) -> dict[str, BaseModel]:
    """The persona of each judge for one episode (drawn from the pool by the episode's id)."""
    cls = get_judge(spec.judge.role)
    ref = pool_ref(spec.judge.persona)
    if ref is None:
        return {spec.name: cls.persona_model.model_validate(spec.judge.persona)}
    pool = spec.pools[ref[0]]
    members = load_pool(pool, Path("."), "pool")
    rng = random.Random(derive_seed(spec.seed, episode_id, 0, "pools"))
    picks = rng.sample(members, len(spec.names()))
    return {
        name: cls.persona_model.model_validate({**m.data, **ref[1]})
        for name, m in zip(spec.names(), picks, strict=True)
    }


async def ajudge_database(
    db: str | Path,
    judge: str | Path | JudgeSpec,
    *,
    backend: str | None = None,
    chosen: EpisodeFilter | None = None,
    concurrency: int | None = None,
    progress: bool = False,
    trust_backend: bool = False,
    notify: Callable[[str], None] | None = None,
) -> JudgeResult:
    """Async form of `judge_database`."""
    from personae.export import EpisodeFilter, select_episodes  # export reads replay: no cycle

    every = progress_every() if progress else None
    spec = judge if isinstance(judge, JudgeSpec) else load_judge_spec(judge)
    path = Path(db)
    with RunLog(path) as log:
        episodes = select_episodes(log, chosen or EpisodeFilter())
        histories = {e["episode_id"]: log.turns(e["episode_id"]) for e in episodes}
        labels = _labels(log, episodes)
    observes = spec.judge.observes
    _check_observed(observes, histories, judge)
    engine = create_backend(backend or spec.backend, {} if backend else spec.backend_options)
    held = None if trust_backend or backend else engine.withhold_credentials()
    if held and notify is not None:
        notify(
            f"note: {held} is not sent to {spec.backend.partition('?')[0]}: the endpoint "
            "comes from the judge file (pass --trust-backend, or give it again with --backend)"
        )
    cls = get_judge(spec.judge.role)
    lock = RunLock(path)  # judging writes the database: no run may write it meanwhile
    lock.acquire()
    made: list[tuple[bool, float | None]] = []
    try:
        for name in spec.names():
            _forget(path, name, list(histories))
        await engine.start()
        again = f"personae judge {path} JUDGE.yaml"
        async with TurnLogWriter(path, resume_command=again) as writer:
            gate = asyncio.Semaphore(concurrency or engine.parallelism)
            with RunProgress(len(histories), progress, steps="judgments", every=every) as bar:
                watcher = asyncio.ensure_future(watch_backend(bar, engine.backend_id))

                async def one(episode_id: str, turns: Sequence[Turn]) -> None:
                    async with gate:
                        speakers = {t.agent for t in turns}
                        watched = frozenset(speakers if observes == "all" else observes or ())
                        judges: dict[str, Agent] = {}
                        for name, persona in _judges(spec, episode_id).items():
                            judges[name] = cls(
                                name,
                                persona,
                                sampling=spec.judge.sampling,
                                render_mode=spec.render or engine.render_mode,
                                label=spec.judge.label,
                                window=spec.judge.window,
                            )
                        observers = []
                        for agent in judges.values():
                            assert isinstance(agent, JudgeAgent)
                            observers.append(Observer(agent, watched, spec.judge.when))
                        episode = Episode(
                            episode_id=episode_id,
                            agents=judges,
                            backends=dict.fromkeys(judges, engine),
                            writer=writer,
                            run_seed=spec.seed,
                            observers=observers,
                            watch=bar.watch,
                            warn=bar.warn,
                        )
                        tokens = [0]

                        def verdict(judgment: Judgment) -> None:
                            made.append((judgment.valid, judgment.score))
                            bar.turn(episode.completion_tokens - tokens[0])
                            tokens[0] = episode.completion_tokens

                        await _judge_episode(episode, turns, labels[episode_id], verdict)
                        bar.episode_done(False)

                try:
                    await asyncio.gather(*(one(e, t) for e, t in histories.items()))
                finally:
                    watcher.cancel()
    finally:
        await engine.close()
        lock.release()
    scores = [s for ok, s in made if ok and s is not None]
    return JudgeResult(
        episodes=len(histories),
        judgments=len(made),
        invalid=sum(not ok for ok, _ in made),
        mean_score=sum(scores) / len(scores) if scores else None,
    )


def _check_observed(
    observes: Sequence[str] | str | None,
    histories: dict[str, list[Turn]],
    judge: str | Path | JudgeSpec,
) -> None:
    """Raise `UserError` when the judge watches an agent who speaks in none of the episodes
    (a typo would otherwise judge nothing and say "0 judgments")."""
    if observes == "all" or not histories:
        return
    present = {t.agent for turns in histories.values() for t in turns}
    for name in observes or ():
        if name not in present:
            source = "" if isinstance(judge, JudgeSpec) else f"{judge}: "
            raise UserError(
                f"the judge observes {name!r}, who speaks in none of the chosen episodes",
                where=f"{source}judge.observes",
                fix=f"agents here: {', '.join(sorted(present))}",
            )


def _forget(path: Path, judge: str, episode_ids: Sequence[str]) -> None:
    """Delete a judge's earlier verdicts and calls on these episodes (judging again)."""
    database = open_database(path, create=False)
    try:
        with database.conn:
            for episode_id in episode_ids:
                database.execute(
                    "DELETE FROM judgments WHERE episode_id = ? AND judge = ?", [episode_id, judge]
                )
                database.execute(
                    "DELETE FROM llm_calls WHERE episode_id = ? AND agent = ? "
                    "AND purpose = 'judge'",
                    [episode_id, judge],
                )
    finally:
        database.conn.close()


async def _judge_episode(
    episode: Episode,
    turns: Sequence[Turn],
    labels: dict[str, str],
    on_verdict: Callable[[Judgment], None],
) -> None:
    """The observers' verdicts on a logged episode, exactly as live judges would make them,
    each handed to `on_verdict` as it is made (the judges of one line rate it concurrently)."""
    episode.next_turn = len(turns)  # a verdict on the whole episode is logged at its last turn
    history = [
        Utterance(t.agent, labels.get(t.agent) or default_label(t.agent), t.text, t.audience,
                  t.kind)  # type: ignore[arg-type]
        for t in turns
    ]  # fmt: skip
    for i, t in enumerate(turns):
        lines = [o for o in episode.observers if o.when == "turn" and t.agent in o.watches]
        if t.kind == "line" and lines:
            prefix = history[: i + 1]
            for judgment in await asyncio.gather(*(episode.judge(o, t.idx, prefix) for o in lines)):
                on_verdict(judgment)
    for observer in episode.observers:
        if observer.when == "end":
            on_verdict(await episode.judge(observer, None, history))


def _labels(log: RunLog, episodes: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Speaker tags of every judged episode's agents, as its run showed them: the scenario's
    labels, or the ones a role takes from the episode's persona (e.g. a username)."""
    from personae.runner import ConversationStudy, study_of_run

    studies: dict[str, ConversationStudy | None] = {}
    labels: dict[str, dict[str, str]] = {}
    for row in episodes:
        run_id = row["run_id"]
        if run_id not in studies:
            try:
                study = study_of_run(log, run_id)
            except UserError:
                study = None  # a run whose roles are not importable here: default tags
            studies[run_id] = study if isinstance(study, ConversationStudy) else None
        study = studies[run_id]
        labels[row["episode_id"]] = {}
        if study is None:
            continue
        scenario = study.scenario
        decoded = {
            **row,
            "condition": json.loads(row.get("condition_json") or "{}"),
            "personas": json.loads(row.get("personas_json") or "{}"),
        }
        try:
            plan = study.restore(decoded)
        except UserError:
            labels[row["episode_id"]] = dict(scenario.cast().labels)
            continue
        for name, spec in scenario.agents.items():
            agent = get_role(spec.role)(name, plan.personas[name], label=spec.label)
            labels[row["episode_id"]][name] = agent.label
    return labels


def judge_database(db: str | Path, judge: str | Path | JudgeSpec, **options: Any) -> JudgeResult:
    """Apply a judge to the episodes of a finished database.

    Args:
        db: The run database (verdicts are added to it).
        judge: A judge file (see the module docstring) or a `JudgeSpec`.
        **options: `backend` (a spec overriding the file's), `chosen` (an `EpisodeFilter`;
            default every complete episode), `concurrency`, `progress`, `trust_backend`
            (send credentials to the endpoint the file names), `notify` (one-line notes).

    Returns:
        A `JudgeResult` with counts and the mean score.

    Raises:
        UserError: a bad judge file, unknown judge role, bad backend spec or database.
    """
    return asyncio.run(ajudge_database(db, judge, **options))
