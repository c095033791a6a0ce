"""Datasette metadata for a prepared snapshot: titles, descriptions, facets, sort orders.

The metadata is what datasette's own pages show without any code: the episode list with its
facets, the `turns` table sorted by episode (and so in turn order: turns are written in order),
and links to the episode list and a search form on the home page.
"""

from __future__ import annotations

from html import escape
from typing import Any

from personae.export._viewer._snapshot import EPISODE_LIST, FTS_TABLE, Snapshot
from personae.export._viewer._urls import search_url, table_url

#: Where the viewer's stylesheet is served (`datasette --static`).
STATIC_MOUNT = "personae-static"

_EPISODE_LIST_TEXT = (
    "One row per episode: n is its number in 'personae show DB N'; one column per condition "
    "field that differs between episodes; mean_score averages its valid judge verdicts. "
    "Click an episode id to read the conversation."
)


def _home_html(database: str) -> str:
    episodes = escape(table_url(database, EPISODE_LIST))
    search = escape(search_url(database))
    return (
        f'<p class="personae-home"><a href="{episodes}">Episodes</a>: every conversation, '
        "with its condition, status and scores; open one to read it as a chat.</p>"
        f'<form class="personae-search" action="{search}" method="get">'
        '<input type="search" name="q" placeholder="Search what was said" '
        'aria-label="Search what was said"> <input type="submit" value="Search"></form>'
    )


def viewer_metadata(snapshot: Snapshot) -> dict[str, Any]:
    """The `datasette --metadata` document for one prepared snapshot."""
    name = snapshot.path.stem
    home = _home_html(name)
    return {
        "title": f"personae · {name}",
        "description_html": home,
        "extra_css_urls": [f"/{STATIC_MOUNT}/viewer.css"],
        "databases": {
            name: {
                "description_html": home,
                "tables": {
                    EPISODE_LIST: {
                        "title": "Episodes",
                        "description": _EPISODE_LIST_TEXT,
                        "facets": list(snapshot.facets),
                        "sort": "n",
                        "size": 100,
                    },
                    "turns": {
                        "description": "Every logged turn, grouped by episode in turn order; "
                        "audience_json names who heard a private line.",
                        "sort": "episode_id",
                        "facets": ["agent", "kind"],
                        "fts_table": FTS_TABLE,
                        "fts_pk": "id",
                        "searchmode": "escaped",
                    },
                    "judgments": {
                        "description": "Judges' verdicts: a turn (turn_idx) or a whole episode.",
                        "sort": "episode_id",
                        "facets": ["judge", "valid"],
                    },
                    "llm_calls": {
                        "description": "Every model call: rendered prompt, params, reply.",
                        "facets": ["purpose", "agent"],
                    },
                },
            }
        },
    }
