"""The `replay` backend: serves the model outputs recorded in a run database.

Spec: `replay:PATH.db` (options: `render=transcript|chat`, default: the mode most calls in the
database were rendered in). A request is matched to a recorded call by the `call_id` in its tags
(the Episode names every call: `{episode_id}-{turn:04d}`, a suffix for judges and selectors,
`-rN` for retries), and served its text, finish reason, token counts and logprobs. Requests
without a `call_id` tag (older callers) are matched by `episode_id` and `turn`, the n-th request
for the same pair getting retry suffix n. `rename` maps an episode id to the one whose recording
serves it (a fork replays its parent's prefix). Every request is remembered (`requests`, by call
id) so a re-execution can compare the prompts it rendered with the recorded ones. A request with
no recorded call raises `ReplayMissError`, which is not a `BackendError`: retrying cannot help.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from personae.backends import (
    Backend,
    GenerationRequest,
    GenerationResult,
    RenderMode,
    TokenLogprob,
    register_backend,
)
from personae.errors import UserError
from personae.store import check_database
from personae.store._schema import readonly_uri


class ReplayMissError(RuntimeError):
    """The graph asked for a model call the database has no recording of.

    Attributes:
        call_id: The call id the request would have had.
        turn: The turn it was asked for (None when the request carried no turn tag).
        request: The request itself.
    """

    def __init__(self, call_id: str, turn: int | None, request: GenerationRequest) -> None:
        super().__init__(f"no recorded model output for call {call_id!r}")
        self.call_id = call_id
        self.turn = turn
        self.request = request


def call_id_for(episode_id: str, turn: int, retry: int) -> str:
    """The call id the Episode gives a call (`-rN` for the N-th retry at the same turn)."""
    return f"{episode_id}-{turn:04d}" + (f"-r{retry}" if retry else "")


class ReplayBackend(Backend):
    """Serves recorded outputs (text, finish reason, token counts) instead of generating.

    Args:
        path: The run database to replay from.
        render: Render mode agents should use; default: the mode most recorded calls used.

    Raises:
        UserError: the file is not a personae database of a readable version, or `render` is
            not `transcript` or `chat`.
    """

    backend_id = "replay"

    def __init__(
        self,
        path: str | Path,
        *,
        render: str | None = None,
        rename: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.rename = dict(rename or {})
        check_database(self.path)
        if render not in (None, "transcript", "chat"):
            raise UserError(
                f"bad render mode {render!r}",
                where=f"backend spec 'replay:{self.path}?render={render}'",
                fix="use render=transcript or render=chat",
            )
        self._conn: sqlite3.Connection | None = None
        self.render_mode: RenderMode = (
            "chat" if (render or self._recorded_mode()) == "chat" else "transcript"
        )
        self.parallelism = 1024
        #: Every request served or missed, by the call id it was matched to.
        self.requests: dict[str, GenerationRequest] = {}
        self._served: defaultdict[tuple[str, int], int] = defaultdict(int)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(readonly_uri(self.path), uri=True, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
        return self._conn

    def _recorded_mode(self) -> str:
        row = (
            self._connect()
            .execute(
                "SELECT render_mode FROM llm_calls WHERE render_mode IS NOT NULL "
                "GROUP BY render_mode ORDER BY count(*) DESC LIMIT 1"
            )
            .fetchone()
        )
        return str(row[0]) if row else "transcript"

    async def start(self) -> None:
        self._connect()

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def recorded(self, call_id: str) -> dict[str, Any] | None:
        """The recorded `llm_calls` row for `call_id`, or None."""
        row = (
            self._connect()
            .execute("SELECT * FROM llm_calls WHERE call_id = ?", (call_id,))
            .fetchone()
        )
        return dict(row) if row is not None else None

    def _source(self, call_id: str) -> str:
        for new, old in self.rename.items():
            if call_id.startswith(new):
                return old + call_id[len(new) :]
        return call_id

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        episode_id, turn = request.tags.get("episode_id"), request.tags.get("turn")
        tagged = request.tags.get("call_id")
        if tagged is not None:
            call_id = str(tagged)
        elif episode_id is None or turn is None:
            raise ReplayMissError(
                "(request without call_id or episode_id/turn tags)", None, request
            )
        else:
            key = (str(episode_id), int(turn))
            retry = self._served[key]
            self._served[key] = retry + 1
            call_id = call_id_for(key[0], key[1], retry)
        self.requests[call_id] = request
        row = self.recorded(self._source(call_id))
        if row is None or row["output"] is None:
            raise ReplayMissError(call_id, int(turn) if turn is not None else None, request)
        return GenerationResult(
            text=str(row["output"]),
            finish_reason=str(row["finish_reason"] or "stop"),
            prompt_tokens=int(row["prompt_tokens"] or 0),
            completion_tokens=int(row["completion_tokens"] or 0),
            cached_tokens=row["cached_tokens"],
            latency_s=0.0,
            logprobs=_logprobs(row.get("logprobs_json")),
        )


def _logprobs(raw: str | None) -> tuple[TokenLogprob, ...] | None:
    if not raw:
        return None
    return tuple(
        TokenLogprob(t, float(lp), {k: float(v) for k, v in top.items()})
        for t, lp, top in json.loads(raw)
    )


class ForkBackend(Backend):
    """Serves turns before `fork_turn` from a recording (the parent's), the rest from `live`.

    A fork re-executes its episode from the start: every call of a turn before the fork turn is
    answered with the parent's recorded output, so the graph (whatever its kind) walks the same
    prefix, then continues on the live engine.
    """

    def __init__(self, live: Backend, recorded: ReplayBackend, fork_turn: int) -> None:
        self.live = live
        self.recorded = recorded
        self.fork_turn = fork_turn
        self.backend_id = live.backend_id
        self.render_mode = live.render_mode
        self.parallelism = live.parallelism

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        turn = request.tags.get("turn")
        if turn is not None and int(turn) < self.fork_turn:
            return await self.recorded.generate(request)
        return await self.live.generate(request)


@register_backend("replay")
def _replay(target: str | None, options: dict[str, Any]) -> Backend:
    """Serves the model outputs recorded in a run database (replay:PATH.db)."""
    if not target:
        raise UserError(
            "the replay backend needs a run database",
            where="backend spec",
            fix="write e.g. replay:logs/run.db",
        )
    return ReplayBackend(target, **options)
