"""The role registry: scenario files name roles; users add their own with `@register_role`."""

from __future__ import annotations

from collections.abc import Callable

from personae.agents._base import Agent
from personae.registry import Registry

ROLES: Registry[type[Agent]] = Registry("role")


def register_role(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator registering an `Agent` subclass under `name` (sets its `role`)."""

    def decorate(cls: type[Agent]) -> type[Agent]:
        cls.role = name
        return ROLES.add(name, cls)

    return decorate


def role_names() -> list[str]:
    """Registered role names."""
    return ROLES.names()


def get_role(name: str, *, where: str = "scenario") -> type[Agent]:
    """The agent class registered as `name`; `UserError` with a suggestion if unknown."""
    return ROLES.get(name, where=where)
