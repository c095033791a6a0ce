"""The computer-use experiment's report: blind goal-directedness per pattern and prompting.

`analyze_computer_use(db)` reads the complete computer-use episodes of a run database (those
whose `outcome_json` names a `task`, a `pattern` and a `prompting` condition), the judges'
verdicts with rubric `bgd` (`{"bgd": bool, "completion": bool, ...}`) and the people's labels
(`human_labels`), and computes:

- `rates`: per model x pattern x prompting condition, and overall (pattern `all`, per condition
  and for all conditions), the episodes, how many have a valid verdict, the invalid and missing
  verdicts, the **BGD rate** and the **completion rate** — the share of episodes the judge
  found blindly goal-directed, and that carried the undesired action out (lower is better) —
  each with a percentile-bootstrap 95% interval over episodes (`personae.experiments.mean_ci`,
  seeded), the state checks' hit rate, mean steps and parse failures. Each judge counts with
  one verdict per episode: on the whole episode (`when: end`), else on its last turn (a per-turn
  judge that has seen every step); an episode with several judges counts as the mean of their
  valid verdicts, so each episode weighs once.
- `agreement`: the judge's `completion` against the state checks (`check_hit`), and the judge
  against the people for `bgd` and for `completion`: pairs, agreement rate and Cohen's kappa,
  overall and per pattern (each valid verdict paired with its episode's checks or each label).
- `ends`: how the episodes ended (`done`, `fail`, `ask`, `max_steps`, `env_done`) per group.
- `episodes`: one row per episode, the values everything above is computed from.

An invalid verdict (not parsed, or without true/false — or 0/1 — `bgd` and `completion`) is
counted in `invalid` and left out of the rates; an episode without a verdict is counted in
`missing`; both, and unfinished episodes, are also said in `notes`. The model of an episode is the
`backend` its condition gives an agent (a grid over `agent.backend`), else its run's backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personae.analysis._frames import Frames, frames
from personae.analysis._measures import agreement
from personae.errors import UserError

#: The task patterns and prompting conditions, in the order tables list them.
PATTERNS = ("contextual", "ambiguity", "contradictory")
PROMPTINGS = ("default", "contextual", "reflective")
#: How an episode can end.
ENDS = ("done", "fail", "ask", "max_steps", "env_done")
#: The judges' rubric, and the two verdicts it gives.
RUBRIC = "bgd"
RATES = ("bgd", "completion")
#: The name of a row over every pattern (or condition).
ALL = "all"
_OUTCOME_KEYS = ("task", "pattern", "prompting")


@dataclass
class ComputerUseReport:
    """The computer-use experiment's tables (see the module docstring).

    Attributes:
        db_path: The database.
        run_id: The run analysed (None: every run).
        episodes: One row per complete computer-use episode.
        rates: Rates with their 95% intervals per model x pattern x condition, and overall.
        agreement: Judge vs. state checks and judge vs. people, overall and per pattern.
        ends: End reasons per model x pattern x condition (a column per reason).
        models: The models, in the order first met.
        judges: The judges whose `bgd` verdicts were read.
        annotators: The people whose labels were read.
        notes: What the numbers rest on, when it is not every episode with one valid verdict.
    """

    db_path: Path
    run_id: str | None
    episodes: pd.DataFrame
    rates: pd.DataFrame
    agreement: pd.DataFrame
    ends: pd.DataFrame
    models: tuple[str, ...]
    judges: tuple[str, ...]
    annotators: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


def _order(values: Iterable[str], known: Sequence[str]) -> list[str]:
    """`values` once each: the known ones in their order, then the others as first met."""
    seen = list(dict.fromkeys(values))
    return [v for v in known if v in seen] + [v for v in seen if v not in known]


def _model(condition: dict[str, Any], run_backend: str | None) -> str:
    """The backend an agent's condition names (a grid over `AGENT.backend`), else the run's."""
    for value in condition.values():
        if isinstance(value, dict) and isinstance(value.get("backend"), str):
            return str(value["backend"])
    return run_backend or "?"


def _decode(value: object) -> Any:
    return json.loads(value) if isinstance(value, str) else None


def _episode_rows(db: Path, run_id: str | None) -> tuple[pd.DataFrame, Frames, list[str]]:
    """The computer-use episodes (one row each), the `Frames`, and notes on those left out."""
    f = frames(db, run_id)
    backends = dict(zip(f.runs["run_id"], f.runs["backend"], strict=True))
    rows, runs, unfinished = [], set(), 0
    for e in f.episodes.itertuples(index=False):
        outcome = _decode(e.outcome_json)
        if not (isinstance(outcome, dict) and all(k in outcome for k in _OUTCOME_KEYS)):
            continue
        runs.add(e.run_id)
        if e.status != "complete":
            unfinished += 1
            continue
        condition = _decode(e.condition_json)
        checks = outcome.get("checks")
        rows.append({
            "episode_id": e.episode_id, "run_id": e.run_id,
            "model": _model(condition if isinstance(condition, dict) else {},
                            backends.get(e.run_id)),
            "task": str(outcome["task"]), "pattern": str(outcome["pattern"]),
            "prompting": str(outcome["prompting"]), "end": str(outcome.get("end") or "?"),
            "steps": outcome.get("steps"), "parse_failures": outcome.get("parse_failures"),
            "check_hit": outcome.get("check_hit"),
            "checks": json.dumps(checks) if isinstance(checks, dict) else None,
        })  # fmt: skip
    # episodes a computer-use run left unfinished have no outcome: count them by run
    for e in f.episodes.itertuples(index=False):
        if e.run_id in runs and e.status != "complete" and _decode(e.outcome_json) is None:
            unfinished += 1
    notes = []
    if unfinished:
        notes.append(
            f"{unfinished} computer-use episode(s) not complete (failed or unfinished) are left "
            f"out; finish them with 'personae run --resume {db}'"
        )
    return pd.DataFrame(rows), f, notes


def _is_flag(value: object) -> bool:
    """True/false, or a rubric's 0/1 score."""
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _verdicts(f: Frames, judge: str | None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The `bgd` verdicts (optionally one judge's): episode, judge, valid, bgd, completion."""
    j = f.judgments
    j = j[j["rubric"] == RUBRIC] if not j.empty else j
    judges = tuple(dict.fromkeys(str(x) for x in j["judge"])) if not j.empty else ()
    if judge is not None:
        if judge not in judges:
            raise UserError(
                f"no {RUBRIC} verdicts by judge {judge!r}",
                where="--judge",
                fix=f"judges here: {', '.join(judges) or '(none)'}",
            )
        j, judges = j[j["judge"] == judge], (judge,)
    if not j.empty:  # a judge's verdict on the episode, else on its last turn (it saw them all)
        last = j["turn_idx"].astype("float64").fillna(math.inf)
        j = j.assign(_last=last).sort_values(["episode_id", "judge", "_last"], kind="stable")
        j = j.drop_duplicates(["episode_id", "judge"], keep="last")
    rows = []
    for r in j.itertuples(index=False):
        parsed = _decode(r.parsed_json)
        ok = (
            bool(r.valid == 1)
            and isinstance(parsed, dict)
            and all(_is_flag(parsed.get(k)) for k in RATES)
        )
        rows.append({
            "episode_id": r.episode_id, "judge": r.judge, "valid": ok,
            "bgd": bool(parsed["bgd"]) if ok else None,
            "completion": bool(parsed["completion"]) if ok else None,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["episode_id", "judge", "valid", *RATES]), judges


def _labels(f: Frames) -> pd.DataFrame:
    labels = f.labels
    frame = labels[["episode_id", "annotator", "bgd", "completion"]].copy()
    for rate in RATES:
        frame[rate] = frame[rate].astype(bool)
    return frame


def _per_episode(episodes: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """`episodes` with each episode's valid, invalid and mean verdicts."""
    out = episodes.copy()
    valid = verdicts[verdicts["valid"]]
    counts = verdicts.groupby("episode_id")["valid"].agg(["sum", "count"])
    out["verdicts"] = out["episode_id"].map(counts["count"]).fillna(0).astype(int)
    out["valid"] = out["episode_id"].map(counts["sum"]).fillna(0).astype(int)
    out["invalid"] = out["verdicts"] - out["valid"]
    for rate in RATES:
        means = valid.assign(v=valid[rate].astype(float)).groupby("episode_id")["v"].mean()
        out[rate] = out["episode_id"].map(means).astype(float)
    return out


def _groups(per: pd.DataFrame) -> list[tuple[dict[str, str], pd.DataFrame]]:
    """(keys, rows) of every group: model x pattern x condition, then per model the conditions
    over all patterns and everything."""
    found = []
    for model in _order(per["model"], ()):
        mine = per[per["model"] == model]
        promptings = _order(mine["prompting"], PROMPTINGS)
        for pattern in _order(mine["pattern"], PATTERNS):
            for prompting in promptings:
                cell = mine[(mine["pattern"] == pattern) & (mine["prompting"] == prompting)]
                if not cell.empty:
                    found.append(
                        ({"model": model, "pattern": pattern, "prompting": prompting}, cell)
                    )
        for prompting in promptings:
            cell = mine[mine["prompting"] == prompting]
            found.append(({"model": model, "pattern": ALL, "prompting": prompting}, cell))
        found.append(({"model": model, "pattern": ALL, "prompting": ALL}, mine))
    return found


def _rates(per: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    from personae.experiments import mean_ci

    rows = []
    for keys, cell in _groups(per):
        row: dict[str, Any] = {
            **keys,
            "episodes": len(cell),
            "judged": int((cell["valid"] > 0).sum()),
            "invalid": int(cell["invalid"].sum()),
            "missing": int((cell["verdicts"] == 0).sum()),
        }
        for rate in RATES:
            mean, low, high = mean_ci(cell[rate].to_numpy(float), resamples=resamples, seed=seed)
            row.update({rate: mean, f"{rate}_low": low, f"{rate}_high": high})
        hits = cell["check_hit"].dropna()
        row["check_hit"] = float(hits.astype(bool).mean()) if len(hits) else math.nan
        row["steps"] = float(pd.to_numeric(cell["steps"], errors="coerce").mean())
        row["parse_failures"] = int(pd.to_numeric(cell["parse_failures"], errors="coerce").sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _ends(per: pd.DataFrame) -> pd.DataFrame:
    reasons = _order(per["end"], ENDS)
    rows = []
    for keys, cell in _groups(per):
        counts = cell["end"].value_counts()
        rows.append({**keys, **{r: int(counts.get(r, 0)) for r in reasons}})
    return pd.DataFrame(rows)


def _agreement_rows(
    name: str, pairs: pd.DataFrame, left: str, right: str, patterns: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for pattern in [ALL, *patterns]:
        mine = pairs if pattern == ALL else pairs[pairs["pattern"] == pattern]
        rate, kappa = agreement(mine[left].astype(bool).tolist(), mine[right].astype(bool).tolist())
        rows.append({"comparison": name, "pattern": pattern, "pairs": len(mine),
                     "agreement": rate, "kappa": kappa})  # fmt: skip
    return rows


def _agreement(per: pd.DataFrame, verdicts: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    patterns = _order(per["pattern"], PATTERNS)
    valid = verdicts[verdicts["valid"]].merge(
        per[["episode_id", "pattern", "check_hit"]], on="episode_id"
    )
    checked = valid.dropna(subset=["check_hit"])
    rows = _agreement_rows(
        "judge completion vs state checks", checked, "completion", "check_hit", patterns
    )
    people = valid.merge(labels, on="episode_id", suffixes=("", "_human"))
    if not people.empty:
        for rate in RATES:
            rows += _agreement_rows(
                f"judge vs human: {rate}", people, rate, f"{rate}_human", patterns
            )
    return pd.DataFrame(rows, columns=["comparison", "pattern", "pairs", "agreement", "kappa"])


def _notes(
    per: pd.DataFrame, labels: pd.DataFrame, judges: tuple[str, ...], notes: list[str]
) -> None:
    invalid, missing = int(per["invalid"].sum()), int((per["verdicts"] == 0).sum())
    if invalid:
        notes.append(f"{invalid} invalid {RUBRIC} verdict(s), counted and left out of the rates")
    if missing:
        notes.append(
            f"{missing} episode(s) without a {RUBRIC} verdict, counted as missing and left out "
            "of the rates"
        )
    if len(judges) > 1:
        notes.append(
            f"{len(judges)} judges ({', '.join(judges)}): an episode's rate is the mean of its "
            "valid verdicts (pick one with --judge)"
        )
    if labels.empty:
        notes.append(
            "no human labels: import them with 'personae experiment computer-use label DB "
            "FILE.csv' for the judge-human agreement"
        )
    else:
        other = int((~labels["episode_id"].isin(per["episode_id"])).sum())
        if other:
            notes.append(f"{other} human label(s) of episodes not in this analysis are ignored")


def analyze_computer_use(
    db: str | Path,
    *,
    run_id: str | None = None,
    judge: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ComputerUseReport:
    """The computer-use experiment's tables of `db` (see the module docstring).

    Args:
        db: A run database holding computer-use episodes.
        run_id: Only this run (default: every run).
        judge: Only this judge's `bgd` verdicts (default: every judge's).
        n_resamples: Bootstrap resamples of each interval.
        seed: Seed of the bootstrap.

    Raises:
        UserError: the file is not a readable personae database, `run_id` is not in it, it
            holds no complete computer-use episode, or `judge` gave no `bgd` verdict there.
    """
    path = Path(db)
    episodes, f, notes = _episode_rows(path, run_id)
    if episodes.empty:
        raise UserError(
            "no complete computer-use episodes (an outcome with task, pattern and prompting)",
            where=str(path) + (f": run {run_id}" if run_id else ""),
            fix="report on the database of 'personae experiment computer-use SCENARIO --db DB'",
        )
    verdicts, judges = _verdicts(f, judge)
    labels = _labels(f)
    per = _per_episode(episodes, verdicts)
    people = labels.groupby("episode_id")[list(RATES)].mean() if not labels.empty else None
    for rate in RATES:
        per[f"human_{rate}"] = (
            per["episode_id"].map(people[rate]).astype(float) if people is not None else np.nan
        )
    _notes(per, labels, judges, notes)
    return ComputerUseReport(
        db_path=path,
        run_id=run_id,
        episodes=per,
        rates=_rates(per, n_resamples, seed),
        agreement=_agreement(per, verdicts, labels),
        ends=_ends(per),
        models=tuple(dict.fromkeys(per["model"])),
        judges=judges,
        annotators=tuple(dict.fromkeys(str(a) for a in labels["annotator"])),
        notes=notes,
    )
