"""Backend specs: one string chooses an implementation.

A spec is `KIND`, `KIND:TARGET` or either followed by `?key=value&...` options, e.g.
`embedded`, `embedded:/models/x.gguf?n_parallel=16`, `openai:http://127.0.0.1:8000/v1?model=m`,
`vllm:/models/tiny`, `scripted`.
Options given as a mapping (scenario `backend_options`) are merged over the query-string ones.
Users register their own kinds with `register_backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from personae.backends._base import Backend
from personae.errors import UserError
from personae.registry import Registry

BackendFactory = Callable[[str | None, dict[str, Any]], Backend]
BACKENDS: Registry[BackendFactory] = Registry("backend")


def register_backend(kind: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering `factory(target, options) -> Backend` under `kind` (its
    docstring's first line describes the kind in `personae scenarios`)."""

    def decorate(factory: BackendFactory) -> BackendFactory:
        return BACKENDS.add(kind, factory)

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


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split a spec into (kind, target, options)."""
    base, _, query = spec.partition("?")
    kind, sep, target = base.partition(":")
    options = {k: _coerce(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    return kind.strip().lower(), (target if sep and target else None), options


def create_backend(spec: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Build (but do not start) the backend named by `spec`.

    Raises:
        UserError: unknown kind or options the backend does not accept.
    """
    kind, target, parsed = parse_spec(spec)
    factory = BACKENDS.get(kind, where=f"backend spec {spec!r}")
    merged = {**parsed, **(options or {})}
    try:
        return factory(target, merged)
    except TypeError as exc:
        raise UserError(
            f"bad option for backend {kind!r}: {exc}",
            where=f"backend spec {spec!r}",
            fix="see the README's backend section for the options each backend takes",
        ) from exc


@register_backend("scripted")
def _scripted(target: str | None, options: dict[str, Any]) -> Backend:
    """Deterministic replies (a list, a per-agent map or a callable); no model."""
    from personae.backends._scripted import ScriptedBackend

    return ScriptedBackend(**options)


@register_backend("embedded")
def _embedded(target: str | None, options: dict[str, Any]) -> Backend:
    """llama.cpp in this process (xllamacpp); default model: the packaged Gemma 3 270M."""
    from personae.backends._embedded import EmbeddedBackend

    return EmbeddedBackend(target, **options)


@register_backend("openai")
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


@register_backend("vllm")
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
