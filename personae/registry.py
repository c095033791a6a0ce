"""One small registry helper behind every extension point (roles, graph kinds, turn policies,
judges, backends, intervention functions, ...).

A `Registry` maps names to objects, keeps a one-line description of each (the first line of its
docstring, shown by `personae scenarios`), and turns an unknown name into a one-line `UserError`
with a "did you mean". A miss first loads the installed plugins (the `personae` entry-point
group), so names registered by an installed package are found without an explicit import.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from personae.errors import UserError
from personae.plugins import load_entry_points

T = TypeVar("T")


def first_line(doc: str | None) -> str:
    """The first non-empty line of a docstring ("" when there is none)."""
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry(Generic[T]):
    """Named objects of one kind.

    Args:
        noun: What one entry is called in messages ("role", "graph kind", ...).
    """

    def __init__(self, noun: str) -> None:
        self.noun = noun
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        self._hidden: set[str] = set()

    def add(self, name: str, obj: T, doc: str | None = None, *, listed: bool = True) -> T:
        """Register `obj` under `name` (a later registration replaces an earlier one);
        `listed=False` keeps it out of `names()` and suggestions (an internal entry)."""
        if not name or not name.strip():
            raise ValueError(f"a {self.noun} needs a non-empty name")
        self._entries[name] = obj
        self._docs[name] = first_line(doc if doc is not None else getattr(obj, "__doc__", ""))
        if listed:
            self._hidden.discard(name)
        else:
            self._hidden.add(name)
        return obj

    def get(self, name: str, *, where: str | None = None) -> T:
        """The object registered as `name`.

        Raises:
            UserError: unknown name, with the closest registered name and the full list.
        """
        if name not in self._entries:
            load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown {self.noun} {name!r}",
            where=where,
            fix=f"{hint}registered: {', '.join(self.names()) or '(none)'}; "
            "add your own with --import MODULE_OR_FILE",
        )

    def find(self, name: str) -> T | None:
        """The object registered as `name`, or None (installed plugins are looked in first)."""
        if name not in self._entries:
            load_entry_points()
        return self._entries.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted (installed plugins included; internal entries not)."""
        load_entry_points()
        return sorted(n for n in self._entries if n not in self._hidden)

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line description) of every entry, sorted by name."""
        return [(name, self._docs.get(name, "")) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
