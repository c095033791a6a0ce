"""What an OpenAI-compatible server supports, found out once when the openai backend starts.

- **Render mode.** A llama.cpp server reports its chat template in `GET /props`; with none, or
  with a ChatML template whose markers are not tokens of the model (llama.cpp's fallback for a
  model that ships no template), the model is a base model: `transcript`. Other servers get a
  one-token chat request: accepted → `chat`; refused for want of a chat template (vLLM serving a
  base model) or no chat endpoint at all → `transcript`; anything else cannot be told.
- **Structured-output dialect.** The server's own first (`llamacpp` when `/props` answers,
  `vllm` when `GET /version` does, else `openai`), each checked with one tiny constrained
  request whose choices no model would say unconstrained; the first that comes back as one of
  them is the dialect.

Whatever cannot be told stops the run with one line naming the option to set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from personae.backends._base import (
    BackendError,
    GenerationRequest,
    Message,
    RenderMode,
)
from personae.errors import UserError

_WHERE = "backend openai"
#: Choices of the constrained test request: strings no model answers a question about France
#: with unless it is made to.
PROBE_CHOICES = ("qx7", "zv3")
_RENDER_FIX = (
    "set render=chat (instruct model) or render=transcript (base model) in the backend spec, "
    "e.g. openai:URL?render=transcript, or render: in the scenario"
)


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        err = err.get("message", err)
    return str(err)[:300]


class ServerProbe:
    """Questions to the server at `base` (an endpoint ending in `/v1`), each asked once.

    Args:
        client: The backend's HTTP client (its credentials, its transport).
        base: The endpoint.
        model: The model name requests carry.
        timeout_s: Seconds each probe request may take.
    """

    def __init__(self, client: httpx.AsyncClient, base: str, model: str, timeout_s: float) -> None:
        self.client = client
        self.base = base
        self.root = base.removesuffix("/v1")
        self.model = model
        self.timeout_s = timeout_s
        self._props: dict[str, Any] | None = None
        self._asked_props = False

    async def _get(self, url: str) -> dict[str, Any] | None:
        """The JSON object `GET url` answers with, or None (any failure or another shape)."""
        try:
            resp = await self.client.get(url, timeout=self.timeout_s)
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def props(self) -> dict[str, Any] | None:
        """llama.cpp's `GET /props` (it has a `chat_template`), or None for other servers."""
        if not self._asked_props:
            self._asked_props = True
            body = await self._get(f"{self.root}/props")
            self._props = body if body is not None and "chat_template" in body else None
        return self._props

    async def is_vllm(self) -> bool:
        """Whether the server answers vLLM's `GET /version`."""
        body = await self._get(f"{self.root}/version")
        return body is not None and isinstance(body.get("version"), str)

    async def render_mode(self) -> RenderMode:
        """`chat` for an instruct model with a chat template, `transcript` for a base model.

        Raises:
            UserError: the server's answers do not tell (naming `render=`).
        """
        props = await self.props()
        if props is not None:
            template = str(props.get("chat_template") or "")
            if not template.strip():
                return "transcript"
            if "<|im_start|>" in template and not await self._single_token("<|im_start|>"):
                return "transcript"  # llama.cpp's ChatML fallback: the model has no template
            return "chat"
        url = f"{self.base}/chat/completions"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        try:
            resp = await self.client.post(url, json=body, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"could not ask {url} whether the model is a chat model ({detail})",
                where=_WHERE,
                fix=f"check that the server is running, or {_RENDER_FIX}",
            ) from exc
        message = _message(resp) if resp.status_code != 200 else ""
        if resp.status_code == 200:
            return "chat"
        if resp.status_code in (400, 422) and "chat template" in message.lower().replace("_", " "):
            return "transcript"  # vLLM serving a model without a chat template
        if resp.status_code in (404, 405) and "model" not in message.lower():
            return "transcript"  # no chat endpoint: a completions-only server
        raise UserError(
            f"could not tell whether {self.base} serves a chat or a base model: a test chat "
            f"request got HTTP {resp.status_code} ({message})",
            where=_WHERE,
            fix=_RENDER_FIX,
        )

    async def _single_token(self, text: str) -> bool:
        """Whether llama.cpp's tokenizer reads `text` as one (special) token."""
        try:
            resp = await self.client.post(
                f"{self.root}/tokenize",
                json={"content": text, "add_special": False, "parse_special": True},
                timeout=self.timeout_s,
            )
            tokens = resp.json().get("tokens") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return isinstance(tokens, list) and len(tokens) == 1

    async def dialect(
        self,
        payload: Callable[[GenerationRequest, str], dict[str, Any]],
        attempt: Callable[[str, dict[str, Any]], Any],
        unwrap: Callable[[str, GenerationRequest, str], str],
        render_mode: RenderMode,
        dialects: tuple[str, ...],
    ) -> str:
        """The first of `dialects` (the server's own first) that the server honours.

        Args:
            payload: The backend's request body for a request in a dialect.
            attempt: The backend's one POST (raises `BackendError`).
            unwrap: The backend's reply text for a request in a dialect.
            render_mode: Chat or transcript: which endpoint the test request goes to.
            dialects: The dialects to try.

        Raises:
            UserError: none of them came back constrained (naming `structured=`).
        """
        if await self.props() is not None:
            first = "llamacpp"
        elif await self.is_vllm():
            first = "vllm"
        else:
            first = "openai"
        order = [first, *(d for d in dialects if d != first)]
        question = "What is the capital of France?"
        common: dict[str, Any] = {"choices": PROBE_CHOICES, "max_tokens": 8, "temperature": 0.0}
        if render_mode == "chat":
            request = GenerationRequest(messages=(Message("user", question),), **common)
            url = f"{self.base}/chat/completions"
        else:
            request = GenerationRequest(prompt=f"Q: {question}\nA:", **common)
            url = f"{self.base}/completions"
        seen: list[str] = []
        for dialect in order:
            try:
                out = await attempt(url, payload(request, dialect))
                choice = out["choices"][0]
                text = choice.get("text")
                if text is None:
                    text = (choice.get("message") or {}).get("content") or ""
                answer = unwrap(str(text), request, dialect).strip()
            except (BackendError, LookupError, TypeError, AttributeError) as exc:
                seen.append(f"{dialect}: {str(exc).splitlines()[0][:120]}")
                continue
            if answer in PROBE_CHOICES:
                return dialect
            seen.append(f"{dialect}: answered {answer[:40]!r}")
        raise UserError(
            f"{self.base} did not constrain a test answer to one of {', '.join(PROBE_CHOICES)} "
            f"in any structured-output dialect ({'; '.join(seen)})",
            where=_WHERE,
            fix="set structured=vllm, llamacpp or openai to the dialect the server reads, "
            "e.g. openai:URL?structured=llamacpp (constrained answers — judges, choices — "
            "need one)",
        )
