"""The inference contract every backend implements.

A `GenerationRequest` carries either a rendered `prompt` (completion models) or `messages` (chat
models) plus sampling parameters, a seed, stop strings and optional structured output. A backend
returns a `GenerationResult` with the text, why generation stopped, token counts, cached prompt
tokens when the engine reports them, and latency. Backends are async and safe to share between
many concurrent episodes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from personae.backends._grammar import Grammar

RenderMode = Literal["transcript", "chat"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message as an OpenAI-style endpoint understands it."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of one generated token and its top alternatives."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One call to a model.

    Exactly one of `prompt` and `messages` is set. `choices` constrains the output to one of the
    given strings; `json_schema` constrains it to JSON matching the schema; `grammar` (never with
    the other two) to a `Grammar`'s language, each engine rendering it in its own dialect.
    `logprobs` asks for that many top alternatives per token (0 or None: none). `tags` carry who
    is asking (episode id, agent, role, turn); backends may use them for routing and scripted
    replies.
    """

    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    choices: tuple[str, ...] | None = None
    json_schema: dict[str, Any] | None = None
    grammar: Grammar | None = None
    logprobs: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of prompt or messages")
        if self.grammar is not None and (self.choices or self.json_schema is not None):
            raise ValueError("a grammar request takes neither choices nor a json_schema")

    def params(self) -> dict[str, Any]:
        """The sampling parameters as a plain dict (what the store records)."""
        params = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "choices": list(self.choices) if self.choices else None,
            "json_schema": self.json_schema,
            "logprobs": self.logprobs,
        }
        if self.grammar is not None:  # only when set: older requests keep their cache keys
            params["grammar"] = self.grammar.gbnf()
        return params

    def openai_body(self) -> dict[str, Any]:
        """The request as an OpenAI-style `/completions` (prompt) or `/chat/completions`
        (messages) body: sampling, stop, seed, logprobs; no model or structured-output keys."""
        body: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        if self.stop:
            body["stop"] = list(self.stop)
        if self.seed is not None:
            body["seed"] = self.seed
        if self.prompt is not None:
            body["prompt"] = self.prompt
            if self.logprobs:
                body["logprobs"] = self.logprobs
        else:
            assert self.messages is not None
            body["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
            if self.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = self.logprobs
        return body

    def rendered(self) -> str:
        """The prompt as text: the prompt itself, or the messages one per block."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        return "\n\n".join(f"<{m.role}>\n{m.content}" for m in self.messages)


class BackendError(RuntimeError):
    """The engine failed to serve a request.

    Args:
        message: What failed, naming the engine or URL.
        retryable: Whether the same request may succeed if sent again: True for transient
            faults (a refused or dropped connection, HTTP 5xx or 429, a garbled reply); False
            for faults that repeat (HTTP 400/401/404, a bad request) and for a server that
            took the request but did not answer in time, where a retry only multiplies the
            wait. Callers retry only retryable errors.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What a backend returns for one request."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    latency_s: float = 0.0
    logprobs: tuple[TokenLogprob, ...] | None = None


class Backend(abc.ABC):
    """An inference engine shared by every agent and episode of a run.

    Subclasses implement `generate`; `start` and `close` manage engine lifetime and are
    idempotent. `backend_id` names the engine and model (recorded with every call);
    `render_mode` says how agents should render prompts for it by default.
    """

    backend_id: str = "backend"
    render_mode: RenderMode = "chat"
    #: How many requests the engine serves well at once (a hint for run concurrency).
    parallelism: int = 8

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model or open connections. Raises `UserError` on bad configuration."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine. Safe to call twice."""

    def credentials(self) -> str | None:
        """What credentials this backend sends (e.g. `$OPENAI_API_KEY`), or None."""
        return None

    def withhold_credentials(self) -> str | None:
        """Send no credentials (the spec came from a file or database the user has not
        vouched for). Returns what is withheld (e.g. `$OPENAI_API_KEY`), or None when this
        backend would have sent none. Call before `start`."""
        return None

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one completion for `request`."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
