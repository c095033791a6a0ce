"""Exact re-execution: run a logged episode's graph again on its recorded outputs and compare.

The study, the episode's plan and the state of its earlier stages are rebuilt from the database
(`load_setup`), the agents and graph with the current code, and every agent is bound to a
`ReplayBackend` serving the recorded outputs (matched by call id). The episode runs with its own
id and seed (so per-call seeds match) and an in-memory writer; nothing is written to the
database. The re-run is then compared turn by turn with the log: speaker, every model call's
rendered prompt, seed and sampling parameters, the visible text, its kind and audience, the turn
policy's decision and the hidden state, then the judgments and the end reason. The first
difference is reported with a unified diff (of the prompts when they differ). A call the graph
asks for that was never recorded is a difference at that turn, not a crash. Verdicts a judge
added to the finished run (`personae judge`) are not compared: the episode never made them.
Works for every graph kind and any number of agents.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae.agents import Utterance
from personae.backends import Backend
from personae.replay._backend import ReplayBackend, ReplayMissError
from personae.replay._setup import load_setup, prepare_stages
from personae.runner import Services
from personae.store import RunLog, TurnLogWriter


@dataclass(frozen=True)
class TurnDiff:
    """The first difference between a re-run and the log.

    Attributes:
        turn: The turn index where they first differ.
        what: One line saying what differs.
        diff: A unified diff (logged → re-run) of the prompt, text or hidden state; may be "".
    """

    turn: int
    what: str
    diff: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-executing one episode.

    Attributes:
        episode_id: The episode.
        turns: Turns in the log.
        compared_from: First turn compared (a fork's turns before its fork turn are copies).
        first_diff: The first difference, or None when the re-run is identical.
    """

    episode_id: str
    turns: int
    compared_from: int
    first_diff: TurnDiff | None

    @property
    def identical(self) -> bool:
        """True when the re-run reproduced the logged episode exactly."""
        return self.first_diff is None

    def line(self) -> str:
        """One-line verdict."""
        if self.first_diff is None:
            return f"{self.episode_id}: identical ({self.turns} turns)"
        return f"{self.episode_id}: differs at turn {self.first_diff.turn}: {self.first_diff.what}"


class _MemoryWriter(TurnLogWriter):
    """Keeps the rows an Episode would write, in memory (nothing touches the database)."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))
        self.rows: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    def insert(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append(dict(row))

    def upsert(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append(dict(row))

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


def rendered_prompt(call: dict[str, Any]) -> str:
    """An `llm_calls` row's prompt as text, in `GenerationRequest.rendered()` form."""
    if call.get("prompt") is not None:
        return str(call["prompt"])
    messages = json.loads(call.get("messages_json") or "[]")
    return "\n\n".join(f"<{m['role']}>\n{m['content']}" for m in messages)


def _diff(old: str, new: str, old_name: str, new_name: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_name, tofile=new_name, lineterm=""
    )
    return "\n".join(lines)


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def _decoded(raw: str | None) -> Any:
    return json.loads(raw) if raw else None


def _compare_judgments(
    logged: list[dict[str, Any]], rerun: list[dict[str, Any]]
) -> TurnDiff | None:
    def key(row: dict[str, Any]) -> tuple[int, str]:
        return (row["turn_idx"] if row["turn_idx"] is not None else 10**9, str(row["judge"]))

    old = {key(r): r for r in logged}
    new = {key(r): r for r in rerun}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        turn = k[0] if k[0] < 10**9 else -1
        if a is None or b is None:
            which = "the re-run" if a is None else "the log"
            return TurnDiff(turn, f"judge {k[1]!r}: a judgment only in {which}")
        b_parsed = _decoded(b.get("parsed_json"))
        if (a["parsed"], bool(a["valid"])) != (b_parsed, bool(b["valid"])):
            return TurnDiff(
                turn,
                f"judge {k[1]!r}'s judgment differs",
                _diff(_json(a["parsed"]), _json(b_parsed), "logged judgment", "re-run judgment"),
            )
    return None


def _compare_calls(
    turn: int, logged: list[dict[str, Any]], rerun: list[dict[str, Any]]
) -> TurnDiff | None:
    for i in range(max(len(logged), len(rerun))):
        old = logged[i] if i < len(logged) else None
        new = rerun[i] if i < len(rerun) else None
        if old is None:
            assert new is not None
            why = "no recorded output for it" if new.get("missed") else "it was not in the log"
            return TurnDiff(
                turn,
                f"the re-run made a model call {new['call_id']!r} but {why}",
                _diff("", new["rendered"], "logged (no call)", f"re-run {new['call_id']}"),
            )
        if new is None:
            return TurnDiff(
                turn, f"the re-run did not make the logged model call {old['call_id']!r}"
            )
        old_prompt, new_prompt = rendered_prompt(old), new["rendered"]
        if old_prompt != new_prompt:
            return TurnDiff(
                turn,
                f"rendered prompt of call {old['call_id']!r} differs",
                _diff(old_prompt, new_prompt, f"logged {old['call_id']}", "re-run"),
            )
        if old.get("seed") != new.get("seed"):
            return TurnDiff(turn, f"seed differs: logged {old.get('seed')}, re-run {new['seed']}")
        old_params = json.loads(old.get("params_json") or "{}")
        new_params = new.get("params", {})
        if old_params != new_params:
            changed = sorted(
                k for k in {*old_params, *new_params} if old_params.get(k) != new_params.get(k)
            )
            return TurnDiff(
                turn,
                f"sampling parameters differ: {', '.join(changed)}",
                _diff(_json(old_params), _json(new_params), "logged params", "re-run params"),
            )
        if new.get("missed"):
            return TurnDiff(turn, f"no recorded output for call {new['call_id']!r}")
    return None


def _compare(
    start: int,
    logged_turns: dict[int, Any],
    logged_calls: dict[int, list[dict[str, Any]]],
    new_turns: dict[int, dict[str, Any]],
    new_calls: dict[int, list[dict[str, Any]]],
    logged_end: str | None,
    new_end: str | None,
) -> TurnDiff | None:
    last = max([start - 1, *logged_turns, *new_turns, *new_calls])
    for t in range(start, last + 1):
        old, new = logged_turns.get(t), new_turns.get(t)
        calls = new_calls.get(t, [])
        new_agent = new["agent"] if new is not None else (calls[0]["agent"] if calls else None)
        if old is None:
            ended = f" ({logged_end})" if logged_end else ""
            return TurnDiff(
                t, f"the re-run went on to turn {t} ({new_agent}) but the log ends there{ended}"
            )
        if new_agent is None:
            ended = f" ({new_end})" if new_end else ""
            return TurnDiff(
                t, f"the re-run ended{ended} before turn {t}, where the log has {old.agent!r}"
            )
        if old.agent != new_agent:
            return TurnDiff(t, f"speaker differs: logged {old.agent!r}, re-run {new_agent!r}")
        if new is not None and old.decision != _decoded(new.get("decision_json")):
            return TurnDiff(
                t,
                "turn policy decision differs",
                _diff(_json(old.decision), _json(_decoded(new.get("decision_json"))),
                      "logged decision", "re-run decision"),
            )  # fmt: skip
        found = _compare_calls(t, logged_calls.get(t, []), calls)
        if found is not None:
            return found
        if new is None:  # pragma: no cover - a missed call is reported by _compare_calls
            return TurnDiff(t, "the re-run stopped during this turn")
        if old.text != new["text"]:
            return TurnDiff(
                t,
                f"{old.agent}'s utterance differs",
                _diff(old.text, new["text"], "logged text", "re-run text"),
            )
        new_audience = _decoded(new.get("audience_json"))
        if (old.kind, old.audience) != (
            new.get("kind") or "line",
            tuple(new_audience) if new_audience else None,
        ):
            return TurnDiff(
                t,
                f"{old.agent}'s line kind or audience differs: logged {old.kind} to "
                f"{list(old.audience) if old.audience else 'everyone'}, re-run "
                f"{new.get('kind')} to {new_audience or 'everyone'}",
            )
        new_hidden = json.loads(new["hidden_json"]) if new.get("hidden_json") else {}
        if old.hidden != new_hidden:
            return TurnDiff(
                t,
                f"{old.agent}'s hidden state differs",
                _diff(_json(old.hidden), _json(new_hidden), "logged hidden", "re-run hidden"),
            )
    if logged_end is not None and new_end is not None and logged_end != new_end:
        return TurnDiff(
            max(last, start), f"end reason differs: logged {logged_end!r}, re-run {new_end!r}"
        )
    return None


async def averify_episode(
    db: str | Path,
    episode: str,
    *,
    stop_when: Callable[[Sequence[Utterance]], bool] | None = None,
) -> VerifyResult:
    """Async form of `verify_episode`."""
    with RunLog(db) as log:
        setup = load_setup(log, episode)
        logged = log.turns(setup.episode_id)
        calls = log.calls(setup.episode_id)
        judged = log.judgments(setup.episode_id)
        await prepare_stages(log, setup)
    modes = {c["agent"]: c["render_mode"] for c in calls if c["render_mode"]}
    fallback = next(iter(modes.values()), "transcript")  # an agent that made no call
    by_mode: dict[str, ReplayBackend] = {}
    backends: dict[str, Backend] = {}
    for name in setup.study.backend_specs():
        mode = modes.get(name, fallback)
        if mode not in by_mode:
            by_mode[mode] = ReplayBackend(db, render=mode)
        backends[name] = by_mode[mode]
    writer = _MemoryWriter()
    job = setup.study.job(setup.plan, Services(backends, writer, None, stop_when))
    # verdicts added afterwards (`personae judge`) are not the episode's own: compare only
    # what its live judges produced
    live = {observer.judge.name for observer in job.episode.observers}
    live |= {seat.supervisor.name for seat in job.episode.seats.values()}
    calls = [c for c in calls if c.get("purpose") != "judge" or c["agent"] in live]
    judged = [j for j in judged if j["judge"] in live]
    start = setup.fork_turn  # a fork's turns before it are the parent's, kept verbatim
    job.episode.prefix = [t for t in logged if t.idx < start]
    new_end: str | None = None
    missed: ReplayMissError | None = None
    for backend in by_mode.values():
        await backend.start()
    try:
        state = await job.graph.ainvoke(job.input, config=job.config, context=job.episode)
        await job.episode.finish()
        new_end = state.get("end_reason") or job.episode.end_reason
    except ReplayMissError as exc:
        job.episode.cancel()
        missed = exc
    finally:
        await job.episode.release()
        for backend in by_mode.values():
            await backend.close()

    new_calls: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in writer.rows["llm_calls"]:
        new_calls[int(row["turn_idx"])].append(
            {
                "call_id": row["call_id"],
                "agent": row["agent"],
                "rendered": rendered_prompt(row),
                "seed": row["seed"],
                "params": json.loads(row["params_json"] or "{}"),
            }
        )
    if missed is not None and missed.turn is not None:
        request = missed.request
        new_calls[missed.turn].append(
            {
                "call_id": missed.call_id,
                "agent": request.tags.get("agent"),
                "rendered": request.rendered(),
                "seed": request.seed,
                "params": json.loads(json.dumps(request.params())),
                "missed": True,
            }
        )
    logged_calls: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for call in calls:
        if call["turn_idx"] >= start:
            logged_calls[int(call["turn_idx"])].append(call)
    for grouped in (new_calls, logged_calls):  # judges run concurrently: compare by call id
        for turn_calls in grouped.values():
            turn_calls.sort(key=lambda c: str(c["call_id"]))
    complete = setup.row.get("status") == "complete"
    first = _compare(
        start,
        {t.idx: t for t in logged if t.idx >= start},
        logged_calls,
        {int(r["idx"]): r for r in writer.rows["turns"] if r["idx"] >= start},
        {t: c for t, c in new_calls.items() if t >= start},
        setup.row.get("end_reason") if complete else None,
        new_end,
    )
    if first is None and missed is not None:  # a miss without a turn tag
        first = TurnDiff(start, str(missed))
    if first is None and complete:
        first = _compare_judgments(judged, writer.rows["judgments"])
    return VerifyResult(setup.episode_id, len(logged), start, first)


def verify_episode(
    db: str | Path,
    episode: str,
    *,
    stop_when: Callable[[Sequence[Utterance]], bool] | None = None,
) -> VerifyResult:
    """Re-run a logged episode on its recorded outputs and compare it with the log.

    Args:
        db: The run database.
        episode: Episode id, unique prefix, or index into the database's episode list.
        stop_when: The stop predicate the episode ran with, if any (it is not stored).

    Returns:
        A `VerifyResult`: identical, or the first differing turn with a diff.

    Raises:
        UserError: unknown episode, unreadable database, or a stored scenario/persona that
            cannot be rebuilt.
    """
    return asyncio.run(averify_episode(db, episode, stop_when=stop_when))


async def averify_run(db: str | Path, run_id: str | None = None) -> list[VerifyResult]:
    """Async form of `verify_run`."""
    with RunLog(db) as log:
        if run_id is not None:
            log.run(run_id)
        ids = [e["episode_id"] for e in log.episodes(run_id) if e["status"] == "complete"]
    return [await averify_episode(db, episode_id) for episode_id in ids]


def verify_run(db: str | Path, run_id: str | None = None) -> list[VerifyResult]:
    """Verify every complete episode of one run (or of the whole database), in run order."""
    return asyncio.run(averify_run(db, run_id))
