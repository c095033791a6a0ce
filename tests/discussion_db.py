"""Synthetic facilitated-discussion databases with planted values, for the analysis tests.

They are written as a discussion run writes them: the store creates the schema
(`open_database`) and the run's one `TurnLogWriter` queues the rows. Each discussion has two
seed comments (rated, so a seed that leaks into a mean shows), then its turns.

`planted_discussions()` plants, per strategy (6 discussions each, 12 comments a discussion, the
troll `participant_1` writing 3 of them, 1 point more toxic and 1 point less argued):

| strategy | toxicity (others / troll) | mean | argument quality mean | intervention rate |
|---|---|---|---|---|
| none | 3 / 4 | 3.25 | 1.75 | no facilitator turn |
| rules_only | 2 / 3 | 2.25 | 3.75 | 2 lines, 2 passes: 0.5 |
| moderation_game | 3, then 2 in the second half / +1 | 2.75 | 2.75 | 3 lines, 1 pass: 0.75 |

Each discussion's toxicity is shifted by +1, -1, +1, -1, 0, 0 (repeats 0-5): a random intercept
per discussion that leaves the strategy means as planted. `annotator_1` and `annotator_2` give
the planted ratings (they agree exactly); `annotator_3` gives each comment the planted ratings of
a random comment of the same half of the discussion (random, yet its mean over each half is the
planted mean). In the first `none` discussion `annotator_2`'s verdicts on the first four comments
are invalid (their planted mean is the discussion's, so the means stay exact).
`toxicity_baseline` scores (toxicity - 1) / 4.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personae.judges import BASELINE_RUBRIC
from personae.store import TurnLogWriter, open_database

ANNOTATORS: dict[str, dict[str, Any]] = {
    "annotator_1": {"id": "a1", "name": "Ines", "age": 34, "sex": "female",
                    "education": "master's degree", "occupation": "editor",
                    "political_leaning": "centre-left", "description": "An editor."},
    "annotator_2": {"id": "a2", "name": "Tomas", "age": 52, "sex": "male",
                    "education": "secondary school", "occupation": "driver",
                    "political_leaning": "right", "description": "A driver."},
    "annotator_3": {"id": "a3", "name": "Ade", "age": 27, "sex": "non-binary",
                    "education": "PhD", "occupation": "researcher",
                    "political_leaning": "left", "description": "A researcher."},
}  # fmt: skip
RUBRIC = {"id": "discussion_v1", "dimensions": [{"name": "toxicity"}, {"name": "argument_quality"}]}


@dataclass
class Line:
    """One turn: `kind` line, pass or seed; ratings per annotator (None: an invalid verdict)."""

    agent: str
    text: str = ""
    kind: str = "line"
    ratings: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    baseline: float | None = None


@dataclass
class Discussion:
    """One discussion episode: its strategy, the participants' intents and its turns."""

    strategy: str
    intents: dict[str, str]
    lines: list[Line]
    facilitator: bool = True


def _participant(agent: str, intent: str) -> dict[str, Any]:
    n = int(agent.rsplit("_", 1)[1])
    return {
        "id": f"p{n:02d}", "username": f"user{n}", "age": 20 + n, "sex": "female",
        "education": "bachelor's degree", "occupation": "clerk", "political_leaning": "centre",
        "personality": ["curious"], "special_instructions": "Short comments.", "intent": intent,
    }  # fmt: skip


def _personas(d: Discussion) -> dict[str, Any]:
    personas: dict[str, Any] = {a: _participant(a, i) for a, i in d.intents.items()}
    if d.facilitator:
        personas["facilitator"] = {"id": "fac", "username": "mod", "strategy": d.strategy}
    for name, persona in ANNOTATORS.items():
        personas[name] = {**persona, "rubric": RUBRIC}
    personas["toxicity_baseline"] = {"id": "baseline"}
    return personas


def _role(agent: str) -> str:
    """`facilitator`, `participant` for `participant_N`, else the agent's name (e.g. client)."""
    return "participant" if agent.startswith("participant_") else agent


def _rows(run_id: str, index: int, d: Discussion) -> list[tuple[str, str, dict[str, Any]]]:
    episode = f"{run_id}-ep{index:03d}-{d.strategy}"
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("upsert", "episodes", {
            "episode_id": episode, "run_id": run_id, "idx": index, "scenario": "discussion",
            "condition_json": json.dumps({"facilitator": {"strategy": d.strategy},
                                          "repeat": index}),
            "personas_json": json.dumps(_personas(d)), "seed": index, "status": "complete",
            "end_reason": "max_turns", "n_turns": len(d.lines), "stage": 0,
        }),
    ]  # fmt: skip
    for idx, line in enumerate(d.lines):
        rows.append(("insert", "turns", {
            "episode_id": episode, "idx": idx, "agent": line.agent, "role": _role(line.agent),
            "kind": line.kind, "text": line.text,
            "call_id": None if line.kind == "seed" else f"{episode}-{idx:04d}",
        }))  # fmt: skip
        if line.kind != "seed":
            rows.append(("insert", "llm_calls", {
                "call_id": f"{episode}-{idx:04d}", "episode_id": episode, "turn_idx": idx,
                "agent": line.agent, "purpose": "turn", "backend": "scripted",
                "prompt": f"prompt of turn {idx}", "output": line.text or "[pass]",
                "prompt_tokens": 10, "completion_tokens": 5, "latency_s": 0.01, "attempts": 1,
            }))  # fmt: skip
        for judge, rating in line.ratings.items():
            parsed = (
                {"rationale": "r", "toxicity": rating[0], "argument_quality": rating[1]}
                if rating
                else None
            )
            rows.append(("upsert", "judgments", {
                "judgment_id": f"{episode}:{idx}:{judge}", "episode_id": episode,
                "turn_idx": idx, "judge": judge, "rubric": RUBRIC["id"],
                "raw": json.dumps(parsed) if rating else "garbled",
                "parsed_json": json.dumps(parsed) if rating else None,
                "valid": int(rating is not None),
                "error": None if rating else "not JSON",
                "score": (rating[0] + rating[1]) / 2 if rating else None,
            }))  # fmt: skip
        if line.baseline is not None:
            rows.append(("upsert", "judgments", {
                "judgment_id": f"{episode}:{idx}:toxicity_baseline", "episode_id": episode,
                "turn_idx": idx, "judge": "toxicity_baseline", "rubric": BASELINE_RUBRIC.id,
                "raw": "{}", "parsed_json": json.dumps({"toxicity": line.baseline}),
                "valid": 1, "score": line.baseline,
            }))  # fmt: skip
    return rows


def write_discussions(
    path: Path, discussions: list[Discussion], *, run_id: str = "run-1", study: str = "scenario"
) -> Path:
    """Write `discussions` as one complete run into a new database at `path`."""
    open_database(path, create=True).conn.close()

    async def write() -> None:
        async with TurnLogWriter(path) as writer:
            writer.upsert("runs", {
                "run_id": run_id, "scenario": "discussion", "spec_json": json.dumps({
                    "name": "discussion"}), "backend": "scripted", "seed": 0,
                "status": "complete", "created_at": "2026-01-01T00:00:00Z", "study": study,
            })  # fmt: skip
            for index, d in enumerate(discussions):
                for op, table, row in _rows(run_id, index, d):
                    getattr(writer, op)(table, row)

    asyncio.run(write())
    return path


def seeds() -> list[Line]:
    """Two opening comments, rated toxicity 1 by everyone (a leak into any mean would show)."""
    rated = {a: (1, 5) for a in ANNOTATORS}
    return [
        Line("participant_2", "Opening comment about cars.", "seed", dict(rated), 0.0),
        Line("participant_3", "Opening comment about rent.", "seed", dict(rated), 0.0),
    ]


#: Speakers per strategy: P = participant number, F = facilitator line, "-" = facilitator pass.
SEQUENCES = {
    "none": "1234" * 3,
    "rules_only": "12F34-12F34-12",
    "moderation_game": "12F34F1-2F341",
}
PLANTED = {  # strategy -> (mean toxicity, mean argument quality, intervention rate)
    "none": (3.25, 1.75, float("nan")),
    "rules_only": (2.25, 3.75, 0.5),
    "moderation_game": (2.75, 2.75, 0.75),
}
#: Toxicity shift of each discussion, by repeat (zero-sum: the strategy means stay as planted).
OFFSETS = (1, -1, 1, -1, 0, 0)


def _planted(strategy: str, position: int, troll: bool, offset: int) -> tuple[int, int]:
    if strategy == "none":
        tox, aq = 3, 2
    elif strategy == "rules_only":
        tox, aq = 2, 4
    else:
        tox, aq = (3 if position < 6 else 2), 3
    return (tox + offset + 1, aq - 1) if troll else (tox + offset, aq)


def comment_text(rng: random.Random, pool: list[str], words: int = 8) -> str:
    """A comment of `words` words drawn from `pool`."""
    return " ".join(rng.choice(pool) for _ in range(words))


def word_pool(rng: random.Random, low: int = 6, high: int = 60) -> list[str]:
    """A discussion's vocabulary: between `low` and `high` distinct words (its diversity)."""
    return [f"w{i}" for i in rng.sample(range(1000), rng.randint(low, high))]


def planted_discussions(
    strategies: tuple[str, ...] = ("none", "rules_only", "moderation_game"),
    per_strategy: int = 6,
    seed: int = 0,
) -> list[Discussion]:
    """The planted study described in the module docstring."""
    rng = random.Random(seed)
    intents = {"participant_1": "troll", "participant_2": "neutral",
               "participant_3": "neutral", "participant_4": "community"}  # fmt: skip
    found = []
    for strategy in strategies:
        for repeat in range(per_strategy):
            pool = word_pool(rng)
            lines = seeds()
            planted: list[tuple[int, int]] = []
            comments: list[Line] = []
            for code in SEQUENCES[strategy]:
                if code == "-":
                    lines.append(Line("facilitator", "", "pass"))
                    continue
                agent = "facilitator" if code == "F" else f"participant_{code}"
                troll = agent == "participant_1"
                rating = _planted(strategy, len(planted), troll, OFFSETS[repeat % 6])
                planted.append(rating)
                line = Line(agent, comment_text(rng, pool), baseline=(rating[0] - 1) / 4)
                line.ratings = {"annotator_1": rating, "annotator_2": rating}
                comments.append(line)
                lines.append(line)
            shuffled = rng.sample(planted[:6], 6) + rng.sample(planted[6:], len(planted) - 6)
            for line, other in zip(comments, shuffled, strict=True):
                line.ratings["annotator_3"] = other
            if strategy == "none" and repeat == 0:
                for line in comments[:4]:
                    line.ratings["annotator_2"] = None
            found.append(Discussion(strategy, dict(intents), lines, strategy != "none"))
    return found


def reference_lines(rng: random.Random, n: int, low: int = 6, high: int = 60) -> list[str]:
    """`n` JSONL lines of human-reference conversations drawn like the planted comments."""
    lines = []
    for i in range(n):
        pool = word_pool(rng, low, high)
        comments = [comment_text(rng, pool) for _ in range(12)]
        lines.append(json.dumps({"id": f"h{i}", "comments": comments}))
    return lines
