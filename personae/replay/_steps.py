"""What the replay viewer shows for each turn of a logged episode.

A `Step` is one turn with the model calls behind it (the exact rendered prompt, sampling
parameters, seed, output, tokens, latency) and its hidden state: the speaker's private
`hidden_json` plus rows of per-turn side tables (interventions, judgments...) that later
graphs add. Side tables are found by shape (an `episode_id` column and a turn column), so the
viewer needs no change when a table is added.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from personae.store import RunLog, Turn

_CORE = {"meta", "runs", "episodes", "turns", "llm_calls"}
_TURN_COLUMNS = ("turn_idx", "turn", "idx")
#: Side tables whose rows are hidden from the agents (the rest are shown as plain side rows).
HIDDEN_TABLES = frozenset({"interventions", "judgments", "judge_scores", "tom_notes", "tom"})


@dataclass(frozen=True)
class Step:
    """One turn as the viewer shows it.

    Attributes:
        turn: The logged turn (visible text and the speaker's hidden state).
        calls: Its `llm_calls` rows in order (`params` decoded); empty for a scripted line.
        hidden_rows: Rows of hidden side tables for this turn, by table.
        side_rows: Rows of other per-turn side tables, by table.
    """

    turn: Turn
    calls: list[dict[str, Any]] = field(default_factory=list)
    hidden_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    side_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def has_hidden(self) -> bool:
        """True when there is hidden state to show."""
        return bool(self.turn.hidden or self.hidden_rows)


def _side_tables(log: RunLog) -> list[tuple[str, str]]:
    tables = [
        r["name"]
        for r in log.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    ]
    found = []
    for name in tables:
        if name in _CORE or name.startswith("sqlite_") or "_fts" in name:
            continue
        columns = {r["name"] for r in log.query(f"PRAGMA table_info([{name}])")}
        turn_col = next((c for c in _TURN_COLUMNS if c in columns), None)
        if "episode_id" in columns and turn_col:
            found.append((name, turn_col))
    return found


def episode_steps(log: RunLog, episode: str) -> tuple[dict[str, Any], list[Step]]:
    """The episode row and one `Step` per logged turn.

    Args:
        log: An open run log.
        episode: Episode id, unique prefix, or list index.
    """
    row = log.episode(episode)
    episode_id = row["episode_id"]
    calls: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
    for call in log.calls(episode_id):
        call["params"] = json.loads(call.get("params_json") or "{}")
        calls[int(call["turn_idx"])].append(call)
    side: defaultdict[int, defaultdict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for table, turn_col in _side_tables(log):
        for r in log.query(f"SELECT * FROM [{table}] WHERE episode_id = ?", episode_id):
            if isinstance(r.get(turn_col), int):
                side[r[turn_col]][table].append(r)
    steps = []
    for turn in log.turns(episode_id):
        tables: dict[str, list[dict[str, Any]]] = side.get(turn.idx, {})
        steps.append(
            Step(
                turn=turn,
                calls=calls.get(turn.idx, []),
                hidden_rows={t: rows for t, rows in tables.items() if t in HIDDEN_TABLES},
                side_rows={t: rows for t, rows in tables.items() if t not in HIDDEN_TABLES},
            )
        )
    return row, steps
