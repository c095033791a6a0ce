"""What the conversation graph kinds share: turn limits, farewells, seed lines, end reasons."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from personae.agents import Utterance
from personae.errors import UserError
from personae.graphs._episode import Episode
from personae.graphs._registry import Cast, GraphOptions


class SeedLine(BaseModel):
    """A fixed line from the scenario, logged as a turn with no model call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str = Field(description="Who says it.")
    text: str = Field(min_length=1)
    audience: list[str] | None = Field(
        None, description="Who hears it (default: whoever hears its agent's lines)."
    )


class ConversationOptions(GraphOptions):
    """Options of every conversation graph."""

    max_turns: StrictInt = Field(12, ge=1, le=10_000, description="Turns to take (seed lines "
                                 "and judges' feedback not counted).")  # fmt: skip
    end_on_farewell: bool = Field(True, description="End when an agent says goodbye.")
    seed_lines: list[SeedLine] = Field(
        default_factory=list, description="Fixed opening lines, logged with no model call."
    )


def check_seed_lines(options: ConversationOptions, cast: Cast) -> None:
    """Raise `UserError` when a seed line names an unknown speaker or audience member."""
    everyone = (*cast.speakers, *cast.observers)
    for i, line in enumerate(options.seed_lines):
        cast.check_agent(line.agent, f"seed_lines[{i}].agent")
        for name in line.audience or ():
            if name not in everyone:
                raise UserError(
                    f"audience names an unknown agent {name!r}",
                    where=cast.where(f"seed_lines[{i}].audience"),
                    fix=f"agents: {', '.join(everyone)}",
                )


async def say_seed_lines(episode: Episode, options: ConversationOptions) -> None:
    """Log the scenario's seed lines (once, at the start of the episode)."""
    for line in options.seed_lines:
        await episode.add_line(line.agent, line.text, kind="seed", audience=line.audience)


def end_reason(episode: Episode, utterance: Utterance, options: ConversationOptions) -> str | None:
    """Why the conversation ends after `utterance`, or None to go on."""
    if (
        options.end_on_farewell
        and utterance.kind == "line"
        and episode.agents[utterance.agent].is_farewell(utterance.text)
    ):
        return "farewell"
    if episode.stop_when is not None and episode.stop_when(episode.history):
        return "predicate"
    if episode.turns_taken >= options.max_turns:
        return "max_turns"
    return None
