"""Per-episode machinery shared by every graph: taking a turn and logging it.

`Episode` is the LangGraph run context. It holds the agents, the backends and the in-memory
conversation, so graph state stays small (turn counters and flags). `take_turn` renders the
agent's prompt, calls its backend with retries, cleans the output (retrying once with a new seed
when the cleaned text is empty), and queues the `llm_calls` and `turns` rows on the writer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from personae.agents import Agent, Utterance
from personae.backends import Backend, BackendError, GenerationRequest, GenerationResult
from personae.seeds import derive_seed
from personae.store import TurnLogWriter
from personae.store._cache import ResponseCache, cache_key

#: Placeholder logged when a model produced nothing usable twice in a row.
EMPTY_UTTERANCE = "..."

_RETRYABLE = (BackendError, TimeoutError, ConnectionError)

StopPredicate = Callable[[Sequence[Utterance]], bool]


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


@dataclass
class Episode:
    """Everything one episode's graph needs, outside graph state.

    Args:
        episode_id: Stable id (rows in `turns` and `llm_calls` point at it).
        agents: Agents by name, in scenario order.
        backends: Backend per agent name.
        writer: The run's turn-log writer, or None to log nothing.
        run_seed: Seed that per-call seeds derive from.
        stop_when: Optional user predicate on the history; True ends the episode.
        retries: Attempts per model call on backend errors and timeouts.
        call_timeout_s: Seconds before one model call counts as failed (then retried).
        cache: Optional response cache consulted before each model call.
    """

    episode_id: str
    agents: dict[str, Agent]
    backends: dict[str, Backend]
    writer: TurnLogWriter | None
    run_seed: int = 0
    stop_when: StopPredicate | None = None
    retries: int = 3
    call_timeout_s: float = 600.0
    cache: ResponseCache | None = None
    history: list[Utterance] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    on_turn: Callable[[int], None] | None = None

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.agents.values()]

    async def _generate(
        self, backend: Backend, request: GenerationRequest
    ) -> tuple[GenerationResult, int, bool]:
        """The result, the number of attempts and whether it came from the cache."""
        key = cache_key(backend.backend_id, request) if self.cache is not None else ""
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit, 0, True
        try:  # the common case first: one attempt, no retry machinery on the hot path
            result, attempts = await self._attempt(backend, request), 1
        except _RETRYABLE:
            result, attempts = await self._retry(backend, request)
        if self.cache is not None:
            self.cache.put(key, backend.backend_id, result)
        return result, attempts, False

    async def _attempt(self, backend: Backend, request: GenerationRequest) -> GenerationResult:
        async with asyncio.timeout(self.call_timeout_s):
            return await backend.generate(request)

    async def _retry(
        self, backend: Backend, request: GenerationRequest
    ) -> tuple[GenerationResult, int]:
        """Attempts 2..`retries` with exponential backoff; the last error propagates."""
        attempts = 1
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(max(1, self.retries - 1)),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(_RETRYABLE),
            reraise=True,
        ):
            with attempt:
                await asyncio.sleep(0.1 * attempts)
                attempts += 1
                return await self._attempt(backend, request), attempts
        raise AssertionError("unreachable")  # pragma: no cover

    async def take_turn(self, name: str, turn: int) -> Utterance:
        """Produce, log and return agent `name`'s line for turn `turn`."""
        agent = self.agents[name]
        hidden: dict[str, Any] = dict(agent.hidden_state())
        call_id: str | None = None
        opening = agent.opening() if turn == 0 else None
        if opening is not None:
            text = opening
            hidden["scripted_opening"] = True
        else:
            text, call_id = await self._generated_line(agent, turn, hidden)
        utterance = Utterance(agent=name, label=agent.label, text=text)
        self.history.append(utterance)
        if self.writer is not None:
            self.writer.insert(
                "turns",
                {
                    "episode_id": self.episode_id,
                    "idx": turn,
                    "agent": name,
                    "role": agent.role,
                    "text": text,
                    "hidden_json": json.dumps(hidden) if hidden else None,
                    "call_id": call_id,
                    "created_at": _now(),
                },
            )
        if self.on_turn is not None:
            self.on_turn(self.completion_tokens)
        return utterance

    async def _generated_line(
        self, agent: Agent, turn: int, hidden: dict[str, Any]
    ) -> tuple[str, str]:
        backend = self.backends[agent.name]
        tags = {"episode_id": self.episode_id, "turn": turn}
        text = ""
        for retry in range(2):  # one more try with a fresh seed if the output is unusable
            seed = derive_seed(self.run_seed, self.episode_id, turn, agent.name, retry)
            request = agent.request(self.history, self.labels, seed=seed, tags=tags)
            result, attempts, hit = await self._generate(backend, request)
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
            text = agent.clean(result.text, truncated=result.finish_reason == "length")
            call_id = f"{self.episode_id}-{turn:04d}" + (f"-r{retry}" if retry else "")
            self._log_call(call_id, agent, turn, backend, request, result, attempts, hit)
            if text:
                return text, call_id
        hidden["empty_output"] = True
        return EMPTY_UTTERANCE, call_id

    def _log_call(
        self,
        call_id: str,
        agent: Agent,
        turn: int,
        backend: Backend,
        request: GenerationRequest,
        result: GenerationResult,
        attempts: int,
        cache_hit: bool,
    ) -> None:
        if self.writer is None:
            return
        messages = (
            json.dumps([{"role": m.role, "content": m.content} for m in request.messages])
            if request.messages is not None
            else None
        )
        self.writer.insert(
            "llm_calls",
            {
                "call_id": call_id,
                "episode_id": self.episode_id,
                "turn_idx": turn,
                "agent": agent.name,
                "backend": backend.backend_id,
                "render_mode": agent.render_mode,
                "prompt": request.prompt,
                "messages_json": messages,
                "params_json": json.dumps(request.params()),
                "seed": request.seed,
                "output": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "cached_tokens": result.cached_tokens,
                "latency_s": round(result.latency_s, 6),
                "attempts": attempts,
                "cache_hit": int(cache_hit),
                "created_at": _now(),
            },
        )
