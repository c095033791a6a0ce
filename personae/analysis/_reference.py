"""Human reference conversations for the diversity comparison: a JSONL file, one conversation a
line, `{"id": "...", "comments": ["...", ...]}` (other keys are ignored; `id` defaults to
`<file stem>-<line>`). Every problem is a one-line `UserError` naming `FILE:LINE`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personae._jsonl import jsonl_objects
from personae.errors import UserError

_FIX = 'each line must be {"id": "...", "comments": ["first comment", "second comment", ...]}'


@dataclass(frozen=True)
class ReferenceConversation:
    """One human conversation: its id and its comments, in order."""

    id: str
    comments: tuple[str, ...]


def load_reference(path: str | Path) -> list[ReferenceConversation]:
    """The conversations of a reference JSONL file, in file order.

    Raises:
        UserError: a missing file, a line that is not a JSON object, a `comments` that is not a
            list of strings, an `id` that is not a string or is repeated, or fewer than two
            conversations with two or more comments (too few for a density).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            "reference file not found", where=str(path), fix="check the --reference path"
        )
    found: list[ReferenceConversation] = []
    seen: set[str] = set()
    for number, record in jsonl_objects(path, fix=_FIX):
        where = f"{path}:{number}"
        comments = record.get("comments")
        if not isinstance(comments, list) or not all(isinstance(c, str) for c in comments):
            problem = "no 'comments'" if comments is None else "'comments' is not a list of strings"
            raise UserError(problem, where=where, fix=_FIX)
        ident = record.get("id", f"{path.stem}-{number}")
        if not isinstance(ident, str) or not ident:
            raise UserError("'id' must be a non-empty string", where=where, fix=_FIX)
        if ident in seen:
            raise UserError(f"duplicate id {ident!r}", where=where, fix="make ids unique")
        seen.add(ident)
        found.append(ReferenceConversation(ident, tuple(comments)))
    usable = sum(len(c.comments) >= 2 for c in found)
    if usable < 2:
        raise UserError(
            f"{usable} conversation{'' if usable == 1 else 's'} with two or more comments: too "
            "few to estimate a distribution of diversity",
            where=str(path),
            fix="give at least two conversations of two or more comments each",
        )
    return found
