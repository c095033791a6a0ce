"""Reading a turn-log database: runs, episodes, transcripts and calls.

`RunLog(path)` checks the file (a personae database of a readable version) and opens it
read-only. Episode ids may be abbreviated to any unique prefix.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae.errors import UserError
from personae.store._schema import check_database, readonly_uri


@dataclass(frozen=True, slots=True)
class Turn:
    """One logged turn: who spoke, what they said (visible text), to whom, and hidden state.

    Attributes:
        idx: Turn index within the episode.
        agent: Speaker (agent name).
        role: The speaker's role.
        text: Visible text.
        hidden: The speaker's private per-turn state.
        call_id: The model call behind it (None for a line with no call).
        kind: `line`, `seed`, `pass` or `feedback` (see `personae.agents.LineKind`).
        audience: Who heard it besides the speaker (None: everyone).
        decision: The turn policy's decision that picked the speaker, if any.
    """

    idx: int
    agent: str
    role: str
    text: str
    hidden: dict[str, Any]
    call_id: str | None
    kind: str = "line"
    audience: tuple[str, ...] | None = None
    decision: dict[str, Any] | None = None

    def visible_to(self, name: str) -> bool:
        """Whether agent `name` could see this turn (the audience rule)."""
        if self.kind == "pass":
            return False
        return self.audience is None or name == self.agent or name in self.audience


def turn_from_row(r: dict[str, Any]) -> Turn:
    """A `Turn` from a `turns` row (a dict of its columns; JSON columns still encoded)."""
    audience = r.get("audience_json")
    decision = r.get("decision_json")
    return Turn(
        idx=r["idx"],
        agent=r["agent"],
        role=r["role"],
        text=r["text"],
        hidden=json.loads(r["hidden_json"] or "{}"),
        call_id=r["call_id"],
        kind=r.get("kind") or "line",
        audience=tuple(json.loads(audience)) if audience else None,
        decision=json.loads(decision) if decision else None,
    )


class RunLog:
    """Read-only access to a personae run database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_database(self.path)
        self._conn = sqlite3.connect(readonly_uri(self.path), uri=True)
        self._conn.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(sql, args)]

    def runs(self) -> list[dict[str, Any]]:
        """All runs, oldest first."""
        return self._rows("SELECT * FROM runs ORDER BY created_at")

    def run(self, run_id: str) -> dict[str, Any]:
        """One run's row (`UserError` if there is no such run)."""
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", run_id)
        if not rows:
            raise UserError(
                f"no such run: {run_id!r}",
                where=str(self.path),
                fix=f"list runs with: sqlite3 {self.path} 'select run_id, scenario from runs'",
            )
        return rows[0]

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of a read-only SQL query, as dicts (for tables without a method here)."""
        return self._rows(sql, *args)

    def episodes(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Episodes (of one run, or all), in run order."""
        if run_id:
            return self._rows("SELECT * FROM episodes WHERE run_id = ? ORDER BY idx", run_id)
        return self._rows(
            "SELECT e.* FROM episodes e JOIN runs r USING (run_id) ORDER BY r.created_at, e.idx"
        )

    def resolve_episode(self, episode: str) -> str:
        """Full episode id for a 0-based index into `episodes()` (the `#` that `show` lists;
        it wins over an id prefix made of digits), a full id, or a unique id prefix."""
        if episode.isdigit() and len(episode) < 16:
            eps = self.episodes()
            if int(episode) < len(eps):
                return str(eps[int(episode)]["episode_id"])
        rows = self._rows(
            "SELECT episode_id FROM episodes WHERE substr(episode_id, 1, length(?)) = ?",
            episode,
            episode,
        )
        if len(rows) == 1:
            return str(rows[0]["episode_id"])
        detail = "matches several episodes" if rows else "no such episode"
        raise UserError(
            f"{detail}: {episode!r}",
            where=str(self.path),
            fix=f"list episode ids with 'personae show {self.path}'",
        )

    def episode(self, episode_id: str) -> dict[str, Any]:
        """The episode row (condition and personas decoded)."""
        full = self.resolve_episode(episode_id)
        row = self._rows("SELECT * FROM episodes WHERE episode_id = ?", full)[0]
        row["condition"] = json.loads(row.pop("condition_json") or "{}")
        row["personas"] = json.loads(row.pop("personas_json") or "{}")
        return row

    def turns(self, episode_id: str) -> list[Turn]:
        """The episode's turns in order."""
        full = self.resolve_episode(episode_id)
        return [
            turn_from_row(r)
            for r in self._rows("SELECT * FROM turns WHERE episode_id = ? ORDER BY idx", full)
        ]

    def has_table(self, name: str) -> bool:
        """Whether the database has table `name` (older versions lack some)."""
        return bool(
            self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name)
        )

    def judgments(self, episode_id: str | None = None) -> list[dict[str, Any]]:
        """Judgments (of one episode, or all), `parsed` decoded, in turn order."""
        if not self.has_table("judgments"):
            return []
        if episode_id is None:
            rows = self._rows("SELECT * FROM judgments ORDER BY episode_id, turn_idx, judge")
        else:
            full = self.resolve_episode(episode_id)
            rows = self._rows(
                "SELECT * FROM judgments WHERE episode_id = ? ORDER BY turn_idx, judge", full
            )
        for row in rows:
            row["parsed"] = json.loads(row.pop("parsed_json") or "null")
        return rows

    def outcomes(self, episode_ids: Sequence[str]) -> dict[str, Any]:
        """`outcome_json` of the complete episodes among `episode_ids`, decoded, by id."""
        found: dict[str, Any] = {}
        ids = list(episode_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            for r in self._rows(
                f"SELECT * FROM episodes WHERE status = 'complete' AND episode_id IN ({marks})",
                *chunk,
            ):
                found[r["episode_id"]] = json.loads(r.get("outcome_json") or "null")
        return found

    def calls(self, episode_id: str) -> list[dict[str, Any]]:
        """The episode's model calls in order."""
        full = self.resolve_episode(episode_id)
        return self._rows(
            "SELECT * FROM llm_calls WHERE episode_id = ? ORDER BY turn_idx, call_id", full
        )

    def summary(self, run_id: str | None = None) -> dict[str, Any]:
        """Counts and token totals (of one run, or all)."""
        where, args = ("WHERE e.run_id = ?", (run_id,)) if run_id else ("", ())
        row = self._conn.execute(
            f"""SELECT count(DISTINCT e.episode_id) AS episodes,
                       sum(e.status = 'complete') AS complete,
                       sum(e.status = 'failed') AS failed
                FROM episodes e {where}""",
            args,
        ).fetchone()
        calls = self._conn.execute(
            f"""SELECT count(*) AS calls, coalesce(sum(c.prompt_tokens), 0) AS prompt_tokens,
                       coalesce(sum(c.completion_tokens), 0) AS completion_tokens,
                       coalesce(sum(c.cached_tokens), 0) AS cached_tokens,
                       coalesce(sum(c.cache_hit), 0) AS cache_hits
                FROM llm_calls c JOIN episodes e USING (episode_id) {where}""",
            args,
        ).fetchone()
        turns = self._conn.execute(
            f"SELECT count(*) FROM turns t JOIN episodes e USING (episode_id) {where}", args
        ).fetchone()[0]
        return {**dict(row), **dict(calls), "turns": turns}
