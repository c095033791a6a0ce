"""Synthetic computer-use databases with planted rates, for the report tests.

They are written as a run writes them: the store creates the schema (`open_database`) and one
`TurnLogWriter` queues the rows; each episode has one turn and the judge's episode verdict.

`planted_episodes()` plants, per pattern x prompting condition, `PER_CELL` (20) episodes with
a valid verdict, of which `BGD[pattern][prompting]` are judged BGD and the first half of those
(rounded down) also completion. The state checks hit exactly where the judge says completion,
except in the first `FLIPS[pattern]` episodes of each cell, where they say the opposite. Episode
`i` of a cell ends `ENDS[i % 5]` after `i % 15 + 1` steps. On top, the contextual/default cell
has `INVALID` (2) episodes with an invalid verdict and `MISSING` (1) without one (ending
`max_steps`), and the run has one failed episode with no outcome.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae.store import TurnLogWriter, open_database

PATTERNS = ("contextual", "ambiguity", "contradictory")
PROMPTINGS = ("default", "contextual", "reflective")
ENDS = ("done", "fail", "ask", "max_steps", "env_done")
PER_CELL = 20
BGD = {
    "contextual": {"default": 16, "contextual": 10, "reflective": 6},
    "ambiguity": {"default": 14, "contextual": 8, "reflective": 4},
    "contradictory": {"default": 12, "contextual": 12, "reflective": 2},
}
FLIPS = {"contextual": 0, "ambiguity": 2, "contradictory": 5}
INVALID, MISSING = 2, 1


@dataclass
class Planted:
    """One episode: its cell, the judge's verdict (None: invalid; `judged` False: none)."""

    pattern: str
    prompting: str
    index: int
    bgd: bool | None
    completion: bool | None
    check_hit: bool
    end: str
    steps: int
    judged: bool = True
    backend: str | None = None

    @property
    def episode_id(self) -> str:
        model = f"-{self.backend}" if self.backend else ""
        return f"{self.pattern}-{self.prompting}{model}-{self.index:03d}"


def planted_episodes(backend: str | None = None) -> list[Planted]:
    """The planted study of the module docstring (`backend`: given in each condition)."""
    found = []
    for pattern in PATTERNS:
        for prompting in PROMPTINGS:
            n_bgd = BGD[pattern][prompting]
            for i in range(PER_CELL):
                bgd, completion = i < n_bgd, i < n_bgd // 2
                hit = completion if i >= FLIPS[pattern] else not completion
                found.append(Planted(pattern, prompting, i, bgd, completion, hit, ENDS[i % 5],
                                     i % 15 + 1, backend=backend))  # fmt: skip
            if (pattern, prompting) == ("contextual", "default"):
                for k in range(INVALID + MISSING):
                    found.append(Planted(pattern, prompting, PER_CELL + k, None, None, True,
                                         "max_steps", 15, judged=k < INVALID,
                                         backend=backend))  # fmt: skip
    return found


def _rows(run_id: str, idx: int, p: Planted) -> list[tuple[str, str, dict[str, Any]]]:
    agent: dict[str, Any] = {"persona": None, "prompting": p.prompting}
    if p.backend is not None:
        agent["backend"] = p.backend
    outcome = {
        "task": f"{p.pattern}-task{p.index % 2}", "pattern": p.pattern,
        "prompting": p.prompting, "end": p.end, "steps": p.steps, "parse_failures": p.index % 3,
        "checks": {"undesired": p.check_hit}, "check_hit": p.check_hit, "state_diff": {},
    }  # fmt: skip
    condition = {"agent": agent, "graph": {"task": f"computer_use/tasks/{p.pattern}.yaml"},
                 "repeat": p.index}  # fmt: skip
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("upsert", "episodes", {
            "episode_id": p.episode_id, "run_id": run_id, "idx": idx, "scenario": "computer_use",
            "condition_json": json.dumps(condition), "personas_json": "{}", "seed": idx,
            "status": "complete", "end_reason": p.end, "n_turns": 1, "stage": 0,
            "outcome_json": json.dumps(outcome),
        }),
        ("insert", "turns", {
            "episode_id": p.episode_id, "idx": 0, "agent": "agent", "role": "computer_user",
            "kind": "line", "text": "sh ls", "call_id": None,
        }),
    ]  # fmt: skip
    if p.judged:
        parsed = (
            {"bgd": p.bgd, "completion": p.completion, "rationale": "r"}
            if p.bgd is not None
            else None
        )
        rows.append(("upsert", "judgments", {
            "judgment_id": f"{p.episode_id}:bgd", "episode_id": p.episode_id, "turn_idx": None,
            "judge": "bgd_judge", "rubric": "bgd",
            "raw": json.dumps(parsed) if parsed else "no JSON here",
            "parsed_json": json.dumps(parsed) if parsed else None, "valid": int(bool(parsed)),
            "error": None if parsed else "not JSON", "score": None,
        }))  # fmt: skip
    return rows


def write_computer_use(
    path: Path, episodes: list[Planted], *, run_id: str = "run-1", failed: int = 1
) -> Path:
    """Write `episodes` (and `failed` failed episodes) as one run into the database `path`."""
    open_database(path, create=True).conn.close()

    async def write() -> None:
        async with TurnLogWriter(path) as writer:
            writer.upsert("runs", {
                "run_id": run_id, "scenario": "computer_use",
                "spec_json": json.dumps({"name": "computer_use"}), "backend": "scripted",
                "seed": 0, "status": "partial" if failed else "complete",
                "created_at": f"2026-01-01T00:00:0{run_id[-1]}Z", "study": "scenario",
            })  # fmt: skip
            for idx, p in enumerate(episodes):
                for op, table, row in _rows(run_id, idx, p):
                    getattr(writer, op)(table, row)
            for k in range(failed):
                writer.upsert("episodes", {
                    "episode_id": f"{run_id}-failed-{k}", "run_id": run_id,
                    "idx": len(episodes) + k, "scenario": "computer_use",
                    "condition_json": "{}", "personas_json": "{}", "seed": 0,
                    "status": "failed", "end_reason": "error", "error": "boom", "n_turns": 0,
                    "stage": 0,
                })  # fmt: skip

    asyncio.run(write())
    return path
