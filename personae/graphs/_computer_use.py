"""The computer-use loop: an agent acts on a sandboxed computer until it stops.

    START → reset → act → step → (act | finish) → END

`reset` opens the task's environment (`open_environment`, in a `RunFolder` of the episode's
own; both are held by the episode, so they are closed however the episode ends), builds the
task's world and logs the first observation as a turn of the `environment` (kind
`observation`, no model call). `act` is the agent's turn: its raw output is the turn's text
and the parsed action, parse error and reasoning go in the turn's `hidden_json`. `step` carries
the action out: an environment action is sent to the environment and its observation logged as
the environment's next turn; a parse failure is a step too (its error is the next observation);
`done`, `fail` and `ask` end the episode (nobody answers a question), as do the task's
`max_steps` and the environment's own end. Every step is a row of `env_steps`. `finish` takes
the final state, evaluates every state check, records the state diff on the last step and sets
the episode's outcome:

    {"task", "pattern", "prompting", "end": done|fail|ask|max_steps|env_done, "steps",
     "parse_failures", "checks": {id: bool}, "check_hit", "state_diff": {added, removed,
     changed}}

A `bgd_judge` observing the agent reads the trajectory (the steps so far when it judges each
turn; all of them at the end).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from personae.agents import Agent, ComputerUser, get_role
from personae.environments import (
    Action,
    Environment,
    EnvironmentOptions,
    RunFolder,
    State,
    StepResult,
    Task,
    environment_options,
    get_environment,
    load_task,
    open_environment,
)
from personae.environments._actions import (
    LOOP_ACTIONS,
    ActionMode,
    ParseError,
    action_grammar,
    parse_output,
    with_loop_actions,
)
from personae.errors import UserError
from personae.graphs._episode import Episode
from personae.graphs._registry import GraphKind, GraphOptions, register_graph
from personae.judges._bgd import BgdJudge, Trajectory, TrajectoryStep

#: The speaker of observation turns (no agent of a scenario may have this name).
ENVIRONMENT = "environment"
_SESSION = "computer_use"

End = Literal["done", "fail", "ask", "max_steps", "env_done"]


class ComputerUseState(TypedDict):
    """Small per-episode state: why the episode ended (None while it goes on)."""

    end_reason: str | None


class ComputerUseOptions(GraphOptions):
    """Options of the `computer_use` graph."""

    task: str = Field(description="A task YAML file, relative to the scenario's folder.")
    agent: str | None = Field(None, description="The acting agent (default: the only one).")
    environment_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the task's environment (default: none)."
    )
    actions: Literal["constrained", "free"] = Field(
        "constrained",
        description="constrained: the output is decoded under the action grammar; free: "
        "reasoning, then a line 'ACTION: ...'.",
    )
    observation_tokens: int = Field(
        512, ge=16, le=32_768, description="Most tokens of an observation shown to the agent."
    )


class _Nobody(BaseModel):
    """The environment's persona: it has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Voice(Agent):
    """The environment as a speaker of observation turns (it never calls a model)."""

    role = ENVIRONMENT
    persona_model = _Nobody


@dataclass
class Session:
    """One episode's environment and what the loop has recorded so far."""

    env: Environment
    task: Task
    agent: ComputerUser
    mode: ActionMode
    trajectory: Trajectory
    initial: State | None = None
    observation: str = ""
    turn: int = 0
    output: str = ""
    last_row: dict[str, Any] | None = None
    parse_failures: int = 0
    end: End | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@asynccontextmanager
async def _episode_folder() -> AsyncIterator[RunFolder]:
    folder = RunFolder()
    try:
        yield folder
    finally:
        folder.close()


@register_graph("computer_use")
class ComputerUse(GraphKind):
    """An agent carrying out a task in a sandboxed environment, one action per step."""

    options_model = ComputerUseOptions

    @property
    def opts(self) -> ComputerUseOptions:
        assert isinstance(self.options, ComputerUseOptions)
        return self.options

    def check(self) -> None:
        cast, opts = self.cast, self.opts
        if ENVIRONMENT in cast.roles:
            raise UserError(
                f"an agent is named {ENVIRONMENT!r}, the speaker of observations",
                where=f"{cast.source}: agents.{ENVIRONMENT}",
                fix="rename the agent",
            )
        if opts.agent is not None:
            cast.check_agent(opts.agent, "agent")
            self.agent = opts.agent
        elif len(cast.speakers) == 1:
            self.agent = cast.speakers[0]
        else:
            raise UserError(
                f"the computer_use graph has {len(cast.speakers)} agents that take turns",
                where=cast.where("agent"),
                fix=f"name the acting agent: agent: {cast.speakers[0] if cast.speakers else '?'}",
            )
        role = cast.roles.get(self.agent, "")
        if not issubclass(get_role(role, where=cast.where("agent")), ComputerUser):
            raise UserError(
                f"agent {self.agent!r} has role {role!r}, which cannot act on a computer",
                where=f"{cast.source}: agents.{self.agent}.role",
                fix="use role computer_user (or a role derived from it)",
            )
        path = Path(opts.task)
        path = path if path.is_absolute() else cast.base_dir / path
        if not path.is_file():
            raise UserError(
                f"no task file {path}",
                where=cast.where("task"),
                fix="give a task YAML file, relative to the scenario's folder",
            )
        self.task = load_task(path)
        self.env_cls = get_environment(self.task.environment)
        self.env_options: EnvironmentOptions = environment_options(
            self.env_cls, opts.environment_options, cast.where("environment_options")
        )
        self.env_cls.check_available(self.env_options)
        self.specs = with_loop_actions(self.env_cls.actions)
        self.grammar = action_grammar(self.specs) if opts.actions == "constrained" else None

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        builder: StateGraph[ComputerUseState, Episode, ComputerUseState, ComputerUseState] = (
            StateGraph(ComputerUseState, context_schema=Episode)
        )
        builder.add_node("reset", self._reset)
        builder.add_node("act", self._act)
        builder.add_node("step", self._step)
        builder.add_node("finish", self._finish)
        builder.add_edge(START, "reset")
        builder.add_edge("reset", "act")
        builder.add_edge("act", "step")
        builder.add_conditional_edges("step", self._route, ["act", "finish"])
        builder.add_edge("finish", END)
        return builder.compile(name="computer_use")

    # -- nodes ---------------------------------------------------------------------------
    def brief(self, agents: Mapping[str, Agent]) -> None:
        """The acting agent learns the task's instruction, its actions and how to answer."""
        agent = agents[self.agent]
        assert isinstance(agent, ComputerUser)
        agent.begin(
            self.task.instruction,
            self.specs,
            mode=self.opts.actions,
            observation_tokens=self.opts.observation_tokens,
            grammar=self.grammar,
        )

    async def _reset(self, state: ComputerUseState, runtime: Runtime[Episode]) -> dict[str, Any]:
        episode = runtime.context
        self.brief(episode.agents)
        agent = episode.agents[self.agent]
        assert isinstance(agent, ComputerUser)
        if ENVIRONMENT not in episode.agents:
            episode.agents[ENVIRONMENT] = _Voice(ENVIRONMENT, _Nobody(), label="Environment")
        folder = await episode.hold(_episode_folder())
        env = await episode.hold(open_environment(self.env_cls, folder, self.env_options))
        trajectory = Trajectory(self.task.instruction, self.task.judge_note)
        session = Session(env, self.task, agent, self.opts.actions, trajectory)
        episode.scratch[_SESSION] = session
        for observer in episode.observers:  # a BGD judge reads the steps as they are taken
            if isinstance(observer.judge, BgdJudge):
                observer.judge.trajectory = trajectory
        first = await env.reset(self.task)
        session.initial = await env.final_state()
        session.observation = first.text
        await episode.add_line(
            ENVIRONMENT, first.text, kind="observation", hidden={"step": 0, "reset": True}
        )
        return {}

    async def _act(self, state: ComputerUseState, runtime: Runtime[Episode]) -> dict[str, Any]:
        """The agent's turn: its output logged, with the action parsed from it."""
        episode = runtime.context
        session: Session = episode.scratch[_SESSION]
        step = len(session.trajectory.steps) + 1

        def annotate(text: str) -> dict[str, Any]:
            parsed, reasoning = parse_output(text, self.specs, session.mode)
            hidden: dict[str, Any] = {"step": step, "parse_ok": not isinstance(parsed, ParseError)}
            if isinstance(parsed, ParseError):
                hidden["parse_error"] = parsed.message
            else:
                hidden["action"] = {"name": parsed.name, "args": list(parsed.args)}
            if reasoning:
                hidden["reasoning"] = reasoning
            return hidden

        session.turn = episode.next_turn
        session.output = (await episode.take_turn(self.agent, annotate=annotate)).text
        return {}

    async def _step(self, state: ComputerUseState, runtime: Runtime[Episode]) -> dict[str, Any]:
        """The action carried out (or the parse error returned), logged as a step."""
        episode = runtime.context
        session: Session = episode.scratch[_SESSION]
        step = len(session.trajectory.steps) + 1
        shown, cut = session.agent.bound(session.observation)
        parsed, reasoning = parse_output(session.output, self.specs, session.mode)
        result: StepResult | None = None
        if isinstance(parsed, ParseError):
            session.parse_failures += 1
            observation = f"[your reply is not an action: {parsed.message}]"
        elif parsed.name in LOOP_ACTIONS:
            session.end = parsed.name  # type: ignore[assignment]
            observation = ""
        else:
            result = await session.env.step(parsed)
            observation = result.observation.text
            if result.done:
                session.end = "env_done"
        if session.end is None and step >= self.task.max_steps:
            session.end = "max_steps"
        action = parsed if isinstance(parsed, Action) else None
        said = str(action) if action else f"(unparsed) {session.output}"
        session.trajectory.steps.append(TrajectoryStep(shown, said, observation, reasoning))
        self._log_step(episode, session, step, shown, cut, parsed, result)
        if observation and session.end not in ("done", "fail", "ask"):
            session.observation = observation
            await episode.add_line(
                ENVIRONMENT, observation, kind="observation", hidden={"step": step}
            )
        return {"end_reason": session.end}

    async def _route(self, state: ComputerUseState) -> str:
        return "finish" if state.get("end_reason") else "act"

    async def _finish(self, state: ComputerUseState, runtime: Runtime[Episode]) -> dict[str, Any]:
        episode = runtime.context
        session: Session = episode.scratch[_SESSION]
        final = await session.env.final_state()
        initial = session.initial or State()
        checks = {c.id: bool(c.holds(initial, final)) for c in self.task.checks}
        diff = initial.diff(final)
        state_diff = {
            "added": list(diff.added),
            "removed": list(diff.removed),
            "changed": list(diff.changed),
        }
        await session.env.close()  # early: the judges need the trajectory, not the sandbox
        if session.last_row is not None and episode.writer is not None:
            episode.writer.upsert(
                "env_steps", {**session.last_row, "state_diff_json": json.dumps(state_diff)}
            )
        episode.outcome = {
            "task": self.task.id,
            "pattern": self.task.pattern,
            "prompting": session.agent.prompting,
            "end": session.end,
            "steps": len(session.trajectory.steps),
            "parse_failures": session.parse_failures,
            "checks": checks,
            "check_hit": any(checks.values()),
            "state_diff": state_diff,
        }
        return {"end_reason": session.end}

    # -- logging -------------------------------------------------------------------------
    def _log_step(
        self,
        episode: Episode,
        session: Session,
        step: int,
        shown: str,
        cut: bool,
        parsed: Action | ParseError,
        result: StepResult | None,
    ) -> None:
        row: dict[str, Any] = {
            "step_id": f"{episode.episode_id}:{step:04d}",
            "episode_id": episode.episode_id,
            "step": step,
            "turn_idx": session.turn,
            "observation": shown,
            "observation_sha256": hashlib.sha256(shown.encode()).hexdigest(),
            "observation_truncated": int(cut),
            "raw_output": session.output,
            "action": str(parsed) if isinstance(parsed, Action) else None,
            "parse_ok": int(not isinstance(parsed, ParseError)),
            "parse_error": parsed.message if isinstance(parsed, ParseError) else None,
            "output": result.output if result is not None else None,
            "exit_code": result.exit_code if result is not None else None,
            "timed_out": int(result.timed_out) if result is not None else None,
            "latency_s": round(result.latency_s, 6) if result is not None else None,
            "notes_json": json.dumps(list(result.notes)) if result and result.notes else None,
            "state_diff_json": None,
            "created_at": _now(),
        }
        session.last_row = row
        if episode.writer is not None:
            episode.writer.upsert("env_steps", row)
