"""Adapters between personae backends and AutoGen model clients, in both directions.

`BackendChatClient` exposes any personae `Backend` as an AutoGen `ChatCompletionClient`, so
AutoGen agents (e.g. `AssistantAgent`) can run on the shared personae engine. Messages become
personae `Message`s, or one transcript prompt (``System: ...\\nUser: ...\\nAssistant:``) when the
backend renders transcripts (base models). `json_output` maps to a JSON schema; the
`extra_create_args` keys temperature, top_p, max_tokens, seed, stop, logprobs, top_logprobs and
tags are honoured and others ignored. Tools are not supported (a `ValueError` says so), and the
stream yields the whole text once, then the `CreateResult`.

`AutoGenBackend` wraps any AutoGen `ChatCompletionClient` as a personae `Backend` (render mode
"chat"). Sampling parameters travel in `extra_create_args`; a JSON schema asks for JSON mode.
A reply that is not text (function calls) or a failing client raises `BackendError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken, FunctionCall, Image
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    ChatCompletionTokenLogprob,
    CreateResult,
    FinishReasons,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    TopLogprob,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from personae.backends._base import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    Message,
    TokenLogprob,
)

#: Stop strings that end an assistant turn in a rendered transcript.
TRANSCRIPT_STOP: tuple[str, ...] = ("\nUser:", "\nSystem:")

_TRANSCRIPT_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}

_FINISH_REASONS: dict[str, FinishReasons] = {
    "stop": "stop",
    "eos": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "function_calls": "function_calls",
    "tool_calls": "function_calls",
}


def _user_text(content: str | list[str | Image]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part if isinstance(part, str) else "[image]" for part in content)


def _calls_text(calls: list[FunctionCall]) -> str:
    return "\n".join(f"[call {call.name}({call.arguments})]" for call in calls)


def to_personae_messages(messages: Sequence[LLMMessage]) -> tuple[Message, ...]:
    """Convert AutoGen messages to personae `Message`s (non-text content rendered as text).

    Args:
        messages: AutoGen LLM messages.

    Returns:
        The same conversation as plain-text personae messages.
    """
    out: list[Message] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append(Message("system", message.content))
        elif isinstance(message, UserMessage):
            out.append(Message("user", _user_text(message.content)))
        elif isinstance(message, AssistantMessage):
            if isinstance(message.content, str):
                text = message.content
            else:
                text = _calls_text(message.content)
                if message.thought:
                    text = f"{message.thought}\n{text}"
            out.append(Message("assistant", text))
        elif isinstance(message, FunctionExecutionResultMessage):
            text = "\n".join(
                f"[result of {result.name}{' (error)' if result.is_error else ''}] {result.content}"
                for result in message.content
            )
            out.append(Message("user", text))
        else:  # pragma: no cover - LLMMessage is a closed union
            raise TypeError(f"unsupported AutoGen message type {type(message).__name__}")
    return tuple(out)


def render_transcript(messages: Sequence[Message]) -> str:
    """Render messages as a transcript prompt ending with an open ``Assistant:`` turn.

    Args:
        messages: The conversation so far.

    Returns:
        Lines such as ``System: ...``, ``User: ...``, then ``Assistant:``.
    """
    lines = [f"{_TRANSCRIPT_LABELS[m.role]}: {m.content}" for m in messages]
    lines.append("Assistant:")
    return "\n".join(lines)


def _convert_logprobs(logprobs: tuple[TokenLogprob, ...]) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=item.token,
            logprob=item.logprob,
            top_logprobs=[
                TopLogprob(logprob=value, bytes=list(token.encode("utf-8")))
                for token, value in item.top.items()
            ],
            bytes=list(item.token.encode("utf-8")),
        )
        for item in logprobs
    ]


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


class BackendChatClient(ChatCompletionClient):
    """An AutoGen `ChatCompletionClient` served by a personae `Backend`.

    The backend is started lazily on the first request. It is shared, so `close` leaves it
    running unless `close_backend` is set.

    Args:
        backend: The personae backend that serves the requests.
        temperature: Default sampling temperature.
        max_tokens: Default completion length limit.
        context_tokens: Context window assumed by `remaining_tokens`.
        close_backend: Whether `close` also closes the backend.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        temperature: float = 0.7,
        max_tokens: int = 256,
        context_tokens: int = 8192,
        close_backend: bool = False,
    ) -> None:
        self._backend = backend
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._context_tokens = context_tokens
        self._close_backend = close_backend
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    @property
    def backend(self) -> Backend:
        """The wrapped personae backend."""
        return self._backend

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._started:
                await self._backend.start()
                self._started = True

    def _request(
        self,
        messages: Sequence[LLMMessage],
        json_output: bool | type[BaseModel] | None,
        extra: Mapping[str, Any],
    ) -> GenerationRequest:
        converted = to_personae_messages(messages)
        stop_arg = extra.get("stop")
        stop: tuple[str, ...] = (
            ()
            if stop_arg is None
            else (stop_arg,)
            if isinstance(stop_arg, str)
            else tuple(stop_arg)
        )
        schema: dict[str, Any] | None = None
        if isinstance(json_output, type) and issubclass(json_output, BaseModel):
            schema = json_output.model_json_schema()
        elif json_output:
            schema = {"type": "object"}
        top_logprobs = extra.get("top_logprobs")
        logprobs: int | None = None
        if top_logprobs:
            logprobs = int(top_logprobs)
        elif extra.get("logprobs"):
            logprobs = 1
        tags = extra.get("tags")
        common: dict[str, Any] = {
            "temperature": float(extra.get("temperature", self._temperature)),
            "top_p": float(extra.get("top_p", 0.95)),
            "max_tokens": int(extra.get("max_tokens", self._max_tokens)),
            "seed": extra.get("seed"),
            "json_schema": schema,
            "logprobs": logprobs,
            "tags": dict(tags) if isinstance(tags, Mapping) else {},
        }
        if self._backend.render_mode == "transcript":
            extra_stop = tuple(s for s in stop if s not in TRANSCRIPT_STOP)
            return GenerationRequest(
                prompt=render_transcript(converted), stop=TRANSCRIPT_STOP + extra_stop, **common
            )
        return GenerationRequest(messages=converted, stop=stop, **common)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """Generate one reply with the backend.

        Args:
            messages: The conversation.
            tools: Must be empty unless `tool_choice` is "none" (tools are not supported).
            tool_choice: Only "none" lets tools be passed (they are then ignored).
            json_output: True for JSON mode; a pydantic model class for its JSON schema.
            extra_create_args: temperature, top_p, max_tokens, seed, stop, logprobs,
                top_logprobs, tags (request tags); other keys are ignored.
            cancellation_token: Cancels the backend call.

        Returns:
            The reply as an AutoGen `CreateResult`.

        Raises:
            ValueError: If tools are requested.
        """
        if tools and tool_choice != "none":
            raise ValueError(
                "BackendChatClient does not support tools or function calling; "
                "create the AutoGen agent without tools (model_info.function_calling is False)"
            )
        request = self._request(messages, json_output, extra_create_args)
        await self._ensure_started()
        future = asyncio.ensure_future(self._backend.generate(request))
        if cancellation_token is not None:
            cancellation_token.link_future(future)
        result = await future
        text = result.text.strip() if self._backend.render_mode == "transcript" else result.text
        usage = RequestUsage(
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
        )
        self._usage = RequestUsage(
            prompt_tokens=self._usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens + usage.completion_tokens,
        )
        return CreateResult(
            finish_reason=_FINISH_REASONS.get(result.finish_reason, "unknown"),
            content=text,
            usage=usage,
            cached=False,
            logprobs=_convert_logprobs(result.logprobs) if result.logprobs else None,
        )

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Like `create`, but yields the whole text once and then the `CreateResult`."""
        result = await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        if isinstance(result.content, str) and result.content:
            yield result.content
        yield result

    async def close(self) -> None:
        """Close the client (and the backend, if `close_backend` was set)."""
        if self._close_backend:
            await self._backend.close()
            self._started = False

    def actual_usage(self) -> RequestUsage:
        """Tokens used by all requests so far."""
        return RequestUsage(
            prompt_tokens=self._usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens,
        )

    def total_usage(self) -> RequestUsage:
        """Tokens used by all requests so far (same as `actual_usage`; nothing is cached)."""
        return self.actual_usage()

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """Estimate the prompt tokens of `messages` (about four characters a token)."""
        converted = to_personae_messages(messages)
        if self._backend.render_mode == "transcript":
            return _estimate_tokens(render_transcript(converted))
        return sum(_estimate_tokens(m.content) + 4 for m in converted)

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """Estimate the tokens left in the context window after `messages`."""
        return self._context_tokens - self.count_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:
        """Deprecated AutoGen capabilities (use `model_info`)."""
        return ModelCapabilities(vision=False, function_calling=False, json_output=True)

    @property
    def model_info(self) -> ModelInfo:
        """What AutoGen may ask of this client: text only, JSON output, no tools."""
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=True,
            family="unknown",
            structured_output=True,
        )


class AutoGenBackend(Backend):
    """A personae backend served by an AutoGen `ChatCompletionClient`.

    Choice-constrained requests are best effort: a reply that is not one of the choices is
    snapped to the first choice it contains, else to the first choice. Grammar requests are
    refused (`BackendError`): AutoGen clients have no way to constrain output to a grammar.

    Args:
        client: Any AutoGen model client.
        backend_id: Name recorded with every call; default ``"autogen:" + family``.
        parallelism: How many requests the client serves well at once.
    """

    render_mode = "chat"

    def __init__(
        self,
        client: ChatCompletionClient,
        *,
        backend_id: str | None = None,
        parallelism: int = 8,
    ) -> None:
        self._client = client
        self._closed = False
        self.parallelism = parallelism
        if backend_id is None:
            try:
                family = client.model_info.get("family")
            except Exception:  # clients without model_info
                family = None
            backend_id = "autogen:" + (family or type(client).__name__)
        self.backend_id = backend_id

    @property
    def client(self) -> ChatCompletionClient:
        """The wrapped AutoGen client."""
        return self._client

    @staticmethod
    def _messages(request: GenerationRequest) -> list[LLMMessage]:
        if request.messages is None:
            assert request.prompt is not None
            return [UserMessage(content=request.prompt, source="user")]
        out: list[LLMMessage] = []
        for message in request.messages:
            if message.role == "system":
                out.append(SystemMessage(content=message.content))
            elif message.role == "user":
                out.append(UserMessage(content=message.content, source="user"))
            else:
                out.append(AssistantMessage(content=message.content, source="assistant"))
        return out

    @staticmethod
    def _extra_args(request: GenerationRequest) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            extra["seed"] = request.seed
        if request.stop:
            extra["stop"] = list(request.stop)
        if request.logprobs:
            extra["logprobs"] = True
            extra["top_logprobs"] = request.logprobs
        return extra

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one completion with the AutoGen client.

        Raises:
            BackendError: If the client fails or replies with function calls, or the request
                asks for a grammar.
        """
        if request.grammar is not None:
            raise BackendError(
                f"{self.backend_id}: AutoGen clients cannot constrain output to a grammar — ask "
                "for unconstrained output (e.g. a computer_use graph's actions: free)",
                retryable=False,
            )
        start = time.perf_counter()
        try:
            result = await self._client.create(
                self._messages(request),
                json_output=True if request.json_schema is not None else None,
                extra_create_args=self._extra_args(request),
            )
        except Exception as error:
            raise BackendError(f"{self.backend_id}: {type(error).__name__}: {error}") from error
        latency = time.perf_counter() - start
        if not isinstance(result.content, str):
            raise BackendError(
                f"{self.backend_id}: the model replied with function calls, not text"
            )
        text = result.content
        if request.choices and text not in request.choices:
            lowered = text.lower()
            text = next((c for c in request.choices if c.lower() in lowered), request.choices[0])
        logprobs: tuple[TokenLogprob, ...] | None = None
        if result.logprobs:
            logprobs = tuple(
                TokenLogprob(
                    token=item.token,
                    logprob=item.logprob,
                    top={
                        bytes(top.bytes).decode("utf-8", "replace"): top.logprob
                        for top in item.top_logprobs or []
                        if top.bytes is not None
                    },
                )
                for item in result.logprobs
            )
        return GenerationResult(
            text=text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cached_tokens=None,
            latency_s=latency,
            logprobs=logprobs,
        )

    async def close(self) -> None:
        """Close the AutoGen client (once)."""
        if not self._closed:
            self._closed = True
            await self._client.close()
