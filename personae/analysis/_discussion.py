"""The facilitated-discussion study's analysis: `analyze_discussion(db)`.

A discussion is a complete episode with turns of role `participant`. Its **comments** are the
`line` turns of participants and of the facilitator; seed comments (`seed`) and abstentions
(`pass`) are never comments. Its **strategy** is the facilitator persona's `strategy` (else
the condition's `facilitator.strategy`; `none` when there is no facilitator). Annotators are the
judges other than the baseline classifier (rubric `alt_profanity_check`, reported on its own);
an invalid verdict is counted and left out of every mean.

Every per-strategy mean weighs each discussion once: the mean of the discussions' own means,
with a percentile-bootstrap 95% interval over discussions (`personae.experiments.mean_ci`).
Intervention rate = facilitator lines / (facilitator lines + passes), pooled over a strategy's
discussions. Comment toxicity, for the regression and the by-turn curves, is the mean of the
annotators' valid ratings of that comment.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personae.analysis._frames import Frames, frames
from personae.analysis._measures import diversity, gini, jensen_shannon, krippendorff_alpha
from personae.analysis._model import fit_mixed_model
from personae.analysis._reference import ReferenceConversation, load_reference
from personae.errors import UserError
from personae.judges import BASELINE_RUBRIC

#: The model-free judge whose toxicity is reported next to the annotators'.
#: Facilitation strategies in the order tables and plots show them (others follow, sorted).
STRATEGIES = (
    "none",
    "no_instructions",
    "rules_only",
    "moderation_guidelines",
    "facilitation_guidelines",
    "moderation_game",
)
#: The annotators' rating dimensions.
DIMENSIONS = ("toxicity", "argument_quality")
#: Roles whose lines are comments.
COMMENT_ROLES = ("participant", "facilitator")
#: What the JSD column says without a reference.
NO_REFERENCE = "no reference given"
#: Annotator persona fields copied into the ratings table (as `annotator_FIELD`).
ANNOTATOR_FIELDS = ("age", "sex", "education", "political_leaning")
#: How a verdict names the comment it rates.
_KEYS = ["episode_id", "turn"]
#: The ratings table's columns, one row per comment x annotator.
RATING_COLUMNS = (
    "run_id", "episode_id", "strategy", "turn", "agent", "username", "role", "intent",
    "is_troll", "text", "annotator", *(f"annotator_{f}" for f in ANNOTATOR_FIELDS),
    "toxicity", "argument_quality", "valid", "baseline_toxicity",
)  # fmt: skip


@dataclass(frozen=True)
class DiscussionAnalysis:
    """Every table of the analysis (see `personae analyze discussion` in the README).

    Attributes:
        strategies: Per strategy: discussions, comments, ratings (valid, invalid), mean
            toxicity and argument quality with 95% CIs, intervention rate, baseline toxicity.
        participation: Per strategy: comments per participant, Gini of comment counts (CI).
        intents: Per strategy and participant intent: slots, comments, toxicity.
        trolls: Per strategy: toxicity of trolls' comments vs other participants'.
        diversity: Per strategy and over all discussions (plus the human reference, if given):
            mean diversity with CI and the JSD against the reference.
        agreement: Krippendorff's alpha (ordinal) per dimension: all annotators, then each pair.
        regression: Mixed-model coefficients (toxicity ~ strategy x centred turn, random
            intercept per discussion); empty when it could not be fitted (see `notes`).
        regression_summary: statsmodels' summary text of that fit ("" when none).
        toxicity_by_turn: Per strategy and turn: mean comment toxicity with CI.
        discussions: One row per discussion with its own measures.
        participants: One row per participant slot of each discussion: its comment count.
        ratings: One row per comment x annotator (`RATING_COLUMNS`).
        reference: One row per human reference conversation: comments, diversity (empty
            without a reference).
        notes: What could not be computed, and why; what was left out.
        db: The database analysed.
        run_id: The run analysed (None: every run in the database).
        reference_path: The reference file, if one was given.
    """

    strategies: pd.DataFrame
    participation: pd.DataFrame
    intents: pd.DataFrame
    trolls: pd.DataFrame
    diversity: pd.DataFrame
    agreement: pd.DataFrame
    regression: pd.DataFrame
    regression_summary: str
    toxicity_by_turn: pd.DataFrame
    discussions: pd.DataFrame
    participants: pd.DataFrame
    ratings: pd.DataFrame
    reference: pd.DataFrame
    notes: tuple[str, ...]
    db: Path
    run_id: str | None = None
    reference_path: Path | None = None


# -- assembling the data ----------------------------------------------------------------------


def strategy_order(names: Iterable[str]) -> list[str]:
    """Distinct strategy names, the known ones in `STRATEGIES` order, then the rest sorted."""
    distinct = set(names)
    known = [s for s in STRATEGIES if s in distinct]
    return known + sorted(distinct - set(known))


def _slot_key(name: str) -> tuple[str, int, str]:
    match = re.fullmatch(r"(.*?)(\d+)", name)
    return (match.group(1), int(match.group(2)), name) if match else (name, -1, name)


def _json(value: object) -> dict[str, Any]:
    decoded = json.loads(value) if isinstance(value, str) else None
    return decoded if isinstance(decoded, dict) else {}


def _strategy(personas: dict[str, Any], condition: dict[str, Any]) -> str:
    persona = personas.get("facilitator")
    if isinstance(persona, dict) and persona.get("strategy"):
        return str(persona["strategy"])
    grid = condition.get("facilitator")
    if isinstance(grid, dict) and grid.get("strategy"):
        return str(grid["strategy"])
    return "none" if persona is None else "unknown"


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """`frame[column]` as floats (NaN where missing or not a number)."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _mean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (NaN when there are none)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    return float(v.mean()) if v.size else math.nan


@dataclass(frozen=True)
class _Data:
    discussions: pd.DataFrame  # run_id, episode_id, strategy, participants
    personas: dict[str, dict[str, Any]]  # episode -> agent -> persona
    slots: dict[str, list[str]]  # episode -> participant agents
    comments: pd.DataFrame  # one row per comment, with its annotators' means and baseline
    ratings: pd.DataFrame  # one row per comment x annotator (invalid rows included)
    passes: dict[str, int]  # episode -> facilitator passes
    skipped: int  # discussion episodes left out because they are not complete


def _collect(f: Frames, where: str) -> _Data:
    episodes, turns = f.episodes, f.turns
    complete = set(episodes.loc[episodes["status"] == "complete", "episode_id"])
    talked = set(turns.loc[turns["role"] == "participant", "episode_id"])
    chosen = episodes[episodes["episode_id"].isin(complete & talked)]
    if chosen.empty:
        detail = f" ({len(talked)} not complete)" if talked else ""
        raise UserError(
            f"no discussion episodes: no complete episode has turns of role 'participant'{detail}",
            where=where,
            fix="pass the database of a facilitated-discussion run (or --run with one)",
        )
    personas = {
        e: _json(p) for e, p in zip(chosen["episode_id"], chosen["personas_json"], strict=True)
    }
    strategies = {
        e: _strategy(personas[e], _json(c))
        for e, c in zip(chosen["episode_id"], chosen["condition_json"], strict=True)
    }
    spoke = turns[turns["episode_id"].isin(personas)]
    speakers = spoke[spoke["role"] == "participant"].groupby("episode_id")["agent"].unique()
    slots: dict[str, list[str]] = {}
    for episode, agents in personas.items():  # participants who never spoke count too
        named = {a for a in agents if re.fullmatch(r"participant_\d+", a)}
        slots[episode] = sorted(named | set(speakers.get(episode, [])), key=_slot_key)
    discussions = pd.DataFrame(
        {
            "run_id": chosen["run_id"].to_numpy(),
            "episode_id": chosen["episode_id"].to_numpy(),
            "strategy": [strategies[e] for e in chosen["episode_id"]],
            "participants": [len(slots[e]) for e in chosen["episode_id"]],
        }
    )
    lines = spoke[(spoke["kind"] == "line") & spoke["role"].isin(COMMENT_ROLES)]
    comments = _comment_rows(lines, personas, strategies)
    passes = spoke[(spoke["kind"] == "pass") & (spoke["role"] == "facilitator")]
    verdicts = _verdicts(f.judgments)
    baseline = verdicts[verdicts["baseline"] & (verdicts["valid"] == 1)]
    baseline = baseline.drop_duplicates(_KEYS)[[*_KEYS, "toxicity"]]
    comments = comments.merge(
        baseline.rename(columns={"toxicity": "baseline_toxicity"}), on=_KEYS, how="left"
    )
    ratings = _rating_rows(verdicts[~verdicts["baseline"]], comments, personas)
    means = ratings[ratings["valid"] == 1].groupby(_KEYS)[list(DIMENSIONS)].mean().reset_index()
    comments = comments.merge(means, on=_KEYS, how="left")
    return _Data(
        discussions=discussions,
        personas=personas,
        slots=slots,
        comments=comments,
        ratings=ratings,
        passes=passes.groupby("episode_id").size().astype(int).to_dict(),
        skipped=len(talked - complete),
    )


def _comment_rows(
    lines: pd.DataFrame, personas: dict[str, dict[str, Any]], strategies: dict[str, str]
) -> pd.DataFrame:
    pairs = zip(lines["episode_id"], lines["agent"], strict=True)
    who = [_persona(personas, e, a) for e, a in pairs]
    intent = [
        (str(p["intent"]) if p.get("intent") else None) if role == "participant" else None
        for p, role in zip(who, lines["role"], strict=True)
    ]
    return pd.DataFrame(
        {
            "run_id": lines["run_id"].astype(str).to_numpy(),
            "episode_id": lines["episode_id"].astype(str).to_numpy(),
            "strategy": [strategies[e] for e in lines["episode_id"]],
            "turn": lines["idx"].astype(int).to_numpy(),
            "agent": lines["agent"].astype(str).to_numpy(),
            "username": pd.array([p.get("username") for p in who], dtype="str"),
            "role": lines["role"].astype(str).to_numpy(),
            "intent": pd.array(intent, dtype="str"),
            "is_troll": [i == "troll" for i in intent],
            "text": lines["text"].fillna("").astype(str).to_numpy(),
        }
    )


def _verdicts(judgments: pd.DataFrame) -> pd.DataFrame:
    """Verdicts on turns: episode, turn, judge, valid (0/1), and the dimensions as floats (NaN
    where invalid or missing)."""
    on_turns = judgments[judgments["turn_idx"].notna()]
    valid = on_turns["valid"].fillna(0).astype(int) == 1
    columns: dict[str, Any] = {
        "episode_id": on_turns["episode_id"].astype(str),
        "turn": on_turns["turn_idx"].astype(int),
        "judge": on_turns["judge"].astype(str),
        "baseline": (on_turns["rubric"].astype(str) == BASELINE_RUBRIC.id).astype(bool),
        "valid": valid.astype(int),
    }
    for dim in DIMENSIONS:
        columns[dim] = _numeric(on_turns, dim).where(valid)
    return pd.DataFrame(columns, index=on_turns.index).reset_index(drop=True)


def _rating_rows(
    verdicts: pd.DataFrame, comments: pd.DataFrame, personas: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """The annotators' verdicts on comments (invalid ones too), joined with the comments."""
    rated = verdicts.rename(columns={"judge": "annotator"})
    rows = comments.merge(rated, on=_KEYS, how="inner")
    for field in ANNOTATOR_FIELDS:
        values = [
            _persona(personas, e, a).get(field)
            for e, a in zip(rows["episode_id"], rows["annotator"], strict=True)
        ]
        rows[f"annotator_{field}"] = (
            pd.to_numeric(pd.Series(values, index=rows.index, dtype=object), errors="coerce")
            if field == "age"
            else pd.array([None if v is None else str(v) for v in values], dtype="str")
        )
    order = rows.sort_values(["run_id", "episode_id", "turn", "annotator"], kind="stable")
    return order[list(RATING_COLUMNS)].reset_index(drop=True)


def _persona(personas: dict[str, dict[str, Any]], episode: str, agent: str) -> dict[str, Any]:
    found = personas[episode].get(agent)
    return found if isinstance(found, dict) else {}


# -- the tables -------------------------------------------------------------------------------


def _per_discussion(data: _Data, progress: Callable[[str], None]) -> pd.DataFrame:
    comments, ratings = data.comments, data.ratings
    by_episode = comments.groupby("episode_id")
    rows = []
    n_pairs = sum(math.comb(n, 2) for n in by_episode.size())
    progress(f"diversity: ROUGE-L over {n_pairs:,} comment pairs")
    for episode in data.discussions["episode_id"]:
        mine = comments[comments["episode_id"] == episode].sort_values("turn")
        rated = ratings[ratings["episode_id"] == episode]
        counts = mine[mine["role"] == "participant"]["agent"].value_counts()
        fac_lines = int((mine["role"] == "facilitator").sum())
        fac_passes = data.passes.get(episode, 0)
        chances = fac_lines + fac_passes
        rows.append(
            {
                "comments": len(mine),
                "participant_comments": int((mine["role"] == "participant").sum()),
                "facilitator_comments": fac_lines,
                "facilitator_passes": fac_passes,
                "intervention_rate": fac_lines / chances if chances else math.nan,
                "ratings": int(rated["valid"].sum()),
                "invalid_ratings": int((rated["valid"] == 0).sum()),
                "toxicity": _mean(rated["toxicity"]),
                "argument_quality": _mean(rated["argument_quality"]),
                "baseline_toxicity": _mean(mine["baseline_toxicity"]),
                "gini": gini([int(counts.get(a, 0)) for a in data.slots[episode]]),
                "diversity": diversity(list(mine["text"])),
            }
        )
    return pd.concat([data.discussions, pd.DataFrame(rows)], axis=1)


def _ci_columns(name: str, values: pd.Series, resamples: int, seed: int) -> dict[str, float]:
    from personae.experiments import mean_ci  # scipy.stats: imported when first needed

    mean, low, high = mean_ci(values.to_numpy(dtype=float), resamples=resamples, seed=seed)
    return {name: mean, f"{name}_low": low, f"{name}_high": high}


def _strategies_table(discussions: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    rows = []
    for strategy in strategy_order(discussions["strategy"]):
        d = discussions[discussions["strategy"] == strategy]
        chances = int(d["facilitator_comments"].sum() + d["facilitator_passes"].sum())
        rows.append(
            {
                "strategy": strategy,
                "discussions": len(d),
                "comments": int(d["comments"].sum()),
                "ratings": int(d["ratings"].sum()),
                "invalid_ratings": int(d["invalid_ratings"].sum()),
                **_ci_columns("toxicity", d["toxicity"], resamples, seed),
                **_ci_columns("argument_quality", d["argument_quality"], resamples, seed),
                "intervention_rate": d["facilitator_comments"].sum() / chances
                if chances
                else math.nan,
                "baseline_toxicity": _mean(d["baseline_toxicity"]),
            }
        )
    return pd.DataFrame(rows)


def _participants_table(data: _Data) -> pd.DataFrame:
    comments = data.comments[data.comments["role"] == "participant"]
    counts = comments.groupby(["episode_id", "agent"]).size()
    strategy = dict(zip(data.discussions["episode_id"], data.discussions["strategy"], strict=True))
    run = dict(zip(data.discussions["episode_id"], data.discussions["run_id"], strict=True))
    rows = []
    for episode, agents in data.slots.items():
        for agent in agents:
            persona = _persona(data.personas, episode, agent)
            intent = str(persona["intent"]) if persona.get("intent") else None
            rows.append(
                {
                    "run_id": run[episode],
                    "episode_id": episode,
                    "strategy": strategy[episode],
                    "agent": agent,
                    "username": persona.get("username"),
                    "intent": intent,
                    "is_troll": intent == "troll",
                    "comments": int(counts.get((episode, agent), 0)),
                }
            )
    return pd.DataFrame(rows)


def _participation_table(
    discussions: pd.DataFrame, participants: pd.DataFrame, resamples: int, seed: int
) -> pd.DataFrame:
    rows = []
    for strategy in strategy_order(discussions["strategy"]):
        d = discussions[discussions["strategy"] == strategy]
        p = participants[participants["strategy"] == strategy]
        rows.append(
            {
                "strategy": strategy,
                "discussions": len(d),
                "participants": _mean(d["participants"].astype(float)),
                "comments_per_participant": _mean(p["comments"].astype(float)),
                **_ci_columns("gini", d["gini"], resamples, seed),
            }
        )
    return pd.DataFrame(rows)


def _intents_table(participants: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    rows = []
    p = participants.assign(intent=participants["intent"].fillna("unknown"))
    r = ratings[ratings["role"] == "participant"]
    r = r.assign(intent=r["intent"].fillna("unknown"))
    for strategy in strategy_order(p["strategy"]):
        for intent in sorted(set(p.loc[p["strategy"] == strategy, "intent"])):
            mine = p[(p["strategy"] == strategy) & (p["intent"] == intent)]
            rated = r[(r["strategy"] == strategy) & (r["intent"] == intent)]
            rows.append(
                {
                    "strategy": strategy,
                    "intent": intent,
                    "participants": len(mine),
                    "comments": int(mine["comments"].sum()),
                    "comments_per_participant": float(mine["comments"].mean()),
                    "ratings": int(rated["valid"].sum()),
                    "toxicity": _mean(rated["toxicity"]),
                }
            )
    return pd.DataFrame(rows)


def _trolls_table(comments: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    rows = []
    said = comments[comments["role"] == "participant"]
    r = ratings[ratings["role"] == "participant"]
    for strategy in strategy_order(comments["strategy"]):
        mine, rated = said[said["strategy"] == strategy], r[r["strategy"] == strategy]
        troll = _mean(rated.loc[rated["is_troll"], "toxicity"])
        others = _mean(rated.loc[~rated["is_troll"], "toxicity"])
        rows.append(
            {
                "strategy": strategy,
                "troll_comments": int(mine["is_troll"].sum()),
                "troll_toxicity": troll,
                "other_comments": int((~mine["is_troll"]).sum()),
                "other_toxicity": others,
                "difference": troll - others,
            }
        )
    return pd.DataFrame(rows)


def _diversity_table(
    discussions: pd.DataFrame,
    reference: pd.DataFrame | None,
    resamples: int,
    seed: int,
    notes: list[str],
) -> pd.DataFrame:
    human = reference["diversity"].dropna().to_numpy(float) if reference is not None else None
    groups = [
        (s, discussions[discussions["strategy"] == s])
        for s in strategy_order(discussions["strategy"])
    ]
    groups.append(("all discussions", discussions))
    rows: list[dict[str, Any]] = []
    for label, d in groups:
        values = d["diversity"].dropna()
        jsd: float | str = NO_REFERENCE
        if human is not None:
            jsd = jensen_shannon(values.to_numpy(float), human)
            if math.isnan(jsd):
                notes.append(
                    f"JSD for {label}: {len(values)} diversity value(s), too few or all equal "
                    "for a density"
                )
        rows.append(
            {
                "strategy": label,
                "discussions": len(values),
                **_ci_columns("diversity", values, resamples, seed),
                "jsd": jsd,
            }
        )
    if reference is not None:
        rows.append(
            {
                "strategy": "human reference",
                "discussions": int(reference["diversity"].notna().sum()),
                **_ci_columns("diversity", reference["diversity"].dropna(), resamples, seed),
                "jsd": math.nan,
            }
        )
    return pd.DataFrame(rows)


def _by_turn(comments: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    rated = comments.dropna(subset=["toxicity"])
    per = rated.groupby(["strategy", "turn", "episode_id"])["toxicity"].mean().reset_index()
    rows = []
    for strategy in strategy_order(per["strategy"]):
        mine = per[per["strategy"] == strategy]
        for turn, group in mine.groupby("turn"):
            rows.append(
                {
                    "strategy": strategy,
                    "turn": int(turn),
                    "discussions": len(group),
                    **_ci_columns("toxicity", group["toxicity"], resamples, seed),
                }
            )
    columns = ["strategy", "turn", "discussions", "toxicity", "toxicity_low", "toxicity_high"]
    return pd.DataFrame(rows, columns=columns)


def _agreement_table(ratings: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    columns = ["dimension", "annotators", "alpha", "units"]
    annotators = sorted(set(ratings["annotator"]))
    if len(annotators) < 2:
        notes.append(f"agreement: {len(annotators)} annotator(s); alpha needs two or more")
        return pd.DataFrame(columns=columns)
    valid = ratings[ratings["valid"] == 1]
    rows = []
    for dim in DIMENSIONS:
        matrix = valid.pivot_table(
            index="annotator", columns=_KEYS, values=dim, aggfunc="first"
        ).reindex(annotators)
        groups = [("all", annotators)]
        groups += [(f"{a} + {b}", [a, b]) for a, b in combinations(annotators, 2)]
        for label, members in groups:
            m = matrix.loc[members].to_numpy(dtype=float)
            units = int(np.sum(np.sum(~np.isnan(m), axis=0) >= 2)) if m.size else 0
            alpha = krippendorff_alpha(m) if m.size else math.nan
            rows.append({"dimension": dim, "annotators": label, "alpha": alpha, "units": units})
            if label == "all" and math.isnan(alpha):
                notes.append(
                    f"agreement on {dim}: undefined ({units} comments rated by two or more "
                    "annotators, or every rating the same)"
                )
    return pd.DataFrame(rows, columns=columns)


# -- the entry point --------------------------------------------------------------------------


def analyze_discussion(
    db: str | Path,
    *,
    run_id: str | None = None,
    reference: str | Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> DiscussionAnalysis:
    """Analyse the facilitated discussions of a run database (every table in memory).

    Args:
        db: A database written by a discussion scenario.
        run_id: Only this run (default: every run in the database).
        reference: A JSONL file of human conversations to compare diversity with (JSD).
        n_resamples: Bootstrap resamples of each confidence interval.
        seed: Seed of the bootstrap.
        progress: Called with a short line at each step (e.g. to print it).

    Raises:
        UserError: the database is unusable or has no complete discussion episodes, no such
            run, or the reference file is missing or malformed (naming its line).
    """
    say = progress or (lambda line: None)
    conversations: list[ReferenceConversation] | None = None
    if reference is not None:
        conversations = load_reference(reference)  # bad input fails before any work
    path = Path(db)
    where = f"{path} (run {run_id})" if run_id else str(path)
    data = _collect(frames(path, run_id), where)
    notes: list[str] = []
    if data.skipped:
        notes.append(f"{data.skipped} discussion episode(s) not complete: left out")
    say(
        f"{len(data.discussions)} discussions, {len(data.comments)} comments, "
        f"{int(data.ratings['valid'].sum())} valid ratings"
    )
    discussions = _per_discussion(data, say)
    invalid = int(discussions["invalid_ratings"].sum())
    if not int(discussions["ratings"].sum()):
        notes.append("no valid annotator ratings: toxicity and argument quality are empty")
    if invalid:
        notes.append(f"{invalid} invalid annotator rating(s): counted, left out of every mean")
    ref_frame = None
    if conversations is not None:
        say(f"diversity of {len(conversations)} reference conversations")
        ref_frame = pd.DataFrame(
            {
                "id": [c.id for c in conversations],
                "comments": [len(c.comments) for c in conversations],
                "diversity": [diversity(c.comments) for c in conversations],
            }
        )
    participants = _participants_table(data)
    say("bootstrap intervals")
    strategies = _strategies_table(discussions, n_resamples, seed)
    for row in strategies.itertuples():
        if math.isnan(float(row.intervention_rate)):
            notes.append(f"{row.strategy}: the facilitator had no turn, so no intervention rate")
    say("mixed-effects regression")
    regression, summary = fit_mixed_model(
        data.comments, strategy_order(data.comments["strategy"]), notes
    )
    return DiscussionAnalysis(
        strategies=strategies,
        participation=_participation_table(discussions, participants, n_resamples, seed),
        intents=_intents_table(participants, data.ratings),
        trolls=_trolls_table(data.comments, data.ratings),
        diversity=_diversity_table(discussions, ref_frame, n_resamples, seed, notes),
        agreement=_agreement_table(data.ratings, notes),
        regression=regression,
        regression_summary=summary,
        toxicity_by_turn=_by_turn(data.comments, n_resamples, seed),
        discussions=discussions,
        participants=participants,
        ratings=data.ratings,
        reference=ref_frame
        if ref_frame is not None
        else pd.DataFrame(columns=["id", "comments", "diversity"]),
        notes=tuple(notes),
        db=path,
        run_id=run_id,
        reference_path=Path(reference) if reference is not None else None,
    )
