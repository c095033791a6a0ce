"""An episode as a chat: the rows of one episode arranged for the episode page.

`chat_page` takes the stored rows (episode, turns, judgments, model calls, forks) and returns
the template's context: every turn in order with its speaker (persona name, agent, a colour
that stays the agent's for the whole page), its audience if private, its hidden state and
turn-policy decision (shown folded), links to the prompts behind it, the judges' verdicts on
it, and markers where a fork leaves this episode or where this fork left its parent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from personae.export._tables import _flat_condition
from personae.export._viewer._urls import episode_url, prompt_url, row_url, table_url
from personae.store._labels import condition_text, verdict_text
from personae.store._reader import turn_from_row

#: Distinct speaker colours (CSS classes `speaker-0` … `speaker-7`); more agents reuse them.
PALETTE_SIZE = 8
_KIND_TAGS = {"seed": "seed line", "feedback": "judge's feedback"}

Row = Mapping[str, Any]


def _pretty(value: Any) -> str | None:
    if value in (None, {}, [], ""):
        return None
    return json.dumps(value, indent=2, ensure_ascii=False)


def _decoded(raw: str | None) -> Any:
    return json.loads(raw) if raw else None


def _verdict(database: str, row: Row, calls: set[str]) -> dict[str, Any]:
    parsed = _decoded(row.get("parsed_json"))
    judgment = {**row, "parsed": parsed}
    call_id = row.get("call_id")
    return {
        "judge": row["judge"],
        "rubric": row.get("rubric"),
        "valid": bool(row.get("valid")),
        "score": row.get("score"),
        "text": verdict_text(judgment),
        "prompt_url": prompt_url(database, call_id) if call_id in calls else None,
    }


def _prompt_link(database: str, call: Row, own: str | None) -> dict[str, str]:
    """A link to a call made at a turn: the turn's own call is "prompt", others name their
    purpose."""
    label = "prompt" if call["call_id"] == own else f"prompt: {call['purpose']}"
    return {"label": label, "url": prompt_url(database, str(call["call_id"]))}


def _speakers(personas: Mapping[str, Any], turns: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Each agent's display name and colour: scenario order first, then order of speaking."""
    order = list(personas) + [t["agent"] for t in turns if t["agent"] not in personas]
    speakers: dict[str, dict[str, Any]] = {}
    for agent in order:
        if agent in speakers:
            continue
        persona = personas.get(agent)
        name = persona.get("name") if isinstance(persona, dict) else None
        speakers[agent] = {
            "agent": agent,
            "name": name if isinstance(name, str) and name else agent,
            "colour": len(speakers) % PALETTE_SIZE,
            "persona": _pretty(persona),
        }
    return speakers


def _fork_marks(
    database: str, episode: Row, forks: Sequence[Row], n_turns: int
) -> dict[int, list[dict[str, Any]]]:
    """Markers by the turn they stand before (`n_turns`: after the last turn)."""
    marks: dict[int, list[dict[str, Any]]] = {}
    parent = episode.get("parent_episode_id")
    if parent and episode.get("fork_turn") is not None:
        turn = int(episode["fork_turn"])
        marks.setdefault(min(turn, n_turns), []).append(
            {"kind": "forked-here", "episode_id": parent, "turn": turn,
             "url": episode_url(database, parent, turn)}
        )  # fmt: skip
    for fork in forks:
        turn = int(fork["fork_turn"] or 0)
        marks.setdefault(min(turn, n_turns), []).append(
            {"kind": "fork-leaves", "episode_id": fork["episode_id"], "turn": turn,
             "status": fork.get("status"), "url": episode_url(database, fork["episode_id"], turn)}
        )  # fmt: skip
    return marks


def chat_page(
    database: str,
    episode: Row,
    turns: Sequence[Row],
    judgments: Sequence[Row],
    calls: Sequence[Row],
    forks: Sequence[Row],
) -> dict[str, Any]:
    """The episode page's template context (see the module docstring).

    Args:
        database: The datasette database name (for links).
        episode: The `episodes` row.
        turns: Its `turns` rows, in turn order.
        judgments: Its `judgments` rows.
        calls: Its `llm_calls` rows (`call_id`, `turn_idx`, `agent`, `purpose` suffice).
        forks: `episodes` rows forked from it.
    """
    episode_id = str(episode["episode_id"])
    condition = _decoded(episode.get("condition_json")) or {}
    personas = _decoded(episode.get("personas_json")) or {}
    speakers = _speakers(personas, turns)
    known_calls = {str(c["call_id"]) for c in calls}
    judge_calls = {str(j["call_id"]) for j in judgments if j.get("call_id")}
    verdicts: dict[int | None, list[dict[str, Any]]] = {}
    for row in judgments:
        verdicts.setdefault(row.get("turn_idx"), []).append(_verdict(database, row, known_calls))
    extra_calls: dict[int, list[Row]] = {}
    for call in calls:
        if call["call_id"] not in judge_calls and call.get("turn_idx") is not None:
            extra_calls.setdefault(int(call["turn_idx"]), []).append(call)
    marks = _fork_marks(database, episode, forks, len(turns))
    items = []
    for row in turns:
        turn = turn_from_row(dict(row))
        own_first = sorted(
            extra_calls.get(turn.idx, []), key=lambda c: c["call_id"] != turn.call_id
        )
        prompts = [_prompt_link(database, c, turn.call_id) for c in own_first]
        items.append(
            {
                "idx": turn.idx,
                "agent": turn.agent,
                "role": turn.role,
                "speaker": speakers[turn.agent],
                "kind": turn.kind,
                "tag": _KIND_TAGS.get(turn.kind),
                "text": turn.text,
                "audience": list(turn.audience) if turn.audience is not None else None,
                "hidden": _pretty(turn.hidden),
                "decision": _pretty(turn.decision),
                "prompts": prompts,
                "verdicts": verdicts.get(turn.idx, []),
                "marks": marks.get(turn.idx, []),
            }
        )
    scores = [
        v["score"] for vs in verdicts.values() for v in vs if v["valid"] and v["score"] is not None
    ]
    return {
        "database": database,
        "episode": {
            "id": episode_id,
            "scenario": episode.get("scenario"),
            "condition": condition_text(condition),
            "fields": _flat_condition(condition),
            "status": episode.get("status"),
            "end_reason": episode.get("end_reason"),
            "n_turns": episode.get("n_turns"),
            "seed": episode.get("seed"),
            "run_id": episode.get("run_id"),
            "started_at": episode.get("started_at"),
            "finished_at": episode.get("finished_at"),
            "error": episode.get("error"),
            "outcome": _pretty(_decoded(episode.get("outcome_json"))),
            "mean_score": round(sum(scores) / len(scores), 3) if scores else None,
        },
        "speakers": list(speakers.values()),
        "turns": items,
        "end_marks": marks.get(len(turns), []),
        "episode_verdicts": verdicts.get(None, []),
        "tables": {
            "episode row": row_url(database, "episodes", episode_id),
            "turns": table_url(database, "turns", episode_id=episode_id, _sort="idx"),
            "model calls": table_url(database, "llm_calls", episode_id=episode_id),
            "verdicts": table_url(database, "judgments", episode_id=episode_id),
        },
    }
