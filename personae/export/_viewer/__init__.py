"""The conversation viewer: what `personae browse` adds to datasette.

A prepared snapshot (`prepare_snapshot`: current schema, an FTS index on utterances, the
`episode_list` table), datasette metadata for it (`viewer_metadata`: titles, facets, sort
orders, the stylesheet), and the plugin hooks (`hooks`): the chat, prompt and search pages as
routes, cells that link episodes and prompts and fold long JSON, and menu links. Templates
and the stylesheet ship beside this file (`TEMPLATES`, `STATIC`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from personae.export._viewer._metadata import STATIC_MOUNT, viewer_metadata
from personae.export._viewer._snapshot import EPISODE_LIST, Snapshot, prepare_snapshot
from personae.export._viewer._urls import (
    EPISODE_ROUTE,
    PROMPT_ROUTE,
    SEARCH_ROUTE,
    search_url,
    table_url,
)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def hooks(databases: frozenset[str]) -> dict[str, Callable[..., Any]]:
    """Datasette hook implementations (by hook name) for browsing `databases`."""
    from personae.export._viewer import _cells, _pages

    def register_routes(datasette: Any) -> list[tuple[str, Callable[..., Any]]]:
        return [
            (EPISODE_ROUTE, _pages.episode),
            (PROMPT_ROUTE, _pages.prompt),
            (SEARCH_ROUTE, _pages.search),
        ]

    def render_cell(row: Any, value: Any, column: str, database: str) -> Any:
        return _cells.render_cell(row, value, column, database, databases)

    def menu_links(datasette: Any) -> list[dict[str, str]]:
        links = []
        for name in sorted(databases):
            suffix = f" ({name})" if len(databases) > 1 else ""
            links.append({"href": table_url(name, EPISODE_LIST), "label": f"Episodes{suffix}"})
            links.append({"href": search_url(name), "label": f"Search what was said{suffix}"})
        return links

    return {
        "register_routes": register_routes,
        "render_cell": render_cell,
        "menu_links": menu_links,
    }


__all__ = [
    "EPISODE_LIST",
    "STATIC",
    "STATIC_MOUNT",
    "TEMPLATES",
    "Snapshot",
    "hooks",
    "prepare_snapshot",
    "viewer_metadata",
]
