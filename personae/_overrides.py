"""`run --set KEY=VALUE`: scenario fields replaced by dotted path before the scenario is validated.

`apply_settings(data, ["graph.max_turns=4", "agents.helper.sampling.temperature=0.2"], ...)`
returns a copy of a scenario mapping (a file's contents, or a stored spec) with each value set,
read as a YAML scalar or flow collection (`cli_value`). Every step of a path must name something
the scenario format has: a field of the scenario, of its graph kind's options (for the kind the
mapping names at that point), of an agent spec, of `sampling`, or of the agent role's persona
(a persona file is read into an inline mapping first); an existing agent's name under `agents`;
any key under the free mappings (`backend_options`, `graph.policy`); and under `grid` the rest of
the path is one grid key (`grid.client.style=[plain, upset]`). A path that names nothing is a
one-line `UserError` naming the key and the keys valid there (with a "did you mean"). Values are
checked afterwards, by the scenario's own validation, like values written in the file.
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from personae._yaml import cli_value, load_yaml
from personae.errors import UserError

#: What a step of a path leads to: a pydantic model (its fields), `NAMED` (a mapping of named
#: entries, each a model: agents), `FREE` (any key, any depth), `GRID` or `LEAF` (a value).
_NAMED, _FREE, _GRID, _LEAF = "named", "free", "grid", "leaf"
#: Fields written as `NAME` or `{kind: NAME, ...}`: setting a key inside the short form keeps it.
_KIND_SHORTHAND = ("graph", "policy")


def split_setting(item: str, flag: str = "--set") -> tuple[list[str], Any]:
    """`KEY.PATH=VALUE` as (path parts, parsed value); `UserError` when it is not that shape."""
    key, eq, raw = item.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(p.strip() for p in parts):
        raise UserError(
            "expected KEY=VALUE with a dotted KEY",
            where=f"{flag} {item}",
            fix="e.g. --set graph.max_turns=4 --set agents.helper.sampling.temperature=0.2",
        )
    return [p.strip() for p in parts], cli_value(raw.strip())


def _strip(annotation: Any) -> Any:
    """`annotation` without `Annotated[...]` and `| None`."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind_of(annotation: Any) -> Any:
    """What a field of this type leads to (see the module constants)."""
    annotation = _strip(annotation)
    if _is_model(annotation):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (dict, Mapping) or annotation is dict:
        value = _strip(args[1]) if len(args) == 2 else Any
        return (_NAMED, value) if _is_model(value) else _FREE
    if annotation is Any:
        return _FREE
    if origin in (typing.Union, types.UnionType) and any(
        _is_model(_strip(a)) or typing.get_origin(_strip(a)) is dict for a in args
    ):
        return _FREE  # several shapes (e.g. a topology): any key, checked when validated
    return _LEAF


def _fields(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _unknown(part: str, level: str, keys: Sequence[str], item: str) -> UserError:
    full = f"{level}.{part}" if level else part
    close = difflib.get_close_matches(part, list(keys), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    where = f"under {level}" if level else "at the top level"
    return UserError(
        f"unknown key {full!r}",
        where=f"--set {item}",
        fix=f"{hint}valid {where}: {', '.join(keys) or '(none)'}",
    )


def apply_settings(data: dict[str, Any], items: Sequence[str], *, base_dir: Path) -> dict[str, Any]:
    """A copy of scenario mapping `data` with every `KEY=VALUE` of `items` set, in order.

    Args:
        data: The scenario as written (a file's mapping or a stored spec); not modified.
        items: `KEY.PATH=VALUE` strings.
        base_dir: The scenario's folder (persona files named by a relative path are read from
            it when a persona field is set).

    Raises:
        UserError: an item that is not `KEY=VALUE`, or a path that names nothing.
    """
    from personae.scenario import Scenario  # the scenario format reads this module

    result = copy.deepcopy(data)
    for item in items:
        parts, value = split_setting(item)
        node: dict[str, Any] = result
        kind: Any = Scenario
        done: list[str] = []
        for i, part in enumerate(parts):
            level = ".".join(done)
            last = i == len(parts) - 1
            if kind == _GRID:
                node[".".join(parts[i:])] = value  # grid keys are dotted: AGENT.FIELD
                break
            if kind == _LEAF:
                raise UserError(
                    f"{level!r} is a value, not a mapping with keys",
                    where=f"--set {item}",
                    fix=f"set it as a whole: --set {level}=VALUE",
                )
            if isinstance(kind, tuple):  # named entries: the name must exist
                if part not in node:
                    raise _unknown(part, level, list(node), item)
                child: Any = kind[1]
            elif kind == _FREE:
                child = _FREE
            else:
                keys = _fields(kind)
                if part not in keys:
                    raise _unknown(part, level, keys, item)
                child = _child(kind, part, node, item)
            if last:
                node[part] = value
                break
            node = _descend(node, part, level, base_dir)
            kind = child
            done.append(part)
    return result


def _child(model: type[BaseModel], part: str, node: dict[str, Any], item: str) -> Any:
    """What field `part` of `model` leads to, given the mapping `node` being edited (the graph
    kind and an agent's role decide the models of `graph` and `persona`)."""
    from personae.agents._registry import ROLES
    from personae.graphs import GRAPHS
    from personae.scenario import AgentSpec, Scenario

    # a graph kind or role the scenario's own `imports:` register is not known yet: any key
    # is taken, and the scenario's validation checks it once they are imported
    if model is Scenario and part == "graph":
        graph = node.get("graph", "dyadic")
        name = graph if isinstance(graph, str) else (graph or {}).get("kind", "dyadic")
        kind = GRAPHS.find(str(name))
        return kind.options_model if kind is not None else _FREE
    if model is Scenario and part == "grid":
        return _GRID
    if model is AgentSpec and part == "persona":
        role = ROLES.find(str(node.get("role")))
        return role.persona_model if role is not None else _FREE
    return _kind_of(model.model_fields[part].annotation)


def _descend(node: dict[str, Any], part: str, level: str, base: Path) -> dict[str, Any]:
    """The mapping under `node[part]`, made one if it is absent or written in a short form."""
    current = node.get(part)
    if isinstance(current, str) and part in _KIND_SHORTHAND:
        current = {"kind": current}
    elif isinstance(current, str) and part == "persona":  # a persona file: edit its contents
        path = Path(current) if Path(current).is_absolute() else base / current
        loaded = load_yaml(path, f"persona file of {level}")
        if not isinstance(loaded, dict):
            raise UserError("a persona file must be a YAML mapping", where=str(path))
        current = loaded
    elif not isinstance(current, dict):
        current = {}
    node[part] = current
    return current


def blame_setting(exc: UserError, items: Sequence[str]) -> UserError:
    """`exc` (an error validating a scenario) pointed at the `--set` item whose value it is
    about, when there is one; else `exc` itself."""
    where = exc.where or ""
    path = where.split(": ", 1)[1] if ": " in where else ""
    for item in reversed(items):
        key = item.partition("=")[0].strip()
        leaf = key.rsplit(".", 1)[-1]
        if (
            f"{key!r}" in exc.what
            or (path and key == path)
            or (path and key.startswith(path + ".") and f"{leaf!r}" in exc.what)
        ):
            return UserError(exc.what, where=f"--set {item}", fix=exc.fix)
    return exc
