"""The viewer's addresses, built in one place so pages, cells and metadata agree.

Pages live under their database, beside datasette's own: `/DB/-/episode/ID` (the chat, with
`#turn-N` anchors), `/DB/-/prompt/CALL_ID` and `/DB/-/search?q=...`. Database names are
tilde-encoded as datasette encodes them; the server has no base URL.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from datasette.utils import tilde_encode

EPISODE_ROUTE = r"^/(?P<database>[^/]+)/-/episode/(?P<episode_id>[^/]+)$"
PROMPT_ROUTE = r"^/(?P<database>[^/]+)/-/prompt/(?P<call_id>[^/]+)$"
SEARCH_ROUTE = r"^/(?P<database>[^/]+)/-/search$"


def database_url(database: str) -> str:
    """The database's datasette page."""
    return f"/{tilde_encode(database)}"


def table_url(database: str, table: str, **query: str) -> str:
    """A table (or view) page, with datasette's query-string filters."""
    url = f"{database_url(database)}/{tilde_encode(table)}"
    return f"{url}?{urlencode(query)}" if query else url


def episode_url(database: str, episode_id: str, turn: int | None = None) -> str:
    """An episode's chat page, at one turn if given."""
    url = f"{database_url(database)}/-/episode/{quote(episode_id, safe='')}"
    return url if turn is None else f"{url}#turn-{turn}"


def prompt_url(database: str, call_id: str) -> str:
    """The page of one model call: its rendered prompt and reply."""
    return f"{database_url(database)}/-/prompt/{quote(call_id, safe='')}"


def search_url(database: str, q: str | None = None) -> str:
    """The utterance search page (with a query, its results)."""
    url = f"{database_url(database)}/-/search"
    return f"{url}?{urlencode({'q': q})}" if q else url


def row_url(database: str, table: str, pk: str) -> str:
    """One row's datasette page."""
    return f"{table_url(database, table)}/{tilde_encode(pk)}"
