"""Per-episode machinery shared by every graph kind: taking a turn, observing it, logging it.

`Episode` is the LangGraph run context. It holds the agents, their backends and the in-memory
conversation, so graph state stays small (a speaker, a flag). Every logged row of an episode —
turns, model calls, judgments — is written here, through the run's one writer:

- `take_turn` renders an agent's prompt from what it may see (`Agent.view`: its audience, its
  context window), calls its backend, cleans the output (one more try with a new seed when the
  cleaned text is empty, or an abstention when passing is allowed), logs the call and the turn
  with its audience and the turn policy's decision, then runs the observers watching that agent.
  For an agent with a `Seat`, every candidate proposes the line (concurrently, each with its own
  persona, sampling and backend), the supervisor picks one, and the chosen line is logged with
  the tree of proposals, the choice and its rationale as hidden state (never shown to agents).
- `add_line` logs a line with no model call (seed lines, openings, a teacher's decision).
- `reserve`, `call` and `log_turn` are the single steps graphs with concurrent steps use.
- `finish` waits for the observers' verdicts and runs the end-of-episode observers.
- `hold` keeps a resource (an environment) open for the rest of the episode; `release`, which
  the runner calls after every episode however it ended, closes what was held.
- An agent on an `interactive` backend (`human`) is played by a person: its turn is a LangGraph
  interrupt (`prompt_for` is the payload), resumed with the typed line; `restore` takes up a
  paused episode from its logged turns.

Model calls have one retry layer (here) and one deadline covering every attempt. Each call has a
stable id (`{episode}-{turn:04d}` plus a suffix for retries, judges, selectors, candidates
(`-cand-ID`) and supervisors (`-choose-NAME`)) that travels in the request's tags, so a replay
serves exactly the recorded output of that call.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from langgraph.types import interrupt

from personae._progress import CallWatch
from personae.agents import Agent, Utterance
from personae.agents._base import LineKind
from personae.backends import Backend, BackendError, GenerationRequest, GenerationResult
from personae.judges import JudgeAgent, Judgment
from personae.seeds import derive_seed
from personae.store import Turn, TurnLogWriter
from personae.store._cache import ResponseCache, cache_key

#: Placeholder logged when a model produced nothing usable twice in a row.
EMPTY_UTTERANCE = "..."

_RETRYABLE = (BackendError, TimeoutError, ConnectionError)

StopPredicate = Callable[[Sequence[Utterance]], bool]
Purpose = Literal["turn", "judge", "select", "step", "candidate", "choose"]
T = TypeVar("T")


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def call_id(episode_id: str, turn: int, suffix: str = "", retry: int = 0) -> str:
    """The id of a model call: `{episode}-{turn:04d}`, then `-SUFFIX`, then `-rN` for retry N."""
    return (
        f"{episode_id}-{turn:04d}"
        + (f"-{suffix}" if suffix else "")
        + (f"-r{retry}" if retry else "")
    )


@dataclass(frozen=True)
class Observer:
    """A judge bound to the agents it watches.

    Attributes:
        judge: The judge agent.
        watches: Agents whose lines it rates (`when="turn"`) or reads (`when="end"`).
        when: `turn`: after each line of a watched agent; `end`: once, after the episode.
        route_to: Agents who receive its verdict as a private line (None: nobody; the verdict
            only goes into `judgments`).
    """

    judge: JudgeAgent
    watches: frozenset[str]
    when: Literal["turn", "end"] = "turn"
    route_to: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Seat:
    """An agent whose lines are chosen among candidates' proposals.

    Attributes:
        candidates: Candidate agents by id, in scenario order; each has the seat's name and
            speaker tag (so the conversation's lines are its own lines) but its own persona,
            sampling and backend (`backends[candidate_key]`).
        keys: The backend (and `llm_calls.agent`) key of each candidate, by id.
        supervisor: The judge that picks one proposal per turn.
    """

    candidates: dict[str, Agent]
    keys: dict[str, str]
    supervisor: JudgeAgent


async def _together(coroutines: Iterable[Awaitable[Any]]) -> list[Any]:
    """Await every coroutine concurrently, results in order; when one fails, the others are
    cancelled (none goes on logging for an episode that failed) and its error is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", True))


@dataclass
class Episode:
    """Everything one episode's graph needs, outside graph state.

    Args:
        episode_id: Stable id (rows in `turns`, `llm_calls` and `judgments` point at it).
        agents: Agents by name, in scenario order (observers included).
        backends: Backend per agent name.
        writer: The run's turn-log writer, or None to log nothing.
        run_seed: Seed that per-call seeds derive from.
        stop_when: Optional user predicate on the history; True ends the episode.
        retries: Attempts per model call on retryable backend errors.
        deadline_s: Seconds one model call may take, every attempt and backoff included.
        cache: Optional response cache consulted before each model call.
        observers: Judges watching this episode.
        lineage: The episode whose random draws (turn policies) this one shares: itself, or
            for a fork the episode it was forked from, so its replayed prefix draws the same.
        prefix: Logged turns a fork keeps: `take_turn` and `add_line` return them verbatim
            (no model call) while the graph walks them, and fail if the graph diverges.
    """

    episode_id: str
    agents: dict[str, Agent]
    backends: dict[str, Backend]
    writer: TurnLogWriter | None
    run_seed: int = 0
    stop_when: StopPredicate | None = None
    retries: int = 3
    deadline_s: float = 600.0
    cache: ResponseCache | None = None
    observers: list[Observer] = field(default_factory=list)
    history: list[Utterance] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    on_turn: Callable[[int], None] | None = None
    #: The next turn index (`reserve` hands them out in order).
    next_turn: int = 0
    #: Lines and passes of agents taking turns: what `max_turns` counts.
    turns_taken: int = 0
    #: Passes in a row (a turn policy ends the episode when everyone passes).
    passes_in_a_row: int = 0
    #: The graph's small result, stored in `episodes.outcome_json` (read by later stages).
    outcome: dict[str, Any] | None = None
    #: Why the episode ended, for graphs whose state has no `end_reason`.
    end_reason: str | None = None
    lineage: str = ""
    prefix: Sequence[Turn] = ()
    #: Model calls in flight, watched by the runner to say when a backend stops answering.
    watch: CallWatch | None = None
    #: `warn(key, text)`: a warning for the user, shown once per key for the whole run.
    warn: Callable[[str, str], None] | None = None
    #: Agents whose lines are chosen among candidates, by agent name.
    seats: dict[str, Seat] = field(default_factory=dict)
    #: Per-episode objects a graph keeps out of graph state (an environment session), by key.
    scratch: dict[str, Any] = field(default_factory=dict)
    _held: AsyncExitStack = field(default_factory=AsyncExitStack)
    #: Seconds the episode had run before this process took it up (a resumed pause).
    clock_offset_s: float = 0.0
    _clock: float = field(default_factory=time.monotonic)
    _lines: int = 0  # spoken lines so far (an agent's fixed opening is for the first one)
    _pending: list[asyncio.Task[Judgment]] = field(default_factory=list)
    #: Constrained-choice answers off their list, by turn, until that turn's row is logged.
    _off_choice: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lineage = self.lineage or self.episode_id
        self._labels = [a.label for a in self.agents.values()]
        for observer in self.observers:
            observer.judge.watches = observer.watches

    @property
    def labels(self) -> list[str]:
        """Speaker tags of every agent (stop strings)."""
        return self._labels

    # -- resources ---------------------------------------------------------------------------
    async def hold(self, resource: AbstractAsyncContextManager[T]) -> T:
        """Enter `resource` and keep it until `release` (last held, first closed)."""
        return await self._held.enter_async_context(resource)

    async def release(self) -> None:
        """Close every resource `hold` entered (idempotent). The runner calls it after every
        episode, complete, failed or cancelled, so nothing an episode opened outlives it."""
        stack, self._held = self._held, AsyncExitStack()
        await stack.aclose()

    # -- single steps ------------------------------------------------------------------------
    def reserve(self) -> int:
        """The next turn index (fixed before concurrent steps run, so the log order is too)."""
        turn = self.next_turn
        self.next_turn += 1
        return turn

    def seed_for(self, turn: int, name: str, attempt: int = 0) -> int:
        """The call seed of `name`'s call at turn `turn`."""
        return derive_seed(self.run_seed, self.episode_id, turn, name, attempt)

    def tags(self, turn: int, call: str, **extra: Any) -> dict[str, Any]:
        """Request tags naming the episode, the turn and the call (replay matches on them)."""
        return {"episode_id": self.episode_id, "turn": turn, "call_id": call, **extra}

    async def call(
        self, name: str, turn: int, request: GenerationRequest, *, purpose: Purpose = "step"
    ) -> tuple[GenerationResult, str]:
        """Send `request` for agent `name` (retrying backend errors) and log the call.

        The request should carry `tags(turn, call_id(...))`; its call id is taken from there
        (default `{episode}-{turn:04d}`).
        """
        agent, backend = self.agents[name], self.backends[name]
        cid = str(request.tags.get("call_id") or call_id(self.episode_id, turn))
        result, attempts, cache_hit = await self._generate(backend, request)
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self._log_call(cid, name, agent.render_mode, turn, backend, request, result, attempts,
                       cache_hit, purpose)  # fmt: skip
        return result, cid

    def log_turn(
        self,
        turn: int,
        utterance: Utterance,
        hidden: dict[str, Any] | None = None,
        call: str | None = None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        """Queue the `turns` row of turn `turn` (with, in `hidden_json`, any answer of this
        turn's model calls that was not one of the allowed choices: `off_choice`), and report
        it to `on_turn` (every logged turn counts, whatever the graph kind)."""
        if self.on_turn is not None:
            self.on_turn(self.completion_tokens)
        if self.writer is None:
            return
        if off := self._off_choice.pop(turn, None):
            hidden = {**(hidden or {}), "off_choice": off}
        self.writer.insert(
            "turns",
            {
                "episode_id": self.episode_id,
                "idx": turn,
                "agent": utterance.agent,
                "role": self.agents[utterance.agent].role,
                "kind": utterance.kind,
                "text": utterance.text,
                "audience_json": json.dumps(list(utterance.audience))
                if utterance.audience is not None
                else None,
                "hidden_json": json.dumps(hidden) if hidden else None,
                "decision_json": json.dumps(decision) if decision else None,
                "call_id": call,
                "created_at": _now(),
            },
        )

    # -- conversation turns ------------------------------------------------------------------
    def utterance(
        self,
        name: str,
        text: str,
        kind: LineKind = "line",
        audience: Sequence[str] | None = None,
    ) -> Utterance:
        """A line by `name` (its audience defaults to the agent's own)."""
        agent = self.agents[name]
        heard = tuple(audience) if audience is not None else agent.audience
        return Utterance(name, agent.label, text, heard, kind)

    async def add_line(
        self,
        name: str,
        text: str,
        *,
        kind: LineKind = "line",
        audience: Sequence[str] | None = None,
        hidden: dict[str, Any] | None = None,
        decision: dict[str, Any] | None = None,
    ) -> Utterance:
        """Log a line with no model call (a seed line, a fixed opening, a decision)."""
        turn = self.reserve()
        if turn < len(self.prefix):
            return await self._kept(turn, name, decision, taken=False)
        utterance = self.utterance(name, text, kind, audience)
        self.history.append(utterance)
        self._lines += kind == "line"
        self.log_turn(turn, utterance, hidden, None, decision)
        if self.observers:
            await self._after_line(turn, utterance)
        return utterance

    async def take_turn(
        self,
        name: str,
        *,
        decision: dict[str, Any] | None = None,
        pass_token: str | None = None,
        annotate: Callable[[str], dict[str, Any]] | None = None,
    ) -> Utterance:
        """Produce, log and return agent `name`'s next line.

        Args:
            name: The speaking agent.
            decision: The turn policy's decision that picked it (stored with the turn).
            pass_token: When set, the agent may abstain: an output equal to it (or empty) is
                logged as a `pass`, shown to nobody.
            annotate: Hidden state computed from the line's text (e.g. the action parsed from
                it), added to the turn's `hidden_json`; a fork's kept turn keeps its own.
        """
        if self.writer is not None:
            await self.writer.room()  # the writer's queue is bounded: wait while it is full
        agent = self.agents[name]
        if (
            self.backends[name].interactive
            and name not in self.seats
            and self.next_turn >= len(self.prefix)
        ):
            return await self._human_turn(name, decision)
        turn = self.reserve()
        if turn < len(self.prefix):
            return await self._kept(turn, name, decision, taken=True)
        seat = self.seats.get(name)
        if seat is not None:
            text, cid, hidden = await self._chosen_line(name, seat, turn, pass_token)
        else:
            hidden = dict(agent.hidden_state())
            text, cid = await self._proposal(agent, turn, hidden, pass_token)
        kind: LineKind = "pass" if pass_token is not None and not text else "line"
        if annotate is not None:
            hidden.update(annotate(text))
        utterance = self.utterance(name, text, kind)
        self.history.append(utterance)
        self.turns_taken += 1
        self.passes_in_a_row = self.passes_in_a_row + 1 if kind == "pass" else 0
        self._lines += kind == "line"
        self.log_turn(turn, utterance, hidden, cid, decision)
        if self.observers and kind == "line":
            await self._after_line(turn, utterance)
        return utterance

    # -- people in the loop ----------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Seconds the episode has run (across pauses, not counting them)."""
        return self.clock_offset_s + time.monotonic() - self._clock

    def prompt_for(self, name: str) -> dict[str, Any]:
        """The interrupt payload of `name`'s turn: who speaks, the lines it has not answered
        yet (those it may see since its own last line), the turn number and elapsed time."""
        agent = self.agents[name]
        unanswered: list[Utterance] = []
        for utterance in reversed(agent.view(self.history)):
            if utterance.agent == name and utterance.kind == "line":
                break
            unanswered.append(utterance)
        return {
            "episode_id": self.episode_id,
            "agent": name,
            "label": agent.label,
            "turn": self.next_turn,
            "lines": [
                {"agent": u.agent, "label": u.label, "text": u.text} for u in reversed(unanswered)
            ],
            "elapsed_s": round(self.elapsed_s(), 1),
        }

    async def _human_turn(self, name: str, decision: dict[str, Any] | None) -> Utterance:
        """`name`'s line typed by a person: a LangGraph interrupt (the graph stops here; the
        runner resumes it with `{"text": ..., "seconds": ...}`), then logged as a turn with no
        model call and `{"human": true, "seconds": ...}` as hidden state. Nothing is reserved
        or logged before the interrupt, as LangGraph runs the node again on resume."""
        answer = interrupt(self.prompt_for(name))
        if isinstance(answer, dict):
            text, seconds = str(answer.get("text", "")), answer.get("seconds")
        else:
            text, seconds = str(answer), None
        turn = self.reserve()
        utterance = self.utterance(name, text.strip() or EMPTY_UTTERANCE)
        self.history.append(utterance)
        self.turns_taken += 1
        self.passes_in_a_row = 0
        self._lines += 1
        elapsed = answer.get("elapsed_s") if isinstance(answer, dict) else None
        if elapsed is None:
            elapsed = round(self.elapsed_s(), 1)
        hidden = {"human": True, "seconds": seconds, "elapsed_s": elapsed}
        self.log_turn(turn, utterance, hidden, None, decision)
        if self.observers:
            await self._after_line(turn, utterance)
        return utterance

    def restore(self, turns: Sequence[Turn]) -> None:
        """Take up a paused episode: its conversation, turn counters and clock rebuilt from
        its logged `turns` (in order), so the graph resumed from its checkpoint goes on where
        it stopped and every prompt holds the earlier lines."""
        for t in turns:
            kind: LineKind = t.kind  # type: ignore[assignment]
            self.history.append(
                Utterance(t.agent, self.agents[t.agent].label, t.text, t.audience, kind)
            )
            self._lines += kind == "line"
            spoken = kind == "line" and (
                t.call_id is not None
                or any(t.hidden.get(k) for k in ("human", "scripted_opening", "candidates"))
            )
            if kind == "pass" or spoken:
                self.turns_taken += 1
                self.passes_in_a_row = self.passes_in_a_row + 1 if kind == "pass" else 0
            self.next_turn = max(self.next_turn, t.idx + 1)
            self.clock_offset_s = max(self.clock_offset_s, float(t.hidden.get("elapsed_s") or 0))

    async def _kept(
        self, turn: int, name: str, decision: dict[str, Any] | None, *, taken: bool
    ) -> Utterance:
        """Turn `turn` of a fork's kept prefix, logged again under this episode (`taken`: a
        turn of an agent taking turns, as `take_turn` counts them). A kept choice among
        candidates is made again (on the recorded output), so its verdict is this episode's
        too."""
        kept = self.prefix[turn]
        if kept.agent != name:
            raise RuntimeError(
                f"the fork's kept turns do not replay: at turn {turn} the graph chose {name!r}, "
                f"the parent episode had {kept.agent!r}"
            )
        if name in self.seats and isinstance(proposals := kept.hidden.get("candidates"), list):
            await self._choose(name, self.seats[name], turn, proposals)
        kind: LineKind = kept.kind  # type: ignore[assignment]
        utterance = Utterance(name, self.agents[name].label, kept.text, kept.audience, kind)
        self.history.append(utterance)
        self._lines += kind == "line"
        if taken:
            self.turns_taken += 1
            self.passes_in_a_row = self.passes_in_a_row + 1 if kind == "pass" else 0
        self.log_turn(turn, utterance, kept.hidden, kept.call_id, kept.decision or decision)
        if kind == "line":
            await self._after_line(turn, utterance)
        return utterance

    async def _proposal(
        self,
        agent: Agent,
        turn: int,
        hidden: dict[str, Any],
        pass_token: str | None,
        candidate: tuple[str, str] | None = None,
    ) -> tuple[str, str | None]:
        """`agent`'s next line and its call id: its fixed opening for the episode's first line
        (no call), else generated; "" when it passes. `candidate`: (id, backend key) when
        the agent is a seat's candidate."""
        opening = agent.opening() if not self._lines else None
        if opening is not None:
            hidden["scripted_opening"] = True
            return opening, None
        text, cid = await self._generated_line(agent, turn, hidden, pass_token, candidate)
        if pass_token is not None and text.lower() == pass_token.lower():
            text = ""
        return text, cid

    async def _generated_line(
        self,
        agent: Agent,
        turn: int,
        hidden: dict[str, Any],
        pass_token: str | None,
        candidate: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        key = candidate[1] if candidate else agent.name
        backend = self.backends[key]
        suffix, tags = (
            (f"cand-{candidate[0]}", {"candidate": candidate[0]}) if candidate else ("", {})
        )
        text, cid = "", ""
        for retry in range(2):  # one more try with a fresh seed if the output is unusable
            cid = call_id(self.episode_id, turn, suffix, retry)
            seed = self.seed_for(turn, key, retry)
            request = agent.request(
                self.history, self.labels, seed=seed, tags=self.tags(turn, cid, **tags)
            )
            result, attempts, hit = await self._generate(backend, request)
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
            text = agent.clean(result.text, truncated=result.finish_reason == "length")
            self._log_call(
                cid,
                key,
                agent.render_mode,
                turn,
                backend,
                request,
                result,
                attempts,
                hit,
                "candidate" if candidate else "turn",
            )
            if text or pass_token is not None:
                return text, cid
        hidden["empty_output"] = True
        return EMPTY_UTTERANCE, cid

    # -- candidates ----------------------------------------------------------------------------
    async def _chosen_line(
        self, name: str, seat: Seat, turn: int, pass_token: str | None
    ) -> tuple[str, str | None, dict[str, Any]]:
        """The seat's line at `turn`: every candidate proposes one (concurrently), the
        supervisor picks one. Returns its text, its call id and the turn's hidden state: the
        chosen candidate's own, plus the tree `candidates` ([{id, text, call_id}, ...]),
        `chosen`, `rationale`, `supervisor` and `shown` (the order the supervisor saw them
        in), and `supervisor_error` when no valid choice came (the first candidate is said)."""

        async def propose(cand: str, agent: Agent) -> dict[str, Any]:
            notes: dict[str, Any] = {}
            text, call = await self._proposal(
                agent, turn, notes, pass_token, (cand, seat.keys[cand])
            )
            return {"id": cand, "text": text, "call_id": call, **notes}

        proposals = await _together(propose(c, a) for c, a in seat.candidates.items())
        judgment, shown = await self._choose(name, seat, turn, proposals)
        parsed = judgment.parsed or {}
        chosen = str(parsed["code"]) if judgment.valid else proposals[0]["id"]
        picked = next(p for p in proposals if p["id"] == chosen)
        hidden = {
            **seat.candidates[chosen].hidden_state(),
            "candidates": proposals,
            "chosen": chosen,
            "rationale": str(parsed.get("rationale") or ""),
            "supervisor": seat.supervisor.name,
            "shown": shown,
        }
        if not judgment.valid:
            hidden["supervisor_error"] = judgment.error
        return str(picked["text"]), picked["call_id"], hidden

    async def _choose(
        self, name: str, seat: Seat, turn: int, proposals: Sequence[dict[str, Any]]
    ) -> tuple[Judgment, list[str]]:
        """The supervisor's choice among `proposals` for `name`'s line at `turn`, shown the
        conversation as `name` sees it, and the order the candidates were shown in; logged
        in `judgments` (turn `turn`, judge: the supervisor)."""
        judge, agent = seat.supervisor, self.agents[name]
        offered = [(str(p["id"]), str(p["text"])) for p in proposals]
        # shown in an order drawn per turn (from the lineage, as a fork's prefix must draw the
        # same): a judge's bias for the first option then favours no candidate
        rng = random.Random(derive_seed(self.run_seed, self.lineage, turn, f"order-{name}"))
        offered = rng.sample(offered, len(offered))
        ids = [cand for cand, _ in offered]
        seen = agent.view(self.history)
        suffix = f"choose-{judge.name}"

        def request(attempt: int, cid: str) -> GenerationRequest:
            return judge.choice_request(
                seen,
                agent.label,
                offered,
                seed=self.seed_for(turn, suffix, attempt),
                tags=self.tags(turn, cid, purpose="choose"),
            )

        judgment, raw, cid = await self._verdict(
            judge, turn, suffix, request, lambda text: judge.parse(text, ids), "choose"
        )
        self._log_judgment(judge, turn, judgment, raw, cid)
        return judgment, ids

    # -- observers -----------------------------------------------------------------------------
    async def _after_line(self, turn: int, utterance: Utterance) -> None:
        """Run the observers that rate `utterance` (a spoken line: seed lines from the scenario
        and routed feedback are not rated). A routed verdict is awaited, as the conversation
        goes on with it; the others run in the background until `finish`."""
        if utterance.kind != "line":
            return
        prefix = list(self.history)
        for observer in self.observers:
            if observer.when != "turn" or utterance.agent not in observer.watches:
                continue
            if observer.route_to:
                judgment = await self.judge(observer, turn, prefix)
                if judgment.valid:
                    await self.add_line(
                        observer.judge.name,
                        observer.judge.feedback(judgment),
                        kind="feedback",
                        audience=observer.route_to,
                        hidden={"judgment_of": turn},
                    )
            else:
                self._pending.append(asyncio.ensure_future(self.judge(observer, turn, prefix)))

    async def settle(self) -> None:
        """Wait for the verdicts still pending (before a pause, or at the end)."""
        try:
            if self._pending:
                await asyncio.gather(*self._pending)
        finally:
            self._pending.clear()

    async def finish(self) -> None:
        """Wait for pending verdicts, then run the end-of-episode observers (the verdicts of
        judges marked `in_outcome` go into `outcome["verdicts"]`)."""
        await self.settle()
        prefix = list(self.history)
        for observer in self.observers:
            if observer.when == "end":
                judgment = await self.judge(observer, None, prefix)
                if observer.judge.in_outcome:  # e.g. a session summary a course reads
                    self.outcome = dict(self.outcome or {})
                    verdicts = self.outcome.setdefault("verdicts", {})
                    verdicts[observer.judge.name] = judgment.parsed if judgment.valid else None

    def cancel(self) -> None:
        """Cancel pending verdicts (the episode failed)."""
        for task in self._pending:
            task.cancel()
        self._pending.clear()

    async def judge(
        self, observer: Observer, target: int | None, prefix: list[Utterance]
    ) -> Judgment:
        """`observer`'s verdict on turn `target` (the last line of `prefix`) or, when None, on
        the whole episode in `prefix`; logged in `judgments` (and its calls in `llm_calls`). An
        invalid reply is retried up to the judge's `max_attempts`, then recorded as invalid."""
        judge = observer.judge
        line = prefix[-1] if target is not None else None
        at = target if target is not None else max(self.next_turn - 1, 0)
        suffix = judge.name if target is not None else f"end-{judge.name}"
        computed = judge.evaluate(prefix, line)
        raw: str | None
        cid: str | None = None
        if computed is not None:
            judgment, raw = judge.judge_parsed(computed), json.dumps(computed)
        else:

            def request(attempt: int, call: str) -> GenerationRequest:
                return judge.judgment_request(
                    prefix,
                    line,
                    seed=self.seed_for(at, suffix, attempt),
                    tags=self.tags(at, call, purpose="judge"),
                )

            judgment, raw, cid = await self._verdict(
                judge, at, suffix, request, judge.parse, "judge"
            )
        self._log_judgment(judge, target, judgment, raw, cid)
        return judgment

    async def _verdict(
        self,
        judge: JudgeAgent,
        at: int,
        suffix: str,
        request: Callable[[int, str], GenerationRequest],
        parse: Callable[[str], Judgment],
        purpose: Purpose,
    ) -> tuple[Judgment, str | None, str | None]:
        """Ask `judge` (`request(attempt, call_id)`) until a reply parses, at most its
        `max_attempts` times; the judgment, the last raw reply and its call id."""
        backend = self.backends[judge.name]
        judgment, raw, cid = Judgment(None, False, "no attempt"), None, None
        for attempt in range(judge.max_attempts):
            cid = call_id(self.episode_id, at, suffix, attempt)
            asked = request(attempt, cid)
            result, attempts, hit = await self._generate(backend, asked)
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
            self._log_call(
                cid,
                judge.name,
                judge.render_mode,
                at,
                backend,
                asked,
                result,
                attempts,
                hit,
                purpose,
            )
            raw = result.text
            judgment = parse(result.text)
            if judgment.valid:
                break
        return judgment, raw, cid

    def _log_judgment(
        self,
        judge: JudgeAgent,
        target: int | None,
        judgment: Judgment,
        raw: str | None,
        cid: str | None,
    ) -> None:
        """Queue the `judgments` row of `judge`'s verdict on turn `target` (None: the episode)."""
        if self.writer is None:
            return
        self.writer.upsert(
            "judgments",
            {
                "judgment_id": f"{self.episode_id}:{target if target is not None else 'end'}"
                f":{judge.name}",
                "episode_id": self.episode_id,
                "turn_idx": target,
                "judge": judge.name,
                "rubric": judge.rubric.id,
                "raw": raw if raw is not None else "null",
                "parsed_json": json.dumps(judgment.parsed) if judgment.parsed else None,
                "valid": int(judgment.valid),
                "error": judgment.error,
                "score": judgment.score,
                "call_id": cid,
                "created_at": _now(),
            },
        )

    # -- model calls ---------------------------------------------------------------------------
    async def _generate(
        self, backend: Backend, request: GenerationRequest
    ) -> tuple[GenerationResult, int, bool]:
        """The result, the number of attempts and whether it came from the cache."""
        key = cache_key(backend.backend_id, request) if self.cache is not None else ""
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit, 0, True
        deadline = time.monotonic() + self.deadline_s
        retries = getattr(backend, "retries", None) or self.retries
        token = self.watch.begin() if self.watch is not None else 0
        try:
            result, attempts = await self._attempts(backend, request, deadline, retries)
        finally:
            if self.watch is not None:
                self.watch.end(token)
        if self.cache is not None:
            self.cache.put(key, backend.backend_id, result)
        return result, attempts, False

    async def _attempts(
        self, backend: Backend, request: GenerationRequest, deadline: float, retries: int
    ) -> tuple[GenerationResult, int]:
        """Attempts until one succeeds, an error no retry can help, or the deadline."""
        attempts = 0
        while True:
            attempts += 1
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await backend.generate(request), attempts
            except _RETRYABLE as exc:
                left = deadline - time.monotonic()
                if attempts >= retries or not _retryable(exc) or left <= 0:
                    if isinstance(exc, TimeoutError) and left <= 0:
                        raise TimeoutError(
                            f"no reply from {backend.backend_id} within {self.deadline_s:g} s "
                            f"({attempts} attempt{'s' if attempts > 1 else ''})"
                        ) from exc
                    raise
                await asyncio.sleep(min(0.2 * 2 ** (attempts - 1), 5.0, max(left, 0.0)))

    def _log_call(
        self,
        cid: str,
        name: str,
        render_mode: str,
        turn: int,
        backend: Backend,
        request: GenerationRequest,
        result: GenerationResult,
        attempts: int,
        cache_hit: bool,
        purpose: Purpose,
    ) -> None:
        if request.choices and result.text.strip() not in request.choices:
            self._note_off_choice(cid, name, turn, backend, request, result)
        if self.writer is None:
            return
        messages = (
            json.dumps([{"role": m.role, "content": m.content} for m in request.messages])
            if request.messages is not None
            else None
        )
        logprobs = (
            json.dumps([[t.token, t.logprob, t.top] for t in result.logprobs])
            if result.logprobs
            else None
        )
        self.writer.insert(
            "llm_calls",
            {
                "call_id": cid,
                "episode_id": self.episode_id,
                "turn_idx": turn,
                "agent": name,
                "purpose": purpose,
                "backend": backend.backend_id,
                "render_mode": render_mode,
                "prompt": request.prompt,
                "messages_json": messages,
                "params_json": json.dumps(request.params()),
                "seed": request.seed,
                "output": result.text,
                "logprobs_json": logprobs,
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

    def _note_off_choice(
        self,
        cid: str,
        name: str,
        turn: int,
        backend: Backend,
        request: GenerationRequest,
        result: GenerationResult,
    ) -> None:
        """An engine that did not constrain a choice request answered off the list: keep it
        for the turn's `hidden_json` and warn the user (once per agent for the run)."""
        choices = list(request.choices or ())
        self._off_choice.setdefault(turn, []).append(
            {"call_id": cid, "agent": name, "output": result.text[:200], "choices": choices}
        )
        if self.warn is not None:
            shown = ", ".join(choices[:8]) + (", ..." if len(choices) > 8 else "")
            self.warn(
                f"off-choice:{name}",
                f"{name}'s answer {result.text.strip()[:60]!r} (call {cid}) is not one of the "
                f"allowed choices ({shown}): {backend.backend_id} did not constrain it — for "
                "an openai: server, set structured= to its dialect (vllm, llamacpp or openai); "
                "shown once per agent, each such answer is kept in its turn's hidden_json",
            )
