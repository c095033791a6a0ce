"""Flat tables for analysis: one row per turn, with its episode, condition and model call.

Columns: episode fields (`run_id`, `scenario`, `episode_id`, `episode_idx`, `status`,
`end_reason`, `n_turns`, `seed`, `parent_episode_id`, `fork_turn`), the condition flattened to
`AGENT.FIELD` columns (`client.persona` holds the persona id, `client.style`...) plus top-level
keys (`repeat`), then the turn (`turn`, `agent`, `role`, `kind`, `text`, `audience_json`,
`hidden_json`, `decision_json`, `call_id`) and its final model call (`finish_reason`,
`prompt_tokens`, `completion_tokens`, `cached_tokens`, `latency_s`, `call_seed`). These tables
are for analysis and keep `hidden_json`; training exports (`sft`, `dpo`) never include it.
`nested` decodes the `*_json` columns into objects (for JSONL); CSV and Parquet keep them as JSON
text, since their columns hold one type and hidden state differs from turn to turn.

`intervention_rows` is the teaching experiments' `interventions` table (every decision of every
intervention function at every budget) with the scenario of its episode, chosen by the same
`EpisodeFilter`. `write_parquet` writes either kind of rows with pyarrow (a column whose values
share no Arrow type is written as text).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from personae.errors import UserError
from personae.export._select import EpisodeFilter, select_episodes
from personae.store import RunLog

_EPISODE_FIELDS = (
    "run_id",
    "scenario",
    "episode_id",
    "status",
    "end_reason",
    "n_turns",
    "seed",
    "parent_episode_id",
    "fork_turn",
)


_TURN_FIELDS = (
    "agent",
    "role",
    "kind",
    "text",
    "audience_json",
    "hidden_json",
    "decision_json",
    "call_id",
)
#: Columns holding JSON text (decoded by `nested`).
JSON_COLUMNS = ("audience_json", "hidden_json", "decision_json", "notes_json", "state_diff_json")
_CALL_FIELDS = (
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "latency_s",
    "call_seed",
)


def _flat_condition(condition: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in condition.items():
        if isinstance(value, dict):
            for field, v in value.items():
                flat[f"{key}.{field}"] = v
        else:
            flat[key] = value
    return flat


def turn_rows(db: str | Path, chosen: EpisodeFilter | None = None) -> list[dict[str, Any]]:
    """Every turn of the chosen episodes, joined with episode and call fields.

    Raises:
        UserError: a bad filter.
    """
    rows: list[dict[str, Any]] = []
    with RunLog(db) as log:
        for episode in select_episodes(log, chosen or EpisodeFilter()):
            base = {f: episode.get(f) for f in _EPISODE_FIELDS}
            base["episode_idx"] = episode["idx"]
            base.update(_flat_condition(json.loads(episode["condition_json"] or "{}")))
            for r in log.query(
                """SELECT t.*, c.finish_reason, c.prompt_tokens, c.completion_tokens,
                          c.cached_tokens, c.latency_s, c.seed AS call_seed
                   FROM turns t LEFT JOIN llm_calls c ON c.call_id = t.call_id
                   WHERE t.episode_id = ? ORDER BY t.idx""",
                episode["episode_id"],
            ):
                turn = {"turn": r["idx"], **{c: r.get(c) for c in _TURN_FIELDS}}
                turn["kind"] = turn["kind"] or "line"
                rows.append({**base, **turn, **{c: r[c] for c in _CALL_FIELDS}})
    return rows


def nested(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`rows` with their JSON text columns (`hidden_json`, `audience_json`, `decision_json`)
    decoded into objects and lists, for formats that nest (JSONL)."""
    for row in rows:
        yield {
            k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v
            for k, v in row.items()
        }


def intervention_rows(db: str | Path, chosen: EpisodeFilter | None = None) -> list[dict[str, Any]]:
    """The `interventions` rows of the chosen episodes (a teaching run's teach episodes), each
    with its episode's `scenario`, ordered by seed, style, function, budget and item.

    Raises:
        UserError: the database holds no intervention decisions (no teaching run), or a bad
            filter.
    """
    with RunLog(db) as log:
        if not (log.has_table("interventions") and log.query("SELECT 1 FROM interventions")):
            raise UserError(
                "this database holds no intervention decisions (they come from teaching runs)",
                where=f"{log.path}: --table interventions",
                fix="export a teaching run's database, or export --table turns",
            )
        episodes = {e["episode_id"]: e for e in select_episodes(log, chosen or EpisodeFilter())}
        rows = log.query(
            """SELECT e.scenario, i.* FROM interventions i JOIN episodes e USING (episode_id)
               ORDER BY i.seed, i.explanation, i.function, i.budget, i.hindsight, e.idx"""
        )
    return [r for r in rows if r["episode_id"] in episodes]


def env_step_rows(db: str | Path, chosen: EpisodeFilter | None = None) -> list[dict[str, Any]]:
    """The `env_steps` rows of the chosen episodes (computer-use runs), each with its
    episode's `scenario`, in episode and step order.

    Raises:
        UserError: the database holds no environment steps (no computer-use run), or a bad
            filter.
    """
    with RunLog(db) as log:
        if not (log.has_table("env_steps") and log.query("SELECT 1 FROM env_steps LIMIT 1")):
            raise UserError(
                "this database holds no environment steps (they come from computer_use runs)",
                where=f"{log.path}: --table env_steps",
                fix="export a computer-use run's database, or export --table turns",
            )
        episodes = {e["episode_id"]: e for e in select_episodes(log, chosen or EpisodeFilter())}
        rows = log.query(
            """SELECT e.scenario, s.* FROM env_steps s JOIN episodes e USING (episode_id)
               ORDER BY e.run_id, e.idx, s.episode_id, s.step"""
        )
    return [r for r in rows if r["episode_id"] in episodes]


@contextmanager
def _opened(out: str | Path | None) -> Any:
    if out is None or str(out) == "-":
        yield sys.stdout
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        yield handle


def write_jsonl(records: Iterable[dict[str, Any]], out: str | Path | None = None) -> int:
    """Write one JSON object per line to `out` (a path; None or `-`: stdout); return the count."""
    count = 0
    handle: IO[str]
    with _opened(out) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_csv(rows: Sequence[dict[str, Any]], out: str | Path | None = None) -> int:
    """Write rows as CSV (columns: the union of keys, first seen first); return the count."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    handle: IO[str]
    with _opened(out) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()}
            )
    return len(rows)


def _arrow_column(values: Sequence[Any]) -> Any:
    """One Parquet column: Arrow's own type for the values, or text when they share none."""
    import pyarrow as pa

    cells = [json.dumps(v) if isinstance(v, dict | list) else v for v in values]
    try:
        return pa.array(cells)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in cells], type=pa.string())


def write_parquet(rows: Sequence[dict[str, Any]], out: str | Path) -> int:
    """Write rows as a Parquet file at `out` (columns: the union of keys, first seen first;
    missing values null; nested values as JSON text); return the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    table = pa.table({c: _arrow_column([row.get(c) for row in rows]) for c in columns})
    pq.write_table(table, str(out))
    return len(rows)
