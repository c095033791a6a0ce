"""An online discussion: participants comment under a turn policy, a facilitator may step in.

    START → open → select ⇄ comment → facilitate? → END

`open` logs the scenario's seed lines, then one or two seed comments drawn from a pool (from the
episode's lineage seed), each posted by a different participant drawn the same way: turns with no
model call, which judges do not rate. `select` asks the turn policy (default `respond`, p = 0.4) for
the next participant — the facilitator is never among them — and `comment` has it write. After every
non-empty comment the facilitator, when there is one and its strategy is not `none`, gets the turn
and may abstain with the pass token: a `pass` turn, logged, shown to nobody. The episode ends after
`max_turns` participant comments (the facilitator's reply to the last one included).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from personae._yaml import load_yaml
from personae.errors import UserError
from personae.graphs._conversation import check_seed_lines, say_seed_lines
from personae.graphs._episode import EMPTY_UTTERANCE, Episode
from personae.graphs._group import TurnTakingOptions, choose_speaker, make_policy
from personae.graphs._policies import TurnPolicy
from personae.graphs._registry import GraphKind, register_graph
from personae.graphs._topology import TopologySpec, build_topology
from personae.seeds import derive_seed
from personae.validation import validation_error


class SeedComment(BaseModel):
    """An opening comment: logged as a turn with no model call, rated by nobody."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = ""
    text: str = Field(min_length=1)


class SeedComments(BaseModel):
    """Where a discussion's opening comments come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: str | list[SeedComment] = Field(
        description="A YAML file (relative to the scenario) holding a list of {id, topic, "
        "text}, or an inline list."
    )
    per_discussion: tuple[StrictInt, StrictInt] = Field(
        (1, 2), description="Fewest and most seed comments per discussion."
    )

    @field_validator("per_discussion")
    @classmethod
    def _range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError(f"per_discussion must be [low, high] with 1 <= low <= high, "
                             f"got {list(value)}")  # fmt: skip
        return value


class DiscussionOptions(TurnTakingOptions):
    """Options of the `discussion` graph."""

    max_turns: StrictInt = Field(
        15, ge=1, le=10_000, description="Participant comments per discussion."
    )
    end_on_farewell: bool = Field(False, description="End when a participant says goodbye.")
    policy: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "respond", "p": 0.4},
        description="Turn policy among the participants: a name, or {kind: NAME, ...}.",
    )
    topology: TopologySpec | None = Field(
        None, description="Who may reply to whom among the participants (default: anyone)."
    )
    facilitator: str | None = Field(
        None, description="The agent given the turn after every comment (None: nobody)."
    )
    pass_token: str = Field("[pass]", min_length=1, description="A facilitator's abstention.")
    seed_comments: SeedComments | None = Field(
        None, description="Opening comments drawn per discussion from a pool."
    )


class DiscussionState(TypedDict):
    """The next participant, the decision that chose it, comments so far, whether the
    facilitator has the next turn, and why the episode ended."""

    end_reason: str | None
    speaker: str | None
    decision: dict[str, Any] | None
    comments: int
    facilitate: bool


@register_graph("discussion")
class Discussion(GraphKind):
    """Participants under a turn policy, a facilitator after every comment, seed comments."""

    options_model = DiscussionOptions

    @property
    def opts(self) -> DiscussionOptions:
        assert isinstance(self.options, DiscussionOptions)
        return self.options

    def check(self) -> None:
        opts, cast = self.opts, self.cast
        if opts.facilitator is not None:
            cast.check_agent(opts.facilitator, "facilitator")
        self.participants = tuple(n for n in cast.speakers if n != opts.facilitator)
        if len(self.participants) < 2:
            raise UserError(
                f"a discussion needs at least 2 participants, got {len(self.participants)}",
                where=f"{cast.source}: agents",
                fix="add participants (e.g. count: 4 on a participant agent)",
            )
        check_seed_lines(opts, cast)
        topology = build_topology(opts.topology, self.participants, cast.where("topology"))
        self.policy = make_policy(opts.policy, self.participants, topology, cast.where("policy"))
        self.seed_pool = self._seed_pool()

    def _seed_pool(self) -> list[SeedComment]:
        spec = self.opts.seed_comments
        if spec is None:
            return []
        where = self.cast.where("seed_comments.pool")
        if isinstance(spec.pool, list):
            pool = list(spec.pool)
        else:
            path = Path(spec.pool)
            path = path if path.is_absolute() else self.cast.base_dir / path
            data = load_yaml(path, "seed comment file")
            if not isinstance(data, list):
                raise UserError(
                    "a seed comment file must hold a YAML list of {id, topic, text}",
                    where=str(path),
                    fix="write one '- id: ...' entry per comment",
                )
            pool = []
            for i, item in enumerate(data):
                try:
                    pool.append(SeedComment.model_validate(item))
                except ValidationError as exc:
                    raise validation_error(exc, f"{path}[{i}]", SeedComment) from None
        if len(pool) < spec.per_discussion[1]:
            raise UserError(
                f"the seed comment pool has {len(pool)} comments, fewer than the "
                f"{spec.per_discussion[1]} a discussion may draw",
                where=where,
                fix="add comments or lower per_discussion",
            )
        return pool

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        return build_discussion_graph(self.participants, self.opts, self.policy, self.seed_pool)

    def input(self) -> dict[str, Any]:
        return {
            "end_reason": None,
            "speaker": None,
            "decision": None,
            "comments": 0,
            "facilitate": False,
        }


def build_discussion_graph(
    participants: tuple[str, ...],
    options: DiscussionOptions,
    policy: TurnPolicy,
    seed_pool: list[SeedComment],
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the graph; run it with `ainvoke(Discussion.input(), context=episode)`."""
    facilitator = options.facilitator

    async def open_thread(state: DiscussionState, runtime: Runtime[Episode]) -> dict[str, Any]:
        episode = runtime.context
        await say_seed_lines(episode, options)
        if options.seed_comments is not None:
            rng = random.Random(derive_seed(episode.run_seed, episode.lineage, 0, "seed-comments"))
            low, high = options.seed_comments.per_discussion
            chosen = rng.sample(seed_pool, rng.randint(low, high))
            posters = (
                rng.sample(participants, len(chosen))
                if len(chosen) <= len(participants)
                else [rng.choice(participants) for _ in chosen]
            )
            for comment, poster in zip(chosen, posters, strict=True):
                hidden = {"seed_comment": comment.id, "topic": comment.topic}
                await episode.add_line(poster, comment.text.strip(), kind="seed", hidden=hidden)
            episode.outcome = {
                "seed_comments": [c.id for c in chosen],
                "topics": [c.topic for c in chosen],
            }
        return {}

    async def select(state: DiscussionState, runtime: Runtime[Episode]) -> dict[str, Any]:
        decision = await choose_speaker(runtime.context, participants, policy)
        return {"speaker": decision.speaker, "decision": decision.json()}

    async def comment(state: DiscussionState, runtime: Runtime[Episode]) -> dict[str, Any]:
        episode = runtime.context
        speaker = state["speaker"]
        assert speaker is not None
        line = await episode.take_turn(speaker, decision=state["decision"])
        comments = state["comments"] + 1
        reason = None
        if (
            options.end_on_farewell
            and line.kind == "line"
            and episode.agents[speaker].is_farewell(line.text)
        ):
            reason = "farewell"
        elif episode.stop_when is not None and episode.stop_when(episode.history):
            reason = "predicate"
        elif comments >= options.max_turns:
            reason = "max_turns"
        facilitates = (
            facilitator is not None
            and episode.agents[facilitator].takes_turns()
            and line.kind == "line"
            and line.text not in ("", EMPTY_UTTERANCE)
            and reason in (None, "max_turns")
        )
        return {
            "comments": comments,
            "end_reason": reason,
            "speaker": None,
            "decision": None,
            "facilitate": facilitates,
        }

    def after_comment(state: DiscussionState) -> str:
        if state.get("facilitate"):
            return "facilitate"
        return END if state.get("end_reason") else "select"

    async def facilitate(state: DiscussionState, runtime: Runtime[Episode]) -> dict[str, Any]:
        assert facilitator is not None
        await runtime.context.take_turn(facilitator, pass_token=options.pass_token)
        return {"facilitate": False}

    def after_facilitator(state: DiscussionState) -> str:
        return END if state.get("end_reason") else "select"

    builder: StateGraph[DiscussionState, Episode, DiscussionState, DiscussionState] = StateGraph(
        DiscussionState, context_schema=Episode
    )
    builder.add_node("open", open_thread)
    builder.add_node("select", select)
    builder.add_node("comment", comment)
    builder.add_node("facilitate", facilitate)
    builder.add_edge(START, "open")
    builder.add_edge("open", "select")
    builder.add_edge("select", "comment")
    builder.add_conditional_edges("comment", after_comment, ["facilitate", "select", END])
    builder.add_conditional_edges("facilitate", after_facilitator, ["select", END])
    return builder.compile(name="discussion")
