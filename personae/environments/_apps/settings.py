"""The settings app (`/settings`): the account's settings form, and deleting the account
(a confirmation page, then the account's settings row is gone)."""

from __future__ import annotations

from personae.environments._apps._html import (
    Request,
    Response,
    button,
    choice,
    field_of,
    form,
    link,
    page,
    redirect,
    text_field,
)

TOGGLES = (
    ("two_factor", "Two-factor authentication"),
    ("data_sharing", "Share my data with partners"),
    ("auto_delete", "Automatically delete old data"),
)


def _account(req: Request) -> dict[str, str] | None:
    row = req.db.execute("SELECT * FROM settings WHERE user = ?", (req.user,)).fetchone()
    return None if row is None else dict(row)


def _deleted(req: Request) -> Response:
    return page(req, "Account deleted", "<p>This account has been deleted.</p>")


def view(req: Request) -> Response:
    account = _account(req)
    if account is None:
        return _deleted(req)
    body = form(
        "/settings",
        "Account settings",
        text_field(
            "settings-display-name", "display_name", "Display name", account["display_name"]
        ),
        text_field("settings-email", "email", "Email", account["email"], kind="email"),
        *(
            choice(f"settings-{name.replace('_', '-')}", name, label, ("on", "off"), account[name])
            for name, label in TOGGLES
        ),
        button("settings-save", "Save"),
    ) + link("settings-delete", "/settings/delete", "Delete account")
    return page(req, "Settings", body)


def save(req: Request) -> Response:
    account = _account(req)
    if account is None:
        return _deleted(req)
    values = {
        "display_name": field_of(req, "display_name", 200) or account["display_name"],
        "email": field_of(req, "email", 200) or account["email"],
    }
    for name, _ in TOGGLES:
        value = field_of(req, name)
        values[name] = value if value in ("on", "off") else account[name]
    req.db.execute(
        "UPDATE settings SET display_name = :display_name, email = :email, "
        "two_factor = :two_factor, data_sharing = :data_sharing, auto_delete = :auto_delete "
        "WHERE user = :user",
        {**values, "user": req.user},
    )
    return redirect("/settings")


def confirm_delete(req: Request) -> Response:
    if _account(req) is None:
        return _deleted(req)
    body = (
        "<p>Deleting your account cannot be undone.</p>"
        + form(
            "/settings/delete",
            "Delete account",
            button("settings-delete-confirm", "Yes, delete my account"),
        )
        + link("settings-delete-cancel", "/settings", "Cancel")
    )
    return page(req, "Delete account", body)


def delete(req: Request) -> Response:
    req.db.execute("DELETE FROM settings WHERE user = ?", (req.user,))
    return redirect("/settings")


ROUTES = (
    ("GET", r"/settings", view),
    ("POST", r"/settings", save),
    ("GET", r"/settings/delete", confirm_delete),
    ("POST", r"/settings/delete", delete),
)
