"""Backend specs: one string chooses an implementation.

A spec is `KIND`, `KIND:TARGET` or either followed by `?key=value&...` options, e.g.
`embedded`, `embedded:/models/x.gguf?n_parallel=16`, `openai:http://127.0.0.1:8000/v1?model=m`,
`vllm:/models/tiny`, `scripted`.
Options given as a mapping (scenario `backend_options`) are merged over the query-string ones.
Users register their own kinds with `register_backend`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import TypeAdapter, ValidationError

from personae.backends._base import Backend
from personae.errors import UserError
from personae.registry import Registry

BackendFactory = Callable[[str | None, dict[str, Any]], Backend]
#: Returns the callable (usually the backend class) whose keyword parameters are a kind's options.
OptionsOf = Callable[[], Callable[..., Any]]
BACKENDS: Registry[BackendFactory] = Registry("backend")
_OPTIONS_OF: dict[str, OptionsOf] = {}
_SCALARS = (int, float, bool, str, type(None))


def register_backend(
    kind: str, *, options: OptionsOf | None = None
) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering `factory(target, options) -> Backend` under `kind` (its
    docstring's first line describes the kind in `personae scenarios`).

    Args:
        kind: The spec prefix, e.g. `openai`.
        options: A zero-argument callable returning the callable (usually the backend class)
            whose keyword parameters declare the kind's options. With it, `create_backend`
            refuses unknown option names and converts and checks values of simple types (int,
            float, bool, str, literals, mappings of those) before the factory runs, so a bad
            option is one line naming it, not a traceback at run start. Without it, options
            are passed through (query-string values read as int, float, bool or text).
    """

    def decorate(factory: BackendFactory) -> BackendFactory:
        BACKENDS.add(kind, factory)
        if options is not None:
            _OPTIONS_OF[kind] = options
        else:
            _OPTIONS_OF.pop(kind, None)
        return factory

    return decorate


def backend_kinds() -> list[str]:
    """Names of the registered backend kinds."""
    return BACKENDS.names()


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _split(spec: str) -> tuple[str, str | None, dict[str, str]]:
    base, _, query = spec.partition("?")
    kind, sep, target = base.partition(":")
    raw = dict(parse_qsl(query, keep_blank_values=True))
    return kind.strip().lower(), (target if sep and target else None), raw


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split a spec into (kind, target, options)."""
    kind, target, raw = _split(spec)
    return kind, target, {k: _coerce(v) for k, v in raw.items()}


def _lazy(module: str, name: str) -> OptionsOf:
    return lambda: getattr(importlib.import_module(module), name)


# -- option checking --------------------------------------------------------------------------


def _checkable(annotation: Any) -> bool:
    """Whether values of `annotation` can be checked without changing what the backend gets
    (scalars, literals, unions and mappings of them; not iterables, callables, objects)."""
    if annotation in _SCALARS:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return True
    if origin is typing.Annotated:
        return _checkable(args[0])
    if origin in (typing.Union, types.UnionType):
        return all(_checkable(a) for a in args)
    if origin in (dict, Mapping, typing.Mapping) and len(args) == 2:
        return _checkable(args[0]) and _checkable(args[1])
    return False


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin in (dict, Mapping, typing.Mapping):
        return "a mapping"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(
        annotation, str(annotation)
    )


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _options_signature(
    target: Callable[..., Any],
) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(getattr(target, "__init__", target))
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return params, hints, open_ended


def _checked_options(
    kind: str,
    spec: str,
    target: Callable[..., Any],
    query: Mapping[str, str],
    mapping: Mapping[str, Any],
) -> dict[str, Any]:
    params, hints, open_ended = _options_signature(target)
    checked: dict[str, Any] = {}
    given = [(k, v, True) for k, v in query.items() if k not in mapping]
    given += [(k, v, False) for k, v in mapping.items()]
    for name, value, from_query in given:
        where = f"backend spec {spec!r}" if from_query else f"backend_options.{name}"
        if name not in params:
            if open_ended:  # e.g. vllm: extra engine arguments
                checked[name] = _coerce(value) if from_query else value
                continue
            close = difflib.get_close_matches(name, params, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(
                f"backend {kind!r} has no option {name!r}",
                where=where,
                fix=f"{hint}its options are: {', '.join(params) or '(none)'}",
            )
        annotation = hints.get(name, Any)
        if not _checkable(annotation):
            checked[name] = _coerce(value) if from_query else value
            continue
        default = params[name].default
        example = default if default not in (inspect.Parameter.empty, None) else "..."
        if isinstance(example, bool):
            example = str(example).lower()
        problem = UserError(
            f"option {name!r} of backend {kind!r} must be {_describe(annotation)}, got {value!r}",
            where=where,
            fix=f"write e.g. {name}={example}",
        )
        try:
            converted = TypeAdapter(annotation).validate_python(value, strict=not from_query)
        except ValidationError:
            raise problem from None
        if not _finite(converted):
            raise problem
        checked[name] = converted
    return checked


def create_backend(spec: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Build (but do not start) the backend named by `spec`.

    Options come from the spec's query string and from `options` (which win); for kinds
    registered with their options' signature, names and values are checked here.

    Raises:
        UserError: unknown kind, an option the backend does not take, or a value of the
            wrong type (e.g. `max_concurrency=abc`), naming the option and the backend.
    """
    kind, target, query = _split(spec)
    factory = BACKENDS.get(kind, where=f"backend spec {spec!r}")
    options_of = _OPTIONS_OF.get(kind)
    if options_of is None:
        merged = {**{k: _coerce(v) for k, v in query.items()}, **(options or {})}
    else:
        merged = _checked_options(kind, spec, options_of(), query, options or {})
    try:
        return factory(target, merged)
    except TypeError as exc:
        raise UserError(
            f"bad option for backend {kind!r}: {exc}",
            where=f"backend spec {spec!r}",
            fix="see the README's backend section for the options each backend takes",
        ) from exc


@register_backend("scripted", options=_lazy("personae.backends._scripted", "ScriptedBackend"))
def _scripted(target: str | None, options: dict[str, Any]) -> Backend:
    """Deterministic replies (a list, a per-agent map or a callable); no model."""
    from personae.backends._scripted import ScriptedBackend

    return ScriptedBackend(**options)


@register_backend("human", options=_lazy("personae.backends._human", "HumanBackend"))
def _human(target: str | None, options: dict[str, Any]) -> Backend:
    """A person types the agent's lines (personae train); no model."""
    from personae.backends._human import HumanBackend

    return HumanBackend(**options)


@register_backend("embedded", options=_lazy("personae.backends._embedded", "EmbeddedBackend"))
def _embedded(target: str | None, options: dict[str, Any]) -> Backend:
    """llama.cpp in this process (xllamacpp); default model: the packaged Gemma 3 270M."""
    from personae.backends._embedded import EmbeddedBackend

    return EmbeddedBackend(target, **options)


@register_backend("openai", options=_lazy("personae.backends._openai", "OpenAIBackend"))
def _openai(target: str | None, options: dict[str, Any]) -> Backend:
    """Any OpenAI-compatible server (vllm serve, llama-server, Ollama, hosted APIs)."""
    from personae.backends._openai import OpenAIBackend

    if not target:
        raise UserError(
            "the openai backend needs a base URL",
            where="backend spec",
            fix="write e.g. openai:http://127.0.0.1:8000/v1?model=NAME",
        )
    return OpenAIBackend(target, **options)


@register_backend("vllm", options=_lazy("personae.backends._vllm", "VLLMBackend"))
def _vllm(target: str | None, options: dict[str, Any]) -> Backend:
    """vLLM's in-process AsyncLLM (optional extra: pip install 'personae[vllm]')."""
    from personae.backends._vllm import VLLMBackend

    if not target:
        raise UserError(
            "the vllm backend needs a model path",
            where="backend spec",
            fix="write e.g. vllm:/models/Qwen2.5-0.5B-Instruct",
        )
    return VLLMBackend(target, **options)
