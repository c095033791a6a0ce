"""The viewer's own pages, served as datasette routes: an episode's chat, a prompt, search.

Each handler reads the snapshot through datasette's `Database` (its read connection, in its
thread pool) and renders a template from `templates/` that extends datasette's `base.html`,
so the pages share datasette's look, navigation and stylesheet hooks. Unknown databases,
episodes or calls get datasette's error page with status 404 (rendered here: datasette's own
exception handler prints a traceback with locals for every 404, which takes a second); an
episode id may be abbreviated to a unique prefix (redirected).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from datasette.utils import escape_fts, tilde_decode
from datasette.utils.asgi import Request, Response
from markupsafe import Markup

from personae.export._viewer._chat import chat_page
from personae.export._viewer._snapshot import EPISODE_LIST, FTS_TABLE
from personae.export._viewer._urls import episode_url, row_url, search_url, table_url
from personae.store._labels import condition_text

#: Search results shown (best first); the page says how many matched in all.
SEARCH_LIMIT = 100
_MARK_START, _MARK_END = "\x02", "\x03"


def _rows(results: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in results.rows]


class _NotFound(Exception):
    """Raised inside a handler; answered with a 404 page (see `_answer`)."""


async def _database(datasette: Any, request: Request) -> tuple[str, Any]:
    """The URL's database, if it is a prepared snapshot (it has the episode list)."""
    name = tilde_decode(request.url_vars["database"])
    try:
        db = datasette.get_database(name)
    except KeyError:
        raise _NotFound(f"no database {name!r}") from None
    if not await db.table_exists(EPISODE_LIST):
        raise _NotFound(f"{name!r} is not a personae run being browsed")
    return name, db


def _nav(name: str) -> dict[str, str]:
    return {"episodes": table_url(name, EPISODE_LIST), "search": search_url(name)}


async def _render(
    datasette: Any, request: Request, template: str, context: dict[str, Any], status: int = 200
) -> Response:
    html = await datasette.render_template(template, context, request=request)
    return Response.html(html, status=status)


def _answer(
    handler: Callable[[Any, Request], Awaitable[Response]],
) -> Callable[[Any, Request], Awaitable[Response]]:
    """`handler`, with `_NotFound` answered by datasette's error page and status 404."""

    @functools.wraps(handler)
    async def answered(datasette: Any, request: Request) -> Response:
        try:
            return await handler(datasette, request)
        except _NotFound as missing:
            context = {"ok": False, "error": str(missing), "status": 404, "title": None}
            return await _render(datasette, request, "error.html", context, status=404)

    return answered


@_answer
async def episode(datasette: Any, request: Request) -> Response:
    """`/DB/-/episode/ID`: the episode as a chat."""
    name, db = await _database(datasette, request)
    wanted = unquote(request.url_vars["episode_id"])
    found = _rows(
        await db.execute(
            "SELECT * FROM episodes WHERE episode_id = ? OR substr(episode_id, 1, ?) = ? LIMIT 2",
            [wanted, len(wanted), wanted],
        )
    )
    exact = [r for r in found if r["episode_id"] == wanted]
    if not exact and len(found) == 1:
        return Response.redirect(episode_url(name, found[0]["episode_id"]))
    if not exact:
        detail = "matches several episodes" if found else "no such episode"
        raise _NotFound(f"{detail}: {wanted!r}")
    row = exact[0]
    args = [row["episode_id"]]
    turns = _rows(await db.execute("SELECT * FROM turns WHERE episode_id = ? ORDER BY idx", args))
    judgments = _rows(
        await db.execute(
            "SELECT * FROM judgments WHERE episode_id = ? ORDER BY turn_idx, judge", args
        )
    )
    calls = _rows(
        await db.execute(
            "SELECT call_id, turn_idx, agent, purpose FROM llm_calls WHERE episode_id = ? "
            "ORDER BY turn_idx, call_id",
            args,
        )
    )
    forks = _rows(
        await db.execute(
            "SELECT episode_id, fork_turn, status FROM episodes WHERE parent_episode_id = ? "
            "ORDER BY fork_turn, episode_id",
            args,
        )
    )
    context = chat_page(name, row, turns, judgments, calls, forks)
    return await _render(
        datasette, request, "personae_episode.html", {**context, "nav": _nav(name)}
    )


def _messages(raw: str | None) -> list[dict[str, str]] | None:
    if not raw:
        return None
    decoded = json.loads(raw)
    if not isinstance(decoded, list):
        return [{"role": "messages", "content": json.dumps(decoded, indent=2)}]
    shown = []
    for message in decoded:
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else json.dumps(content, indent=2)
            shown.append({"role": str(message.get("role", "")), "content": text})
        else:
            shown.append({"role": "", "content": json.dumps(message)})
    return shown


@_answer
async def prompt(datasette: Any, request: Request) -> Response:
    """`/DB/-/prompt/CALL_ID`: the rendered prompt (or messages) of one model call, its reply."""
    name, db = await _database(datasette, request)
    call_id = unquote(request.url_vars["call_id"])
    call = (await db.execute("SELECT * FROM llm_calls WHERE call_id = ?", [call_id])).first()
    if call is None:
        raise _NotFound(f"no model call {call_id!r}")
    call = dict(call)
    params = json.loads(call["params_json"]) if call.get("params_json") else None
    turn = call.get("turn_idx")
    context = {
        "database": name,
        "nav": _nav(name),
        "call": call,
        "params": json.dumps(params, indent=2, ensure_ascii=False) if params else None,
        "messages": _messages(call.get("messages_json")),
        "turn_url": episode_url(name, call["episode_id"], turn) if call.get("episode_id") else None,
        "row_url": row_url(name, "llm_calls", call_id),
    }
    return await _render(datasette, request, "personae_prompt.html", context)


def _snippet(raw: str) -> Markup:
    """An FTS snippet, escaped, with the matched words in `<mark>`."""
    escaped = str(Markup.escape(raw))
    return Markup(escaped.replace(_MARK_START, "<mark>").replace(_MARK_END, "</mark>"))


@_answer
async def search(datasette: Any, request: Request) -> Response:
    """`/DB/-/search?q=...`: turns whose text matches, best first, each linking to its turn.

    Words are matched as words (stemmed); `raw=1` passes the query to FTS5 as written (prefixes
    `evict*`, `OR`, `NEAR`, phrases), and its syntax errors are shown on the page.
    """
    name, db = await _database(datasette, request)
    q = (request.args.get("q") or "").strip()
    raw = request.args.get("raw") == "1"
    context: dict[str, Any] = {
        "database": name, "nav": _nav(name), "q": q, "raw": raw, "results": [],
        "total": 0, "limit": SEARCH_LIMIT, "error": None,
    }  # fmt: skip
    match = q if raw else escape_fts(q)
    if match:
        try:
            total = (
                await db.execute(
                    f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?", [match]
                )
            ).single_value()
            hits = _rows(
                await db.execute(
                    f"""SELECT t.episode_id, t.idx, t.agent, t.kind, t.audience_json,
                               e.scenario, e.condition_json,
                               snippet({FTS_TABLE}, 0, char(2), char(3), '…', 24) AS snippet
                        FROM {FTS_TABLE}
                        JOIN turns t ON t.id = {FTS_TABLE}.rowid
                        JOIN episodes e ON e.episode_id = t.episode_id
                        WHERE {FTS_TABLE} MATCH ? ORDER BY rank LIMIT ?""",
                    [match, SEARCH_LIMIT],
                )
            )
        except sqlite3.OperationalError as exc:
            context["error"] = str(exc)
        else:
            context["total"] = total
            context["results"] = [
                {
                    "episode_id": h["episode_id"],
                    "idx": h["idx"],
                    "agent": h["agent"],
                    "scenario": h["scenario"],
                    "condition": condition_text(json.loads(h["condition_json"] or "{}")),
                    "audience": json.loads(h["audience_json"]) if h["audience_json"] else None,
                    "snippet": _snippet(h["snippet"] or ""),
                    "url": episode_url(name, h["episode_id"], h["idx"]),
                }
                for h in hits
            ]
    return await _render(datasette, request, "personae_search.html", context)
