"""The role registry: scenario files name roles; users add their own with `@register_role`."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from personae.agents._base import Agent
from personae.errors import UserError

_ROLES: dict[str, type[Agent]] = {}


def register_role(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator registering an `Agent` subclass under `name` (sets its `role`)."""

    def decorate(cls: type[Agent]) -> type[Agent]:
        cls.role = name
        _ROLES[name] = cls
        return cls

    return decorate


def role_names() -> list[str]:
    """Registered role names."""
    return sorted(_ROLES)


def get_role(name: str, *, where: str = "scenario") -> type[Agent]:
    """The agent class registered as `name`; `UserError` with a suggestion if unknown."""
    try:
        return _ROLES[name]
    except KeyError:
        close = difflib.get_close_matches(name, _ROLES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown role {name!r}",
            where=where,
            fix=f"{hint}registered roles: {', '.join(role_names())}",
        ) from None
