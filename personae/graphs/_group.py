"""A group conversation of N ≥ 2 agents with a pluggable turn policy, as a LangGraph graph.

    START → seed_lines? → select ⇄ speak → END

`select` asks the turn policy for the next speaker among the topology's candidates (a decision
stored with the turn); `speak` has that agent take its turn — a line, or with `allow_pass` an
abstention — and ends the episode on max turns, a farewell, the stop predicate, or when every
agent passed in a row (so a run never loops on passes). Graph state holds only the speaker, the
decision and the end reason.
"""

from __future__ import annotations

import random
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import Field, StrictInt, ValidationError, field_validator

from personae.errors import UserError
from personae.graphs._conversation import (
    ConversationOptions,
    check_seed_lines,
    end_reason,
    say_seed_lines,
)
from personae.graphs._episode import Episode
from personae.graphs._policies import POLICIES, Decision, TurnContext, TurnPolicy
from personae.graphs._registry import GraphKind, register_graph
from personae.graphs._topology import TopologySpec, build_topology, parse_topology
from personae.seeds import derive_seed
from personae.validation import validation_error


class GroupState(TypedDict):
    """The next speaker, the decision that chose it, and why the episode ended."""

    end_reason: str | None
    speaker: str | None
    decision: dict[str, Any] | None


class TurnTakingOptions(ConversationOptions):
    """Options of graphs whose speakers a turn policy picks, within a topology."""

    policy: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "round_robin"},
        description="Turn policy: a name, or {kind: NAME, ...its options}.",
    )
    topology: TopologySpec | None = Field(
        None, description="complete | ring | star | {star: HUB} | {edges: [[A, B], ...]}."
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("topology", mode="before")
    @classmethod
    def _topology_shape(cls, value: Any) -> Any:
        return parse_topology(value)


class GroupOptions(TurnTakingOptions):
    """Options of the `group` graph."""

    allow_pass: bool = Field(False, description="Agents may abstain (output the pass token).")
    pass_token: str = Field("[pass]", min_length=1, description="What an abstention looks like.")
    max_passes_in_a_row: StrictInt | None = Field(
        None, ge=1, description="End after this many passes in a row (default: every agent)."
    )


@register_graph("group")
class Group(GraphKind):
    """N agents; a turn policy picks each speaker, within an optional who-may-reply topology."""

    options_model = GroupOptions

    @property
    def opts(self) -> GroupOptions:
        assert isinstance(self.options, GroupOptions)
        return self.options

    def check(self) -> None:
        speakers = self.cast.speakers
        if len(speakers) < 2:
            raise UserError(
                f"the group graph needs at least 2 agents that take turns, got {len(speakers)}",
                where=f"{self.cast.source}: agents",
                fix="define more agents",
            )
        check_seed_lines(self.opts, self.cast)
        self.topology = build_topology(self.opts.topology, speakers, self.cast.where("topology"))
        self.policy = make_policy(
            self.opts.policy, speakers, self.topology, self.cast.where("policy")
        )
        order = getattr(self.policy.options, "order", None)
        if order and self.opts.seed_lines:
            last = self.opts.seed_lines[-1].agent
            if not self.topology.has_edge(last, order[0]):
                raise UserError(
                    f"the scripted order starts with {order[0]!r}, who may not speak right "
                    f"after the last seed line (by {last!r})",
                    where=self.cast.where("policy.order[0]"),
                    fix="start the order with another agent, or change the seed lines",
                )

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        return build_group_graph(self.cast.speakers, self.opts, self.policy)

    def input(self) -> dict[str, Any]:
        return {"end_reason": None, "speaker": None, "decision": None}


def make_policy(
    spec: dict[str, Any], speakers: tuple[str, ...], topology: Any, where: str
) -> TurnPolicy:
    """The turn policy `spec` names, with validated options (raises `UserError`)."""
    kind = spec.get("kind")
    if not isinstance(kind, str):
        raise UserError("a turn policy needs a kind", where=f"{where}.kind", fix="e.g. respond")
    cls = POLICIES.get(kind, where=f"{where}.kind")
    try:
        options = cls.options_model.model_validate(spec)
    except ValidationError as exc:
        raise validation_error(exc, where, cls.options_model) from None
    return cls(options, speakers, topology, where)


async def choose_speaker(
    episode: Episode, speakers: tuple[str, ...], policy: TurnPolicy
) -> Decision:
    """The turn policy's choice of the next speaker among `speakers`, within its topology of
    whoever spoke last (a seed line's speaker included), with a random generator derived from
    (run seed, lineage, turn), so a replay or a fork draws the same."""
    previous = [
        u.agent for u in episode.history if u.kind in ("line", "pass") and u.agent in speakers
    ]
    spoken = [u.agent for u in episode.history if u.kind != "feedback" and u.agent in speakers]
    last = spoken[-1] if spoken else None
    topology = policy.topology
    candidates = tuple(n for n in speakers if topology.has_edge(last, n)) if last else speakers
    turn = episode.next_turn
    rng = random.Random(derive_seed(episode.run_seed, episode.lineage, turn, "turn-policy"))
    decision = await policy.choose(TurnContext(speakers, candidates, previous, turn, rng,
                                               episode, last))  # fmt: skip
    if decision.speaker not in candidates:
        raise RuntimeError(
            f"turn policy {policy.name!r} chose {decision.speaker!r}, who may not speak "
            f"now (candidates: {', '.join(candidates)})"
        )
    return decision


def build_group_graph(
    speakers: tuple[str, ...], options: GroupOptions, policy: TurnPolicy
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the graph; run it with `ainvoke(Group.input(...), context=episode)`."""
    pass_token = options.pass_token if options.allow_pass else None
    max_passes = options.max_passes_in_a_row or len(speakers)

    async def seed(state: GroupState, runtime: Runtime[Episode]) -> dict[str, Any]:
        await say_seed_lines(runtime.context, options)
        return {}

    async def select(state: GroupState, runtime: Runtime[Episode]) -> dict[str, Any]:
        decision = await choose_speaker(runtime.context, speakers, policy)
        return {"speaker": decision.speaker, "decision": decision.json()}

    async def speak(state: GroupState, runtime: Runtime[Episode]) -> dict[str, Any]:
        episode = runtime.context
        speaker = state["speaker"]
        assert speaker is not None
        utterance = await episode.take_turn(
            speaker, decision=state["decision"], pass_token=pass_token
        )
        reason = end_reason(episode, utterance, options)
        if reason is None and episode.passes_in_a_row >= max_passes:
            reason = "passes"
        return {"end_reason": reason, "speaker": None, "decision": None}

    async def route(state: GroupState) -> str:
        return END if state.get("end_reason") else "select"

    builder: StateGraph[GroupState, Episode, GroupState, GroupState] = StateGraph(
        GroupState, context_schema=Episode
    )
    builder.add_node("select", select)
    builder.add_node("speak", speak)
    builder.add_edge("select", "speak")
    builder.add_conditional_edges("speak", route, ["select", END])
    if options.seed_lines:
        builder.add_node("seed_lines", seed)
        builder.add_edge(START, "seed_lines")
        builder.add_edge("seed_lines", "select")
    else:
        builder.add_edge(START, "select")
    return builder.compile(name="group")
