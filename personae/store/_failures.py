"""Which SQLite errors end writing, and how to name them to the user.

A bad row (constraint violation, a value SQLite cannot bind) belongs to that row: the writer
skips it. Any other error (disk full, I/O error, read-only, locked, damaged) is a failure of the
database itself, and so is any exception that is not an `sqlite3.Error`: writing must stop.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from personae.errors import UserError

#: Errors that belong to one row; anything else is fatal for the writer.
ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)


class StoreFailure(UserError):
    """The turn log can no longer be written (disk full, I/O error, read-only, locked, …).

    Attributes:
        reason: Short cause, e.g. "disk full".
        path: The database file.
        episodes: Ids of the episodes with rows that were not saved, sorted.
        rows: Number of rows that were not saved.
    """

    def __init__(
        self, reason: str, path: Path, episodes: list[str], rows: int, *, fix: str
    ) -> None:
        self.reason = reason
        self.path = path
        self.episodes = episodes
        self.rows = rows
        n = len(episodes)
        super().__init__(
            f"{reason}: {n} episode{'' if n == 1 else 's'} not saved ({rows} rows lost)",
            where=str(path),
            fix=fix,
        )


def describe(exc: BaseException) -> tuple[str, str]:
    """(cause, remedy) for an error that stops writing, in the user's words."""
    if not isinstance(exc, sqlite3.Error):
        return (
            f"a row could not be stored ({type(exc).__name__}: {exc})",
            "fix the value (SQLite integers must lie in -2**63..2**63-1)",
        )
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary == sqlite3.SQLITE_FULL or "disk is full" in text:
        return "disk full", "free space"
    if primary == sqlite3.SQLITE_IOERR or "i/o error" in text:
        return "disk I/O error", "check the disk"
    if primary == sqlite3.SQLITE_READONLY or "readonly" in text or "read-only" in text:
        return "database is read-only", "make the file and its folder writable"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return "database is locked by another process", "stop the other process writing to it"
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text:
        return "database is damaged", "write to a new --db"
    return f"cannot write the database ({type(exc).__name__}: {exc})", "fix the cause"
