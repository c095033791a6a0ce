"""Backend options are checked when the backend is created: one line naming option and kind."""

from __future__ import annotations

from typing import Any

import pytest

from personae.backends import Backend, ScriptedBackend, create_backend, register_backend
from personae.backends._openai import OpenAIBackend
from personae.errors import UserError


@pytest.mark.parametrize(
    ("spec", "options", "option"),
    [
        ("openai:http://a/v1?max_concurrency=abc", None, "max_concurrency"),
        ("openai:http://a/v1?timeout_s=soon", None, "timeout_s"),
        ("openai:http://a/v1?timeout_s=inf", None, "timeout_s"),
        ("openai:http://a/v1", {"max_concurrency": True}, "max_concurrency"),
        ("openai:http://a/v1", {"model": 7}, "model"),
        ("scripted?latency_s=abc", None, "latency_s"),
        ("scripted?latency_s=nan", None, "latency_s"),
        ("scripted", {"latency_s": "abc"}, "latency_s"),
        ("scripted", {"fail_rate": [0.5]}, "fail_rate"),
        ("embedded?n_parallel=abc", None, "n_parallel"),
        ("embedded", {"n_parallel": 2.5}, "n_parallel"),
        ("embedded?ctx_per_slot=", None, "ctx_per_slot"),
        ("simulated?p_pre=abc", None, "p_pre"),
        ("simulated", {"seed": "x"}, "seed"),
    ],
)
def test_bad_option_value_names_option_and_backend(
    spec: str, options: dict[str, Any] | None, option: str
) -> None:
    kind = spec.partition(":")[0].partition("?")[0]
    with pytest.raises(UserError) as info:
        create_backend(spec, options)
    line = str(info.value)
    assert f"'{option}'" in line and f"backend '{kind}'" in line and "\n" not in line


@pytest.mark.parametrize(
    ("spec", "suggestion"),
    [("openai:http://a/v1?max_concurency=4", "max_concurrency"), ("scripted?latency=1", "")],
)
def test_unknown_option_is_named_with_a_suggestion(spec: str, suggestion: str) -> None:
    with pytest.raises(UserError, match="has no option") as info:
        create_backend(spec)
    assert suggestion in str(info.value)


def test_query_string_values_are_converted_by_the_options_type() -> None:
    backend = create_backend(
        "openai:http://a/v1?model=123&max_concurrency=4&timeout_s=2.5&render=transcript"
    )
    assert isinstance(backend, OpenAIBackend)
    assert backend.model == "123"  # a model name made of digits stays text
    assert backend.parallelism == 4 and backend.render_mode == "transcript"


def test_mapping_options_keep_structured_values() -> None:
    backend = create_backend("scripted", {"replies": {"client": ["hello"]}, "latency_s": 0})
    assert isinstance(backend, ScriptedBackend)
    backend = create_backend("simulated", {"p_pre": {"item-1": 0.25}})
    assert backend.p_pre == {"item-1": 0.25}  # type: ignore[attr-defined]


def test_kinds_registered_without_a_signature_get_options_as_before() -> None:
    seen: dict[str, Any] = {}

    @register_backend("tests-options-passthrough")
    def _factory(target: str | None, options: dict[str, Any]) -> Backend:
        seen.update(options)
        return ScriptedBackend()

    create_backend("tests-options-passthrough?n=3&x=abc&flag=true", {"extra": [1]})
    assert seen == {"n": 3, "x": "abc", "flag": True, "extra": [1]}
