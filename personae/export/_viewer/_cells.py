"""How datasette's own table and row pages show a personae database's cells.

Episode ids link to the episode's chat (at the row's turn, where the row has one), call ids to
the model call's prompt page, a private line's audience reads "to: X, Y", and long JSON or
prompt cells fold into a `<details>` showing their first characters, so `personas_json` or
`hidden_json` no longer push every other column off the screen.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from personae.export._viewer._urls import episode_url, prompt_url

_EPISODE_COLUMNS = frozenset({"episode_id", "parent_episode_id", "forked_from"})
_TURN_COLUMNS = ("idx", "turn_idx")
#: Cells of these columns fold away when long, as does any `*_json` column (utterances never).
_LONG_COLUMNS = frozenset({"prompt", "output", "raw", "error"})
_FOLD_AT = 80
_PREVIEW = 60


def _keys(row: Any) -> Mapping[str, Any]:
    try:
        return dict(row)
    except (TypeError, ValueError):  # not a row (a plain tuple)
        return {}


def _turn_of(row: Mapping[str, Any], column: str) -> int | None:
    if column != "episode_id":
        return None
    for key in _TURN_COLUMNS:
        value = row.get(key)
        if isinstance(value, int):
            return value
    return None


def _fold(value: str) -> Markup:
    try:
        body = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except ValueError:
        body = value
    preview = " ".join(value[:_PREVIEW].split())
    return Markup(
        '<details class="personae-fold"><summary>{}…</summary><pre>{}</pre></details>'
    ).format(preview, body)


def _audience(value: str) -> Markup | None:
    try:
        names = json.loads(value)
    except ValueError:
        return None
    if not isinstance(names, list):
        return None
    return Markup('<span class="personae-private">private · to: {}</span>').format(
        ", ".join(str(n) for n in names)
    )


def render_cell(
    row: Any, value: Any, column: str, database: str, databases: frozenset[str]
) -> Markup | None:
    """A cell's HTML for datasette's `render_cell` hook, or None to leave it to datasette.

    Only databases in `databases` (the snapshots being browsed) are touched.
    """
    if database not in databases:
        return None
    if isinstance(value, dict) and "value" in value:  # an expanded foreign key
        value = value["value"]
    if not isinstance(value, str) or not value:
        return None
    if column in _EPISODE_COLUMNS:
        turn = _turn_of(_keys(row), column)
        return Markup('<a class="personae-chat-link" href="{}">{}</a>').format(
            episode_url(database, value, turn), value
        )
    if column == "call_id":
        return Markup('<a class="personae-prompt-link" href="{}">{}</a>').format(
            prompt_url(database, value), value
        )
    if column == "audience_json":
        return _audience(value)
    if (column.endswith("_json") or column in _LONG_COLUMNS) and len(value) > _FOLD_AT:
        return _fold(value)
    return None
