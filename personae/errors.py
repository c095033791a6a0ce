"""User-facing errors: one line saying what is wrong, where, and how to fix it.

Raise `UserError` for anything the user can fix (bad scenario, unknown backend, missing file).
The CLI prints `str(error)` and exits with code 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; printed as one line by the CLI (exit code 2).

    Args:
        what: What is wrong.
        where: Where it is (a file, a key path, a CLI option); optional.
        fix: How to fix it; optional.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        """The single line shown to the user."""
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head} — {self.fix}" if self.fix else head
