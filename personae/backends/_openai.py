"""The openai backend: any OpenAI-compatible HTTP server (vllm serve, llama-server, Ollama, APIs).

Requests with a `prompt` go to `/completions`, requests with `messages` to `/chat/completions`.
`base_url` may list several endpoints separated by commas; each episode is routed sticky to one
of them (a stable hash of its `episode_id` tag) so that server-side prefix caches stay warm.
Concurrency is bounded by one semaphore across all endpoints. Constrained output is sent in the
dialect named by `structured`.

What the server supports is found out at `start` unless set (`render=`, `structured=`), from the
first endpoint (`_probe.py`): the render mode — `transcript` for a base model (a llama.cpp server
whose `/props` shows no chat template of the model's own, a vLLM server that refuses a chat
request for want of a chat template, a server without a chat endpoint), else `chat` — and the
structured-output dialect — `llamacpp` for a llama.cpp server (`/props`), `vllm` for a vLLM
server (`/version`), else `openai` — checked with one tiny constrained request. When either
cannot be told, `start` stops with one line naming the option to set.

Each `generate` call makes exactly one HTTP attempt, bounded by `timeout_s` from connecting to
the last byte of the reply; it never retries. Retrying belongs to the caller (the episode
layer, the one retry layer, with one deadline per call), so every failure is a `BackendError`
whose `retryable` says whether sending the same request again can help: True for a refused or
dropped connection, a connect timeout, HTTP 408/429/5xx and a garbled or truncated reply; False
for other 4xx (400, 401, 404, ...) and for a server that took the request but sent no complete
reply within `timeout_s` (a hung server stays hung; retrying it multiplies the wait).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import zlib
from collections.abc import Mapping
from typing import Any

import httpx

from personae.backends._base import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
)
from personae.backends._embedded import choice_grammar, parse_logprobs
from personae.backends._strict import strict_json_schema
from personae.backends._structured import json_schema_grammar
from personae.errors import UserError

STRUCTURED_DIALECTS = ("vllm", "llamacpp", "openai")
_WHERE = "backend openai"
#: HTTP statuses worth retrying: request timeout, rate limit, and every 5xx.
_RETRYABLE_STATUS = frozenset({408, 429})
#: `GET /models` should answer at once; a server that does not is reported quickly.
_DISCOVERY_TIMEOUT_S = 15.0


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", resp.text)
    except (ValueError, AttributeError):
        return resp.text[:500]
    if isinstance(err, Mapping):
        return str(err.get("message", err))
    return str(err)[:500]


def _legacy_logprobs(choice: Mapping[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """Parse the legacy completions format: `logprobs.tokens/token_logprobs/top_logprobs`."""
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens")
    if not tokens:
        return None
    values = lp.get("token_logprobs") or [0.0] * len(tokens)
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprob(
            token=tok,
            logprob=float(val if val is not None else 0.0),
            top={k: float(v) for k, v in (top or {}).items()},
        )
        for tok, val, top in zip(tokens, values, tops, strict=False)
    )


class OpenAIBackend(Backend):
    """Client for one or more OpenAI-compatible endpoints.

    Args:
        base_url: Endpoint base URL(s) ending in `/v1`, comma-separated for several servers.
        model: Model name to request; default: the first id listed by `GET {base}/models`.
        api_key_env: Environment variable holding the API key (sent as a Bearer token if set).
        max_concurrency: Requests in flight at once, across all endpoints.
        timeout_s: Seconds one HTTP attempt may take, from connecting to the last byte of the
            reply (non-streaming: the whole generation). A server that takes the request and
            does not answer fails the call after this long, not retryable.
        connect_timeout_s: Seconds to establish a connection (a retryable failure).
        retries: Not used by the backend, which makes one attempt per call: the episode layer
            retries. Kept so existing specs still parse; exposed as `self.retries` (None: the
            caller's default) for the episode layer to honour.
        render: "chat" (instruct models), "transcript" (base models via completions) or
            "auto"/None: found out from the server at `start`.
        structured: Dialect for constrained output: "vllm" (`structured_outputs`; schemas as
            the `json_schema_grammar` GBNF, read by vLLM's default xgrammar backend), "llamacpp"
            (`grammar`), "openai" (strict `response_format` JSON schema; choices are
            wrapped in a `{"choice": ...}` object and unwrapped again; it has no grammars, so a
            grammar request is a `BackendError`) or "auto"/None: found out from the server
            and checked with one constrained request at `start`. vLLM and llama.cpp get a
            request's `grammar` as GBNF.
        backoff_s: Like `retries`: not used here; exposed as `self.backoff_s` for the caller.
        transport: An httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        retries: int | None = None,
        render: str | None = None,
        structured: str | None = None,
        backoff_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoints = [u.strip().rstrip("/") for u in str(base_url).split(",") if u.strip()]
        bad = [u for u in self.endpoints if not u.startswith(("http://", "https://"))]
        if not self.endpoints or bad:
            raise UserError(
                f"bad base URL {(bad or [base_url])[0]!r}",
                where=_WHERE,
                fix="write e.g. openai:http://127.0.0.1:8000/v1 (several: comma-separated)",
            )
        render = None if render == "auto" else render
        structured = None if structured == "auto" else structured
        if render not in ("transcript", "chat", None):
            raise UserError(
                f"unknown render mode {render!r}",
                where=_WHERE,
                fix="use render=chat (instruct models), render=transcript (base models) or "
                "render=auto (ask the server)",
            )
        if structured not in (*STRUCTURED_DIALECTS, None):
            raise UserError(
                f"unknown structured-output dialect {structured!r}",
                where=_WHERE,
                fix=f"use structured={' or '.join(STRUCTURED_DIALECTS)}, or auto",
            )
        #: Whether the render mode and the dialect were given, or are found out at `start`.
        self._render_given = render is not None
        self.render_mode = "transcript" if render == "transcript" else "chat"
        self.parallelism = max(1, int(max_concurrency))
        self.model = model
        self.backend_id = f"openai:{model}" if model else "openai"
        self._structured = structured
        self._api_key_env = api_key_env
        self._withheld: str | None = None
        for name, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            if not value > 0:
                raise UserError(
                    f"{name} must be a positive number of seconds, got {value}",
                    where=_WHERE,
                    fix=f"write e.g. {name}=60",
                )
        if retries is not None and retries < 0:
            raise UserError(
                f"retries must be 0 or more, got {retries}", where=_WHERE, fix="write retries=2"
            )
        self._timeout_s = float(timeout_s)
        self._connect_timeout_s = min(float(connect_timeout_s), self._timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sem = asyncio.Semaphore(self.parallelism)
        self._lock = asyncio.Lock()
        self._round_robin = itertools.count()

    def endpoint_for(self, tags: Mapping[str, Any]) -> str:
        """The endpoint serving a request with these tags.

        Requests of one episode (same `episode_id`) always get the same endpoint; requests
        without an episode id are spread round-robin.
        """
        episode = tags.get("episode_id")
        index = next(self._round_robin) if episode is None else zlib.crc32(str(episode).encode())
        return self.endpoints[index % len(self.endpoints)]

    def credentials(self) -> str | None:
        env = self._api_key_env
        return f"${env}" if env and os.environ.get(env) else None

    def withhold_credentials(self) -> str | None:
        env = self._api_key_env
        self._withheld = env if env and os.environ.get(env) else None
        self._api_key_env = ""
        return f"${self._withheld}" if self._withheld else None

    async def start(self) -> None:
        async with self._lock:
            if self._client is not None:
                return
            headers = {}
            key = os.environ.get(self._api_key_env) if self._api_key_env else None
            if key:
                headers["Authorization"] = f"Bearer {key}"
            limits = httpx.Limits(
                max_connections=max(100, self.parallelism),
                max_keepalive_connections=self.parallelism,
            )
            client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self._timeout_s, connect=self._connect_timeout_s),
                limits=limits,
                transport=self._transport,
            )
            try:
                if self.model is None:
                    self.model = await self._discover_model(client)
                    self.backend_id = f"openai:{self.model}"
                if not self._render_given or self._structured is None:
                    await self._probe(client)
            except BaseException:
                await client.aclose()
                raise
            self._client = client

    async def _probe(self, client: httpx.AsyncClient) -> None:
        """Find out what `render=` and `structured=` left open (raises `UserError`)."""
        from personae.backends._probe import ServerProbe

        probe = ServerProbe(
            client, self.endpoints[0], str(self.model), min(self._timeout_s, _DISCOVERY_TIMEOUT_S)
        )
        if not self._render_given:
            self.render_mode = await probe.render_mode()
        if self._structured is None:
            self._structured = await probe.dialect(
                self._body,
                lambda url, body: self._attempt(client, url, body),
                self._reply_text,
                self.render_mode,
                STRUCTURED_DIALECTS,
            )

    async def _discover_model(self, client: httpx.AsyncClient) -> str:
        url = f"{self.endpoints[0]}/models"
        try:
            resp = await client.get(url, timeout=min(self._timeout_s, _DISCOVERY_TIMEOUT_S))
            resp.raise_for_status()
            return str(resp.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"could not discover the model from GET {url} ({detail})",
                where=_WHERE,
                fix="check that the server is running at that URL, or name the model "
                "explicitly, e.g. openai:http://host:8000/v1?model=NAME",
            ) from exc

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body sent for `request` (without routing)."""
        body: dict[str, Any] = {
            "model": self.model,
            **request.openai_body(),
        }
        if self._structured is not None:  # else not known until `start`: unconstrained
            body.update(self._fields(request, self._structured))
        return body

    def _body(self, request: GenerationRequest, dialect: str) -> dict[str, Any]:
        """The JSON body sent for `request` with its output constrained in `dialect`."""
        return {**self.payload(request), **self._fields(request, dialect)}

    def _fields(self, request: GenerationRequest, dialect: str) -> dict[str, Any]:
        """The body fields that constrain `request`'s output in `dialect`."""
        choices, schema = request.choices, request.json_schema
        if dialect == "llamacpp":
            extra: dict[str, Any] = {"cache_prompt": True}
            if choices:
                extra["grammar"] = choice_grammar(choices)
            elif schema is not None:
                extra["grammar"] = json_schema_grammar(schema)
            elif request.grammar is not None:
                extra["grammar"] = request.grammar.gbnf()
            return extra
        if dialect == "vllm":
            if choices:
                return {"structured_outputs": {"choice": list(choices)}}
            if schema is not None:
                # Not `json` + `disable_any_whitespace`: vLLM's xgrammar backend reads that flag
                # from the server's config only and drops it from a request. xgrammar (vLLM's
                # default backend) parses this GBNF grammar as its own EBNF.
                return {"structured_outputs": {"grammar": json_schema_grammar(schema)}}
            if request.grammar is not None:
                return {"structured_outputs": {"grammar": request.grammar.gbnf()}}
            return {}
        if request.grammar is not None:
            raise BackendError(
                f"{self.backend_id}: the openai structured-output dialect has no grammars, so "
                "this request's output cannot be constrained — use a server that takes them "
                "(structured=vllm or structured=llamacpp), or ask for unconstrained output "
                "(e.g. a computer_use graph's actions: free)",
                retryable=False,
            )
        if choices:  # openai: no choice constraint; wrap as an enum in a JSON object
            schema = {
                "type": "object",
                "properties": {"choice": {"type": "string", "enum": list(choices)}},
                "required": ["choice"],
                "additionalProperties": False,
            }
        if schema is None:
            return {}
        # Without `strict` the provider treats the schema as a hint, not a decoding constraint;
        # only a schema with a free-form object, which strict mode cannot express, goes without.
        strict = strict_json_schema(schema)
        spec: dict[str, Any] = {"name": "output", "schema": schema if strict is None else strict}
        if strict is not None:
            spec["strict"] = True
        return {"response_format": {"type": "json_schema", "json_schema": spec}}

    async def _attempt(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
        """One POST; every failure is a `BackendError` saying whether a retry can help."""
        try:
            async with asyncio.timeout(self._timeout_s):  # httpx's read timeout is per chunk
                resp = await client.post(url, json=body)
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise BackendError(
                f"no reply from {url} within {self._timeout_s:g} s (timeout_s): the server "
                "took the request but did not answer",
                retryable=False,
            ) from exc
        except httpx.TimeoutException as exc:  # connect or pool: the request never left
            raise BackendError(
                f"could not connect to {url} within {self._connect_timeout_s:g} s",
                retryable=True,
            ) from exc
        except httpx.TransportError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise BackendError(
                f"{type(exc).__name__} talking to {url}: {detail}", retryable=True
            ) from exc
        status = resp.status_code
        if status >= 400:
            hint = ""
            if status in (401, 403) and self._withheld:
                hint = (
                    f" (${self._withheld} was not sent: this endpoint comes from a scenario "
                    "file or database; pass --trust-backend, or give it again with --backend)"
                )
            elif status in (401, 403):
                hint = f" (check the API key in ${self._api_key_env})"
            elif status == 404:
                hint = " (check the base URL, which ends in /v1, and the model name)"
            raise BackendError(
                f"HTTP {status} from {url}: {_error_message(resp)}{hint}",
                retryable=status in _RETRYABLE_STATUS or status >= 500,
            )
        try:
            out = resp.json()
        except ValueError as exc:
            raise BackendError(
                f"reply from {url} is not JSON: {resp.text[:200]!r}", retryable=True
            ) from exc
        choices = out.get("choices") if isinstance(out, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(
                f"no choices in the reply from {url}: {str(out)[:300]}", retryable=True
            )
        return out

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._client is None:
            await self.start()
        client = self._client
        if client is None:
            raise BackendError("openai backend is closed", retryable=False)
        base = self.endpoint_for(request.tags)
        url = base + ("/completions" if request.prompt is not None else "/chat/completions")
        body = self.payload(request)
        async with self._sem:
            start = time.perf_counter()
            out = await self._attempt(client, url, body)
            latency = time.perf_counter() - start
        try:
            return self._result(request, out, latency)
        except (ValueError, TypeError, AttributeError, LookupError) as exc:
            raise BackendError(
                f"malformed reply from {url} ({exc}): {str(out)[:300]}", retryable=True
            ) from exc

    def _result(
        self, request: GenerationRequest, out: dict[str, Any], latency: float
    ) -> GenerationResult:
        choice = out["choices"][0]
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
        if not isinstance(text, str):
            raise TypeError(f"the reply's text is a {type(text).__name__}")
        text = self._reply_text(text, request, self._structured)
        usage = out.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return GenerationResult(
            text=text,
            finish_reason=str(choice.get("finish_reason") or "stop"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(cached) if cached is not None else None,
            latency_s=latency,
            logprobs=parse_logprobs(choice) or _legacy_logprobs(choice),
        )

    def _reply_text(self, text: str, request: GenerationRequest, dialect: str | None) -> str:
        """The answer in a reply's text (a choice the openai dialect wrapped, unwrapped)."""
        return self._unwrap_choice(text) if request.choices and dialect == "openai" else text

    @staticmethod
    def _unwrap_choice(text: str) -> str:
        try:
            value = json.loads(text)["choice"]
        except (ValueError, LookupError, TypeError):
            return text
        return str(value)
