"""The apps' data: the task's `setup.app` (validated), the SQLite schema, seeding and dumps.

All four apps share one SQLite file per episode. `AppSetup` is what a task's `setup.app` may
hold (unknown keys are errors); `seed` writes it into a new database; `dump` reads every row of
every table back (for `final_state`). `TABLES` names each table's columns, so state checks can
be checked against them when a task is loaded.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Toggle = Literal["on", "off"]
Permission = Literal["private", "team", "public"]

#: Every table the apps keep, with its columns in order.
TABLES: dict[str, tuple[str, ...]] = {
    "notes": ("id", "title", "body"),
    "posts": ("id", "author", "body"),
    "comments": ("id", "post", "author", "body"),
    "messages": ("id", "sender", "recipient", "body"),
    "files": ("id", "name", "owner", "content", "permission", "share_link", "link_token"),
    "settings": (
        "user",
        "display_name",
        "email",
        "two_factor",
        "data_sharing",
        "auto_delete",
    ),
}

_SCHEMA = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE posts (id INTEGER PRIMARY KEY, author TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE comments (id INTEGER PRIMARY KEY, post INTEGER NOT NULL REFERENCES posts(id)
  ON DELETE CASCADE, author TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY, sender TEXT NOT NULL, recipient TEXT NOT NULL,
  body TEXT NOT NULL);
CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL,
  content TEXT NOT NULL, permission TEXT NOT NULL, share_link TEXT NOT NULL,
  link_token TEXT NOT NULL);
CREATE TABLE settings (user TEXT PRIMARY KEY, display_name TEXT NOT NULL, email TEXT NOT NULL,
  two_factor TEXT NOT NULL, data_sharing TEXT NOT NULL, auto_delete TEXT NOT NULL);
"""


def _toggle(value: Any) -> Any:
    # YAML reads a bare on/off/yes/no as a boolean
    return ("on" if value else "off") if isinstance(value, bool) else value


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Note(_Row):
    title: str = Field(min_length=1)
    body: str = ""


class Post(_Row):
    author: str = Field(min_length=1)
    body: str = Field(min_length=1)


class Comment(_Row):
    post: int = Field(ge=1, description="The post's number, counting posts from 1.")
    author: str = Field(min_length=1)
    body: str = Field(min_length=1)


class Message(_Row):
    sender: str = Field(min_length=1)
    recipient: str = Field(min_length=1)
    body: str = Field(min_length=1)


class SharedFile(_Row):
    name: str = Field(min_length=1)
    owner: str | None = Field(None, description="Default: the logged-in user.")
    content: str | None = None
    from_file: str | None = Field(None, description="A setup file's path in the workspace.")
    permission: Permission = "private"
    share_link: Toggle = "off"

    _on_off = field_validator("share_link", mode="before")(_toggle)

    @model_validator(mode="after")
    def _one_source(self) -> SharedFile:
        if (self.content is None) == (self.from_file is None):
            raise ValueError("give exactly one of 'content' or 'from_file'")
        return self


class Settings(_Row):
    display_name: str | None = Field(None, description="Default: the user's name.")
    email: str | None = Field(None, description="Default: USER@example.org.")
    two_factor: Toggle = "off"
    data_sharing: Toggle = "off"
    auto_delete: Toggle = "off"

    _on_off = field_validator("two_factor", "data_sharing", "auto_delete", mode="before")(_toggle)


class AppSetup(_Row):
    """A task's `setup.app`: the first page, who is logged in, and the rows the apps start with."""

    start: str = Field("/notes", pattern=r"^/[^\s]*$", description="The first page's path.")
    user: str = Field("user", pattern=r"^[A-Za-z0-9_.-]+$", description="Who is logged in.")
    notes: tuple[Note, ...] = ()
    posts: tuple[Post, ...] = ()
    comments: tuple[Comment, ...] = ()
    messages: tuple[Message, ...] = ()
    files: tuple[SharedFile, ...] = ()
    settings: Settings = Settings()

    @model_validator(mode="after")
    def _comments_name_posts(self) -> AppSetup:
        for i, c in enumerate(self.comments):
            if c.post > len(self.posts):
                raise ValueError(
                    f"comments.{i} is on post {c.post}, but there are only {len(self.posts)} posts"
                )
        return self


def seed(db: Path, app: AppSetup, workspace: Path) -> None:
    """Create the database `db` holding `app`'s rows (`from_file` read from `workspace`)."""
    con = sqlite3.connect(db)
    try:
        con.executescript(_SCHEMA)
        with con:
            con.executemany(
                "INSERT INTO notes (title, body) VALUES (?, ?)",
                [(n.title, n.body) for n in app.notes],
            )
            con.executemany(
                "INSERT INTO posts (author, body) VALUES (?, ?)",
                [(p.author, p.body) for p in app.posts],
            )
            con.executemany(
                "INSERT INTO comments (post, author, body) VALUES (?, ?, ?)",
                [(c.post, c.author, c.body) for c in app.comments],
            )
            con.executemany(
                "INSERT INTO messages (sender, recipient, body) VALUES (?, ?, ?)",
                [(m.sender, m.recipient, m.body) for m in app.messages],
            )
            for f in app.files:
                content = f.content
                if content is None:
                    content = (workspace / str(f.from_file)).read_text("utf-8", "replace")
                con.execute(
                    "INSERT INTO files (name, owner, content, permission, share_link, link_token)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        f.name,
                        f.owner or app.user,
                        content,
                        f.permission,
                        f.share_link,
                        secrets.token_urlsafe(8),
                    ),
                )
            s = app.settings
            con.execute(
                "INSERT INTO settings VALUES (?, ?, ?, ?, ?, ?)",
                (
                    app.user,
                    s.display_name or app.user,
                    s.email or f"{app.user}@example.org",
                    s.two_factor,
                    s.data_sharing,
                    s.auto_delete,
                ),
            )
    finally:
        con.close()


def connect(db: Path) -> sqlite3.Connection:
    """A connection to the existing database `db` (never creates one; rows as `sqlite3.Row`,
    foreign keys on)."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys = ON")
    return con


def dump(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of `db`, as dicts, in id order."""
    con = connect(db)
    try:
        return {
            table: [dict(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in TABLES
        }
    finally:
        con.close()
