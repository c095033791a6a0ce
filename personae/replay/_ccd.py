"""Scoring a cognitive model (CCD) against a client's profile.

`score_ccd` compares a submitted `CognitiveModel` with the reference one field by field: the
closed lists (core-belief categories and items, emotions) by Jaccard similarity, the free-text
fields by a rater asked how similar the two texts are (0-10, bounded constrained decoding on the
given backend). Every field is one `judgments` row (rubric `ccd`, judge `ccd:SOURCE`, score on
0..1, `parsed_json` with both texts), its rater call in `llm_calls`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from personae.agents import ClientProfile, Sampling
from personae.agents._ccd import FREE_TEXT, CognitiveModel, jaccard, reference_model
from personae.agents._ccd_lists import CLOSED
from personae.backends import RenderMode, create_backend
from personae.errors import UserError
from personae.graphs import Episode, call_id
from personae.judges import FORMULATION, Dimension, JudgeAgent, JudgePersona, Judgment, Rubric
from personae.store import RunLock, RunLog, TurnLogWriter

#: The rubric of a free-text field's similarity rating.
CCD_RUBRIC = Rubric(
    id="ccd",
    instructions=(
        "Compare a counselor's formulation of one part of a client's cognitive model with the "
        "reference. Rate how much they mean the same thing, not their wording."
    ),
    rationale=120,
    dimensions=[
        Dimension(
            name="similarity",
            scale=(0, 10),
            anchors={0: "unrelated or missing", 5: "partly the same", 10: "the same meaning"},
        )
    ],
)


@dataclass(frozen=True)
class FieldScore:
    """One CCD field scored: `score` on 0..1 (None: the rater gave no valid rating)."""

    field: str
    method: str
    score: float | None
    submitted: list[str] | str
    reference: list[str] | str
    rationale: str = ""
    call: str | None = None


def rater(render_mode: RenderMode = "transcript") -> JudgeAgent:
    """The agent rating free-text fields (temperature 0)."""
    persona = JudgePersona(
        id="ccd", name="CCD rater", description="A CBT supervisor.", rubric=CCD_RUBRIC
    )
    return JudgeAgent("ccd", persona, sampling=Sampling(temperature=0.0), render_mode=render_mode)


async def score_ccd(
    episode: Episode,
    reference: CognitiveModel,
    submitted: CognitiveModel,
    *,
    source: str,
    at: int,
) -> list[FieldScore]:
    """Score `submitted` against `reference`, logging one `judgments` row per field (and the
    rater's calls) through `episode`, whose agent `ccd` is the `rater`. `source` names who
    wrote the CCD (`trainee`, a formulator's name); `at` is the turn calls are logged at."""
    judge = episode.agents["ccd"]
    assert isinstance(judge, JudgeAgent)
    scores = []
    for name in CLOSED:
        mine, theirs = list(getattr(submitted, name)), list(getattr(reference, name))
        scores.append(FieldScore(name, "jaccard", jaccard(mine, theirs), mine, theirs))
    for name in FREE_TEXT:
        scores.append(await _rate(episode, judge, name, reference, submitted, source, at))
    for item in scores:
        _log(episode, item, source)
    return scores


async def _rate(
    episode: Episode,
    judge: JudgeAgent,
    name: str,
    reference: CognitiveModel,
    submitted: CognitiveModel,
    source: str,
    at: int,
) -> FieldScore:
    """A free-text field rated by `judge` (an empty submission scores 0 with no call)."""
    mine, theirs = str(submitted.value(name)), str(reference.value(name))
    if not mine.strip():
        return FieldScore(name, "judge", 0.0, mine, theirs, "nothing submitted")
    suffix = f"ccd-{source}-{name}"
    body = f"Field: {name.replace('_', ' ')}\nReference: {theirs}\nFormulation: {mine}"
    judgment, cid = Judgment(None, False, "no attempt"), None
    for attempt in range(judge.max_attempts):
        cid = call_id(episode.episode_id, at, suffix, attempt)
        options = judge.request_options(
            episode.seed_for(at, suffix, attempt), episode.tags(at, cid, purpose="judge")
        )
        options["max_tokens"] = max(options["max_tokens"], CCD_RUBRIC.max_tokens())
        request = judge._request(
            CCD_RUBRIC,
            "A supervisor compares two formulations of a client's cognitive model.",
            body,
            "How similar is the formulation to the reference?",
            options,
        )
        result, _ = await episode.call("ccd", at, request, purpose="judge")
        judgment = judge.parse(result.text)
        if judgment.valid:
            break
    parsed = judgment.parsed or {}
    rating = parsed.get("similarity")
    score = rating / 10 if isinstance(rating, int) else None
    rationale = str(parsed.get("rationale") or "")
    return FieldScore(name, "judge", score, mine, theirs, rationale, cid)


def _log(episode: Episode, item: FieldScore, source: str) -> None:
    if episode.writer is None:
        return
    episode.writer.upsert(
        "judgments",
        {
            "judgment_id": f"{episode.episode_id}:ccd:{source}:{item.field}",
            "episode_id": episode.episode_id,
            "turn_idx": None,
            "judge": f"ccd:{source}",
            "rubric": CCD_RUBRIC.id,
            "raw": json.dumps({"field": item.field, "score": item.score}),
            "parsed_json": json.dumps(
                {
                    "field": item.field,
                    "method": item.method,
                    "submitted": item.submitted,
                    "reference": item.reference,
                    "rationale": item.rationale,
                }
            ),
            "valid": int(item.score is not None),
            "error": None if item.score is not None else "no valid rating",
            "score": item.score,
            "call_id": item.call,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


@dataclass(frozen=True)
class CCDScores:
    """One submission of one episode, scored field by field."""

    episode_id: str
    source: str
    fields: list[FieldScore]

    @property
    def mean(self) -> float | None:
        """The mean score over the fields that have one."""
        values = [f.score for f in self.fields if f.score is not None]
        return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class _Work:
    episode_id: str
    seed: int
    at: int
    client: str
    reference: CognitiveModel
    submissions: list[tuple[str, CognitiveModel]]


def _client(row: dict[str, Any], where: str) -> tuple[str, ClientProfile]:
    """The agent of an episode whose persona is a client profile, and that profile."""
    for name, data in row["personas"].items():
        try:
            return name, ClientProfile.model_validate(data)
        except ValidationError:
            continue
    raise UserError(
        "the episode has no client profile to score a CCD against",
        where=where,
        fix="score episodes of a counseling scenario (an agent with the client role)",
    )


def _submissions(log: RunLog, episode_id: str) -> list[tuple[str, CognitiveModel]]:
    """The CCDs formulators wrote for an episode (valid verdicts of rubric ccd_formulation)."""
    return [
        (str(j["judge"]), CognitiveModel.model_validate(j["parsed"]))
        for j in log.judgments(episode_id)
        if j["rubric"] == FORMULATION and j["valid"] and j["parsed"]
    ]


def _plan(log: RunLog, episode: str | None, ccd: CognitiveModel | None, source: str) -> list[_Work]:
    rows = (
        [log.episode(episode)]
        if episode is not None
        else [log.episode(e["episode_id"]) for e in log.episodes() if e["status"] == "complete"]
    )
    work = []
    for row in rows:
        where = f"{log.path}: episode {row['episode_id']}"
        client, profile = _client(row, where)
        submissions = [(source, ccd)] if ccd is not None else _submissions(log, row["episode_id"])
        if submissions:
            at = max(int(row["n_turns"] or 1) - 1, 0)
            work.append(_Work(row["episode_id"], int(row["seed"] or 0), at, client,
                              reference_model(profile), submissions))  # fmt: skip
    if not work:
        raise UserError(
            "no CCD to score: no episode here has a formulator's CCD",
            where=str(log.path),
            fix="pass --ccd FILE, or run a scenario with a formulator (role: formulator)",
        )
    return work


def _rater_backend(log: RunLog, client: str, run_id: str) -> tuple[str, dict[str, Any]]:
    """The backend spec the client of a run used (the rater runs on the scenario's model)."""
    from personae.runner import study_of_run  # the runner imports replay: import late

    return study_of_run(log, run_id).backend_specs()[client]


async def ascore_database(
    db: str | Path,
    *,
    episode: str | None = None,
    ccd: CognitiveModel | None = None,
    source: str = "trainee",
    backend: str | None = None,
    trust_backend: bool = False,
) -> list[CCDScores]:
    """Score CCDs of episodes in `db` against their client's profile, into `judgments`.

    Args:
        db: A run database.
        episode: Only this episode (id, prefix or index); default every complete one.
        ccd: The submission (written by `source`); default each formulator's CCD.
        source: Who wrote `ccd` (stored as judge `ccd:SOURCE`).
        backend: The rater's backend spec (default: the one the client's model ran on).
        trust_backend: Send credentials to an endpoint named by the database.

    Raises:
        UserError: no such episode, no client profile, nothing to score, a bad backend.
    """
    path = Path(db)
    with RunLog(path) as log:
        work = _plan(log, episode, ccd, source)
        run_id = str(log.episode(work[0].episode_id)["run_id"])
        spec, options = (backend, {}) if backend else _rater_backend(log, work[0].client, run_id)
    engine = create_backend(spec, options)
    if not (trust_backend or backend):
        engine.withhold_credentials()
    scored: list[CCDScores] = []
    lock = RunLock(path)  # scoring writes the database: no run may write it meanwhile
    lock.acquire()
    try:
        await engine.start()
        async with TurnLogWriter(path) as writer:
            for item in work:
                episode_run = Episode(
                    episode_id=item.episode_id,
                    agents={"ccd": rater(engine.render_mode)},
                    backends={"ccd": engine},
                    writer=writer,
                    run_seed=item.seed,
                )
                for who, submitted in item.submissions:
                    fields = await score_ccd(
                        episode_run, item.reference, submitted, source=who, at=item.at
                    )
                    scored.append(CCDScores(item.episode_id, who, fields))
    finally:
        await engine.close()
        lock.release()
    return scored
