"""The notes app (`/notes`): list, view, create, edit and delete notes."""

from __future__ import annotations

from personae.environments._apps._html import (
    Request,
    Response,
    button,
    esc,
    field_of,
    form,
    link,
    not_found,
    page,
    redirect,
    text_area,
    text_field,
)


def index(req: Request) -> Response:
    rows = req.db.execute("SELECT id, title FROM notes ORDER BY id").fetchall()
    items = "".join(f"<li>{link(f'note-{r[0]}', f'/notes/{r[0]}', r[1])}</li>" for r in rows)
    listing = f"<ul aria-label=Notes>{items}</ul>" if rows else "<p>No notes yet.</p>"
    return page(req, "Notes", link("note-new", "/notes/new", "New note") + listing)


def _editor(req: Request, title: str, action: str, note: tuple[str, str] = ("", "")) -> Response:
    body = form(
        action,
        title,
        text_field("note-title", "title", "Title", note[0]),
        text_area("note-body", "body", "Body", note[1]),
        button("note-save", "Save"),
    )
    return page(req, title, body)


def new(req: Request) -> Response:
    return _editor(req, "New note", "/notes/new")


def create(req: Request) -> Response:
    title = field_of(req, "title", 500) or "Untitled"
    cur = req.db.execute(
        "INSERT INTO notes (title, body) VALUES (?, ?)", (title, field_of(req, "body"))
    )
    return redirect(f"/notes/{cur.lastrowid}")


def _note(req: Request) -> tuple[str, str] | None:
    row = req.db.execute("SELECT title, body FROM notes WHERE id = ?", (req.args[0],)).fetchone()
    return None if row is None else (row[0], row[1])


def view(req: Request) -> Response:
    note = _note(req)
    if note is None:
        return not_found(req, "note")
    nid = req.args[0]
    body = (
        f"<pre>{esc(note[1])}</pre>"
        + link(f"note-{nid}-edit", f"/notes/{nid}/edit", "Edit")
        + form(f"/notes/{nid}/delete", "Delete note", button(f"note-{nid}-delete", "Delete"))
    )
    return page(req, note[0], body)


def edit(req: Request) -> Response:
    note = _note(req)
    if note is None:
        return not_found(req, "note")
    return _editor(req, "Edit note", f"/notes/{req.args[0]}/edit", note)


def update(req: Request) -> Response:
    if _note(req) is None:
        return not_found(req, "note")
    title = field_of(req, "title", 500) or "Untitled"
    req.db.execute(
        "UPDATE notes SET title = ?, body = ? WHERE id = ?",
        (title, field_of(req, "body"), req.args[0]),
    )
    return redirect(f"/notes/{req.args[0]}")


def delete(req: Request) -> Response:
    req.db.execute("DELETE FROM notes WHERE id = ?", (req.args[0],))
    return redirect("/notes")


ROUTES = (
    ("GET", r"/notes", index),
    ("GET", r"/notes/new", new),
    ("POST", r"/notes/new", create),
    ("GET", r"/notes/(\d+)", view),
    ("GET", r"/notes/(\d+)/edit", edit),
    ("POST", r"/notes/(\d+)/edit", update),
    ("POST", r"/notes/(\d+)/delete", delete),
)
