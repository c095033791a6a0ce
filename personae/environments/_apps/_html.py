"""Requests, responses and the HTML the apps are made of: plain server-rendered pages with
forms. Every control carries a `data-key` naming it for good (`note-3-delete`), which the
environment turns into the element's stable ref."""

from __future__ import annotations

import html
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Request:
    """One request to an app: the logged-in user, the database and the submitted form."""

    method: str
    path: str
    user: str
    db: sqlite3.Connection
    args: tuple[str, ...] = ()
    form: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """A page (`body`), or a redirect to `location` (303, after a form is handled)."""

    status: int = 200
    body: str = ""
    location: str | None = None


Handler = Callable[[Request], Response]

NAV = (
    ("notes", "/notes"),
    ("social", "/social"),
    ("messages", "/social/messages"),
    ("files", "/files"),
    ("settings", "/settings"),
)


def esc(text: object) -> str:
    """`text` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def redirect(location: str) -> Response:
    """See `location` next (the pattern after every form post)."""
    return Response(303, location=location)


def not_found(req: Request, what: str = "page") -> Response:
    """A 404 page saying what is missing."""
    body = f"<p>There is no such {esc(what)}.</p>"
    return page(req, "Not found", body, status=404)


def page(req: Request, title: str, body: str, *, status: int = 200) -> Response:
    """`body` inside the common layout: a title, the apps' navigation and who is logged in."""
    nav = " ".join(link(f"nav-{name}", href, name.capitalize()) for name, href in NAV)
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title></head><body>"
        f"<nav aria-label=Apps>{nav}</nav><p>Signed in as {esc(req.user)}</p>"
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )
    return Response(status, doc)


def link(key: str, href: str, text: str) -> str:
    """A link."""
    return f'<a data-key="{esc(key)}" href="{esc(href)}">{esc(text)}</a>'


def form(action: str, label: str, *controls: str) -> str:
    """A POST form named `label` (its accessible name) holding `controls`."""
    return (
        f'<form method=post action="{esc(action)}" aria-label="{esc(label)}">'
        + "".join(controls)
        + "</form>"
    )


def button(key: str, text: str) -> str:
    """A submit button."""
    return f'<button data-key="{esc(key)}" type=submit>{esc(text)}</button>'


def text_field(key: str, name: str, label: str, value: str = "", *, kind: str = "text") -> str:
    """A labelled one-line input."""
    return (
        f'<p><label for="{esc(key)}">{esc(label)}</label> '
        f'<input data-key="{esc(key)}" id="{esc(key)}" type={kind} name="{esc(name)}" '
        f'value="{esc(value)}"></p>'
    )


def text_area(key: str, name: str, label: str, value: str = "") -> str:
    """A labelled multi-line input."""
    return (
        f'<p><label for="{esc(key)}">{esc(label)}</label> '
        f'<textarea data-key="{esc(key)}" id="{esc(key)}" name="{esc(name)}">{esc(value)}'
        "</textarea></p>"
    )


def choice(key: str, name: str, label: str, options: Iterable[str], selected: str) -> str:
    """A labelled drop-down list."""
    opts = "".join(
        f'<option value="{esc(o)}"{" selected" if o == selected else ""}>{esc(o)}</option>'
        for o in options
    )
    return (
        f'<p><label for="{esc(key)}">{esc(label)}</label> '
        f'<select data-key="{esc(key)}" id="{esc(key)}" name="{esc(name)}">{opts}</select></p>'
    )


def field_of(req: Request, name: str, limit: int = 100_000) -> str:
    """The submitted form field `name` (stripped, cut at `limit` characters), or ''."""
    return req.form.get(name, "").strip()[:limit]
