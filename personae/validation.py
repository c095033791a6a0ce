"""Pydantic validation errors as one-line `UserError`s: the key path, and a suggestion.

Every spec (scenarios, graph and policy options, personas, rubrics, teaching scenarios) is a
pydantic model; `validation_error` turns its first problem (an unknown key first) into the
one line the CLI prints: what is wrong, where (file and key path), how to fix it.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from personae.errors import UserError


def _suggest(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return "remove it"
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return (
        f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(model.model_fields)}"
    )


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, walking fields from `root`
    (through optional fields and mapping values such as `agents.NAME`)."""
    model: type[BaseModel] | None = root
    parts = list(loc[:-1])
    while parts and model is not None:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        ann = field.annotation
        model = next(
            (
                c
                for c in (ann, *typing.get_args(ann))
                if isinstance(c, type) and issubclass(c, BaseModel)
            ),
            None,
        )
        if typing.get_origin(ann) is dict and parts:
            parts.pop(0)  # the mapping's key, e.g. an agent's name
    return model


def validation_error(
    exc: ValidationError,
    source: str,
    root: type[BaseModel],
    docs: str = "the scenario format in the README",
    *,
    prefix: str = "",
) -> UserError:
    """The first pydantic error (an unknown key first) as a one-line `UserError` with the key
    path and a suggestion; `docs` names where bad values are explained, `prefix` is the key
    path of `root` inside the file (e.g. `graph` for graph options)."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(str(p) for p in (*([prefix] if prefix else []), *loc)) or "(top level)"
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        model = _model_at(loc, root)
        return UserError(
            f"unknown key {path!r}{more}", where=source, fix=_suggest(str(loc[-1]), model)
        )
    if err["type"] == "missing":
        return UserError(f"missing required key {path!r}{more}", where=source, fix="add it")
    if err["type"] in ("value_error", "assertion_error"):
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return UserError(f"bad value for {path!r}: {msg}{more}", where=source, fix=f"see {docs}")
    return UserError(
        f"bad value for {path!r}: {err['msg']}{more}",
        where=source,
        fix=f"see {docs}",
    )


def validate_persona(model: type[BaseModel], data: dict[str, Any], source: str) -> BaseModel:
    """`data` validated as persona `model`, as a one-line `UserError` on failure.

    A model that does not configure `extra` rejects unknown keys too (pydantic alone would drop
    them silently), so a typo in a custom persona is an error, as in the shipped ones.
    """
    try:
        persona = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, model) from None
    if model.model_config.get("extra") is None:
        known = set(model.model_fields)
        known.update(f.alias for f in model.model_fields.values() if f.alias)
        unknown = [k for k in data if k not in known]
        if unknown:
            raise UserError(
                f"unknown key {unknown[0]!r}", where=source, fix=_suggest(unknown[0], model)
            )
    return persona
