"""Deterministic scripted replies: the backend every unit test uses.

Replies come from a list (cycled), a mapping from agent name or role to a list, or a callable
taking the request. Lists are indexed per (episode, agent), so concurrent episodes get the same
replies they would get alone; a seat's candidates each have their own (a mapping may key one
as `AGENT#CANDIDATE`). Like a constrained engine, a reply always obeys the request's
structured output: a choice request gets one of its choices, a JSON-schema request gets valid
JSON (the scripted reply if it is JSON, else the schema's first allowed value for every field).
A grammar request gets a shortest text of the grammar when nothing is scripted for it; a scripted
reply outside the grammar is an error (no constrained engine could have produced it).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from personae.backends._base import Backend, BackendError, GenerationRequest, GenerationResult
from personae.errors import UserError

Replies = Sequence[str] | Mapping[str, Sequence[str]] | Callable[[GenerationRequest], str]


def _default_reply(request: GenerationRequest) -> str:
    if request.grammar is not None:  # as a constrained engine would: a text of the grammar
        return request.grammar.shortest()
    who = request.tags.get("agent", "agent")
    if (candidate := request.tags.get("candidate")) is not None:
        who = f"{who} ({candidate})"
    return f"This is {who}, turn {request.tags.get('turn', 0)}."


class ScriptedBackend(Backend):
    """Replies from a script instead of a model.

    Args:
        replies: A list cycled per (episode, agent); a mapping from agent name or role to such a
            list; or a callable `request -> text`. Default: a short line naming agent and turn.
        latency_s: Simulated latency per call (0 for none).
        render_mode: How agents render prompts for this backend.
        fail_rate: Fraction of calls that raise `BackendError` (fault injection for testing
            retries and failure handling); deterministic per (episode, agent, turn, attempt).
    """

    backend_id = "scripted"

    def __init__(
        self,
        replies: Replies | None = None,
        *,
        latency_s: float = 0.0,
        render_mode: str = "transcript",
        fail_rate: float = 0.0,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise UserError(
                f"fail_rate must be between 0 and 1, got {fail_rate}",
                where="backend scripted",
                fix="write e.g. scripted?fail_rate=0.2",
            )
        self._fail_rate = fail_rate
        self._attempts: defaultdict[tuple[object, object, object], int] = defaultdict(int)
        self._replies = replies
        self._latency_s = latency_s
        self.render_mode = "chat" if render_mode == "chat" else "transcript"
        self.parallelism = 1024
        self._cursor: defaultdict[tuple[object, object], int] = defaultdict(int)
        if isinstance(replies, Mapping):
            for key, value in replies.items():
                if isinstance(value, str) or not value:
                    raise UserError(
                        f"scripted replies for {key!r} must be a non-empty list of strings",
                        where="backend_options.replies",
                        fix="write e.g. {counselor: ['Hello.', 'Goodbye.']}",
                    )
        elif isinstance(replies, str) or (isinstance(replies, Sequence) and not replies):
            raise UserError(
                "scripted replies must be a non-empty list of strings",
                where="backend_options.replies",
                fix="write e.g. replies: ['Hello.', 'How are you?']",
            )

    def _pick(self, request: GenerationRequest) -> str:
        replies = self._replies
        if replies is None:
            return _default_reply(request)
        if callable(replies):
            return replies(request)
        speaker = _speaker(request)
        if isinstance(replies, Mapping):
            agent, role = str(request.tags.get("agent")), str(request.tags.get("role"))
            key = next((k for k in (speaker, agent, role) if k in replies), None)
            if key is None:
                return _default_reply(request)
            replies = replies[key]
        key2 = (request.tags.get("episode_id"), speaker)
        index = self._cursor[key2]
        self._cursor[key2] = index + 1
        return replies[index % len(replies)]

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        start = time.perf_counter()
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._fail_rate:
            tags = request.tags
            key = (tags.get("episode_id"), _speaker(request), tags.get("turn"))
            attempt = self._attempts[key]
            self._attempts[key] = attempt + 1
            if random.Random(f"{key}|{attempt}").random() < self._fail_rate:
                raise BackendError(f"injected failure (attempt {attempt + 1})")
        text = self._pick(request)
        if request.choices and text not in request.choices:
            text = request.choices[0]
        if request.grammar is not None and not request.grammar.matches(text):
            raise BackendError(
                f"scripted reply {text[:80]!r} is outside the request's grammar (a constrained "
                "engine could not produce it): script a reply the grammar accepts",
                retryable=False,
            )
        if request.json_schema is not None and not _is_json(text):
            # as a constrained engine would: the reply always matches the schema
            text = json.dumps(schema_instance(request.json_schema), separators=(",", ":"))
        return GenerationResult(
            text=text,
            finish_reason="stop",
            prompt_tokens=len(request.rendered().split()),
            completion_tokens=len(text.split()),
            latency_s=time.perf_counter() - start,
        )


def _speaker(request: GenerationRequest) -> str:
    """Who asks: the agent, or `AGENT#CANDIDATE` for a seat's candidate."""
    agent, candidate = request.tags.get("agent"), request.tags.get("candidate")
    return f"{agent}#{candidate}" if candidate is not None else str(agent)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def schema_instance(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """The simplest value a JSON schema accepts (first enum value, minimum, empty string...)."""
    root = root if root is not None else schema
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return schema_instance(root.get("$defs", {}).get(name, {}), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind == "object":
        props = schema.get("properties", {})
        return {k: schema_instance(v, root) for k, v in props.items()}
    if kind == "array":
        return [schema_instance(schema.get("items", {}), root)] * int(schema.get("minItems", 0))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    return None
