"""One-line labels for stored records, shared by every reader that shows them to a person.

`condition_text` names an episode's condition by its values; `verdict_text` says what a judge
decided. `personae show` prints them, and the browser shows the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def condition_text(condition: Mapping[str, Any]) -> str:
    """An episode's condition as its values, e.g. 'cbt · margaret_grief · upset'."""
    values: list[str] = []
    for key, fields in condition.items():
        if isinstance(fields, dict):
            values.extend(str(v) for v in fields.values() if v is not None)
        elif key != "repeat":
            values.append(f"{key}={fields}")
    return " · ".join(values)


def verdict_text(row: Mapping[str, Any]) -> str:
    """A judgment in one line: its scores (or code) and rationale, or why it is invalid.

    `row` is a `judgments` row with `parsed` decoded (as `RunLog.judgments` returns it).
    """
    parsed = row.get("parsed")
    if not row.get("valid") or not isinstance(parsed, dict):
        return f"invalid ({row.get('error')})"
    rationale = str(parsed.get("rationale") or "").strip()
    scores = ", ".join(f"{k} {v}" for k, v in parsed.items() if k != "rationale")
    return f"{scores}" + (f" — {rationale}" if rationale else "")


def speaker_text(agent: str, personas: Mapping[str, Any]) -> str:
    """How a speaker is named to a reader: the username its persona gives it (a discussion's
    participants speak under theirs), else its agent name."""
    persona = personas.get(agent)
    username = persona.get("username") if isinstance(persona, Mapping) else None
    return str(username) if username else agent
