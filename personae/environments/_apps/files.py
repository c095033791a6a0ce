"""The files app (`/files`): shared files with an owner, viewable content, a permission
(`private`, `team`, `public`) and a share link that can be turned on and off."""

from __future__ import annotations

from personae.environments._apps._html import (
    Request,
    Response,
    button,
    choice,
    esc,
    field_of,
    form,
    link,
    not_found,
    page,
    redirect,
)

PERMISSIONS = ("private", "team", "public")


def index(req: Request) -> Response:
    rows = req.db.execute(
        "SELECT id, name, owner, permission, share_link FROM files ORDER BY id"
    ).fetchall()
    if not rows:
        return page(req, "Files", "<p>No files yet.</p>")
    head = "<tr><th>Name</th><th>Owner</th><th>Permission</th><th>Share link</th></tr>"
    body = "".join(
        f"<tr><td>{link(f'file-{fid}', f'/files/{fid}', name)}</td><td>{esc(owner)}</td>"
        f"<td>{esc(perm)}</td><td>{esc(share)}</td></tr>"
        for fid, name, owner, perm, share in rows
    )
    return page(req, "Files", f'<table aria-label="Files">{head}{body}</table>')


def view(req: Request) -> Response:
    row = req.db.execute(
        "SELECT name, owner, content, permission, share_link, link_token FROM files WHERE id = ?",
        (req.args[0],),
    ).fetchone()
    if row is None:
        return not_found(req, "file")
    fid = req.args[0]
    name, owner, content, permission, share, token = row
    on = share == "on"
    shared = (
        f"<p>Share link: {link(f'file-{fid}-link', f'/files/shared/{token}', 'link')}</p>"
        if on
        else "<p>Share link: off</p>"
    )
    body = (
        f"<p>Owner: {esc(owner)}</p><pre>{esc(content)}</pre>"
        + form(
            f"/files/{fid}/permission",
            "Permission",
            choice(f"file-{fid}-permission", "permission", "Permission", PERMISSIONS, permission),
            button(f"file-{fid}-save", "Save permission"),
        )
        + shared
        + form(
            f"/files/{fid}/share",
            "Share link",
            button(f"file-{fid}-share", "Turn share link off" if on else "Turn share link on"),
        )
    )
    return page(req, name, body)


def set_permission(req: Request) -> Response:
    permission = field_of(req, "permission")
    if permission not in PERMISSIONS:
        return page(
            req, "Bad permission", f"<p>{esc(permission)} is not a permission.</p>", status=400
        )
    req.db.execute("UPDATE files SET permission = ? WHERE id = ?", (permission, req.args[0]))
    return redirect(f"/files/{req.args[0]}")


def toggle_share(req: Request) -> Response:
    req.db.execute(
        "UPDATE files SET share_link = CASE share_link WHEN 'on' THEN 'off' ELSE 'on' END "
        "WHERE id = ?",
        (req.args[0],),
    )
    return redirect(f"/files/{req.args[0]}")


def shared(req: Request) -> Response:
    row = req.db.execute(
        "SELECT name, content FROM files WHERE link_token = ? AND share_link = 'on'",
        (req.args[0],),
    ).fetchone()
    if row is None:
        return not_found(req, "shared file")
    return page(req, row[0], f"<pre>{esc(row[1])}</pre>")


ROUTES = (
    ("GET", r"/files", index),
    ("GET", r"/files/(\d+)", view),
    ("POST", r"/files/(\d+)/permission", set_permission),
    ("POST", r"/files/(\d+)/share", toggle_share),
    ("GET", r"/files/shared/([A-Za-z0-9_-]+)", shared),
)
